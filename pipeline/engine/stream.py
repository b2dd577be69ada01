"""The tile stream of one scene: decode -> model -> map writer, every stage overlapping the others on Ray.

Each row segment (a few tile chunks of one row, about a megapixel) is decoded (read + warp) by a
Ray task placed anywhere in the cluster, which also writes its chunks to ``input.zarr`` and
records them; a batch of tiles goes to a model actor as soon as the segments its windows cover
are decoded, straight from the object store (no zarr round trip), through the one
:class:`~pipeline.engine.scheduler.Scheduler`; the actor's core probabilities go to the map
writer, which keeps them in ``output.zarr`` with their records and writes the COG's blocks.
In-flight work is bounded (segments decoded a few batches ahead and released once no batch
needs them soon, read back from ``input.zarr`` for a use further on; a call per actor slot;
results waiting for the writer), so memory grows with neither the scene's height nor its width.

Resume: chunks and tiles with a completion record are not redone (a finished tile's
probabilities are read back from ``output.zarr`` for the map). Lost actors: a batch whose actor
died is sent again to the actor the pool starts in its place, up to :attr:`StreamTuning.attempts` times.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from pipeline import storage
from pipeline.engine import heap
from pipeline.engine.scheduler import TUNING, Batch, Scheduler, StreamTuning
from pipeline.engine.workdir import Records
from pipeline.errors import InputRasterError
from pipeline.grid import Alignment
from pipeline.io import store
from pipeline.io.read import AlignedPairReader
from pipeline.progress import Progress
from pipeline.tiling import Tile, chunks_under, make_tiles, padded_shape, tile_window

if TYPE_CHECKING:  # torch stays out of the decode workers: they start a second faster
    from pipeline.checks import RunPlan
    from pipeline.engine.pool import PredictorPool
    from pipeline.engine.predictor import InferenceJob

Key = tuple[int, int]  # a segment's (row, first col)


@dataclass(frozen=True)
class SceneStream:
    """Where one scene's stream reads and writes."""

    alignment: Alignment
    input_store: str
    output_store: str
    run_dir: str
    tile: int
    bands: tuple[int, ...]  # 1-based, fed to the model
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)
    segment_width: int = TUNING.segment_width


@dataclass
class StreamStats:
    """What the stream did: counts, and the model actors' phase seconds while it ran."""

    tiles: int = 0
    predicted: int = 0
    reused: int = 0  # tiles whose probabilities a previous attempt had recorded
    chunks_decoded: int = 0
    chunks_reused: int = 0
    chunks_reread: int = 0  # chunks read back from input.zarr for a later batch (scenes wider than the horizon)
    retried: list[str] = field(default_factory=list)  # keys of tiles predicted again after a lost actor
    model_seconds: dict[str, float] = field(default_factory=dict)  # the model actors' phases (set by the scene)


UNREAD_ITEMSIZE = 4  # bytes a sample is assumed to take before the scenes are read (an archive's): float32
DEFAULT_OBJECT_STORE = 512 * 1024**2  # a local runtime's object store, at least


def segment_nbytes(width: int, tile: int, bands: int, itemsize: int) -> int:
    """Bytes of a decoded row segment ``width`` wide (whole chunks): both dates' ``bands`` and the valid mask."""
    return max(tile, width // tile * tile) * tile * (2 * bands * itemsize + 1)


def segment_width_for(bands: int, itemsize: int, tile: int, tuning: StreamTuning = TUNING) -> int:
    """The width of a row segment for ``bands`` samples of ``itemsize`` bytes.

    Whole chunks, within :attr:`StreamTuning.segment_bytes` (one chunk at least) and
    :attr:`StreamTuning.segment_width`.
    """
    per_chunk = segment_nbytes(tile, tile, bands, itemsize)
    chunks = max(1, min(tuning.segment_width // tile, tuning.segment_bytes // per_chunk))
    return chunks * tile


def object_store_bytes(bands: int, itemsize: int, tile: int, tuning: StreamTuning = TUNING, gpus: int = 0) -> int:
    """Object store for a local Ray runtime streaming scenes of ``bands`` samples of ``itemsize`` bytes.

    Room for :attr:`StreamTuning.store_segments` row segments (and, with ``gpus``, twice the
    segments a GPU's stream holds: :attr:`StreamTuning.held_bytes_gpu`), at least :data:`DEFAULT_OBJECT_STORE`
    (an RGB uint8 scene's) and at most 30 % of this machine's memory (Ray's own default share). A
    13-band uint16 pair's segments (then 53 MiB each) spilled to disk in 512 MiB, and ran 3-4x slower.
    """
    segment = segment_nbytes(segment_width_for(bands, itemsize, tile, tuning), tile, bands, itemsize)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    wanted = max(DEFAULT_OBJECT_STORE, tuning.store_segments * segment, 2 * tuning.held_bytes_gpu if gpus else 0)
    return int(min(wanted, max(DEFAULT_OBJECT_STORE, 0.3 * memory)))


def object_store_for(plan: RunPlan) -> int:
    """The object store a local Ray runtime needs for this scene's stream (its bands, sample size, tile, GPUs)."""
    import torch  # the driver's checks built the model already

    return object_store_bytes(len(plan.bands), np.dtype(plan.alignment.dtype).itemsize, plan.spec.tile,
                              gpus=torch.cuda.device_count())


def segment_bytes(job: SceneStream) -> int:
    """Bytes of one decoded row segment: both dates of the model's bands and the valid mask."""
    return segment_nbytes(job.segment_width, job.tile, len(job.bands), np.dtype(job.alignment.dtype).itemsize)


def held_budget(tuning: StreamTuning = TUNING) -> int:
    """Bytes of decoded segments the stream may hold on this cluster: its GPUs' or CPUs' share, within half its store."""
    resources = ray.cluster_resources()
    held = tuning.held_bytes_gpu if resources.get("GPU", 0) else tuning.held_bytes
    store = resources.get("object_store_memory", 0)
    return int(min(held, store // 2)) if store else held


def make_segments(tiles: Sequence[Tile], tile: int, width: int = TUNING.segment_width
                  ) -> dict[Key, tuple[Tile, ...]]:
    """The tiles grouped into row segments of ``width // tile`` chunks (at least one), keyed ``(row, first col)``.

    One task per segment amortises opening the pair, Ray's per-task cost and the store's per-write
    cost over several chunks; one read of a wider window is also cheaper than several narrow ones.
    """
    segments: dict[Key, list[Tile]] = {}
    for t in tiles:
        segments.setdefault(segment_of((t.row, t.col), tile, width), []).append(t)
    return {k: tuple(v) for k, v in segments.items()}


def segment_of(key: tuple[int, int], tile: int, width: int = TUNING.segment_width) -> Key:
    """The segment key holding chunk ``(row, col)``."""
    per = max(1, width // tile)
    return key[0], key[1] - key[1] % per


# --- the CPU stages, as plain functions (Ray runs them as tasks anywhere in the cluster) -----------

def decode_segment(job: SceneStream, tiles: tuple[Tile, ...], done: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read (and warp) one row segment of both dates; store and record its chunks not yet in ``done``.

    Chunks an earlier attempt recorded are not written again (a rewrite torn by a kill would sit
    under a valid record); a segment recorded whole is read back from ``input.zarr`` instead of
    decoded. Returns the model's bands ``(2, C, h, w)`` and the valid mask of the whole segment.
    """
    y0, x0 = tiles[0].y0, tiles[0].x0
    y1, x1 = y0 + tiles[0].height, tiles[-1].x0 + tiles[-1].width
    with storage.using(job.storage):
        if all(t.key in done for t in tiles):  # decoded by an earlier attempt: read back, not decoded again
            image, valid = store.read_input_chunk(job.input_store, y0, x0, y1 - y0, x1 - x0)
        else:
            with AlignedPairReader(job.alignment) as reader:
                try:
                    image, valid = reader.read(y0, y1, x0, x1)
                except InputRasterError:
                    for t in tiles:  # name the chunk that cannot be read, not the whole segment
                        reader.read(t.y0, t.y0 + t.height, t.x0, t.x0 + t.width)
                    raise
            todo = [t for t in tiles if t.key not in done]
            writer = _input_writer(job)
            for first, last in _runs(todo):  # chunk-aligned runs of unrecorded chunks, one write each
                a, b = first.x0 - x0, last.x0 + last.width - x0
                writer.write(y0, first.x0, image[..., a:b], valid[:, a:b])
            records, node = Records(job.run_dir), ray.get_runtime_context().get_node_id()
            for t in todo:
                records.mark("ingest", t.key, node)
    if job.bands == tuple(range(1, image.shape[1] + 1)):  # all bands, in order: no copy
        return image, valid
    return np.ascontiguousarray(image[:, np.asarray(job.bands) - 1]), valid


# A stream worker keeps the arrays of the few scenes it last wrote open: opening input.zarr's two
# took 1.4 ms a segment. Keyed by the whole stream (paths, layout, storage options), so a handle
# never outlives what it was opened for; this is a cache of the worker process's own file handles.
@functools.lru_cache(maxsize=4)
def _input_writer(job: SceneStream) -> store.InputWriter:
    return store.InputWriter(job.input_store)


def _runs(tiles: list[Tile]) -> list[tuple[Tile, Tile]]:
    """Consecutive chunks of one row, as (first, last) pairs."""
    runs: list[list[Tile]] = []
    for t in tiles:
        if runs and runs[-1][-1].col == t.col - 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return [(r[0], r[-1]) for r in runs]


class TileKeeper:
    """Keeps finished tiles for a rerun: their core probabilities into their own chunks of ``output.zarr``, then records.

    The map writer calls it with each batch it receives (it holds the pixels already).
    """

    def __init__(self, job: SceneStream) -> None:
        self.job = job
        self._writer: store.ProbabilityWriter | None = None

    def __call__(self, results: Sequence[tuple[Tile, np.ndarray, np.ndarray]]) -> None:
        """Keep ``(tile, probabilities, valid)`` results: the data first, then the records."""
        if self._writer is None:
            self._writer = store.ProbabilityWriter(self.job.output_store)
        self._writer.write([(t.y0, t.x0, prob) for t, prob, _ in results])
        records, node = Records(self.job.run_dir), ray.get_runtime_context().get_node_id()
        for t, _, _ in results:
            records.mark("infer", t.key, node)

    def __getstate__(self) -> dict:
        return {"job": self.job, "_writer": None}  # array handles are opened where the keeper runs


def load_tiles(job: SceneStream, tiles: list[Tile]) -> list[tuple[Tile, np.ndarray, np.ndarray]]:
    """Finished tiles read back from the stores (a resumed run's)."""
    with storage.using(job.storage):
        prob = store.open_array(job.output_store, store.PROBABILITY)
        valid = store.open_array(job.input_store, store.VALID)
        return [(t, prob[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width],
                 valid[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width]) for t in tiles]


# Every stream task takes half a CPU (TUNING.task_cpus): Ray starts a worker process for each task it
# runs at once. Decoding is spread over the cluster's nodes: reads and warps are the stream's
# heaviest CPU work.
_decode = ray.remote(num_cpus=TUNING.task_cpus, scheduling_strategy="SPREAD")(heap.trimmed(decode_segment))
_load = ray.remote(num_cpus=TUNING.task_cpus)(heap.trimmed(load_tiles))
WARM_HOLD_S = 0.3  # a warm-up task keeps its worker this long, so that tasks submitted together start a process each


def _ready() -> int:
    """Hold a worker briefly: run once per worker so that its process is started and has this module imported."""
    import time

    import pipeline.engine.mapwriter  # noqa: F401  (the map writer's module, for a worker that becomes the writer)

    time.sleep(WARM_HOLD_S)
    return os.getpid()


_warm = ray.remote(num_cpus=TUNING.task_cpus, scheduling_strategy="SPREAD")(_ready)


def stream_workers(lanes: int, tuning: StreamTuning = TUNING) -> int:
    """Worker processes a stream feeding ``lanes`` forward passes at once runs at most, about.

    Its decodes ahead of need, and four more for the decodes of a batch being sent beyond those.
    """
    return tuning.decodes_per_lane * lanes + 4


def warm_workers(lanes: int = 1, tuning: StreamTuning = TUNING) -> list:
    """Start the stream's CPU workers (process start and imports, a second or two each) ahead of the stream.

    As many as the stream runs at once (:func:`stream_workers`), within the cluster's free CPUs:
    a worker the stream starts itself leaves its decodes waiting meanwhile. Returns the tasks'
    references; nothing needs to wait for them.
    """
    free = int(ray.available_resources().get("CPU", 0) / tuning.task_cpus)
    return [_warm.remote() for _ in range(max(1, min(stream_workers(lanes, tuning), free)))]


def feed_from_stores(job: SceneStream, writer, tiles: list[Tile], group: int = 16) -> list:
    """Send finished tiles, read back from the stores in small groups by Ray tasks, to the map writer."""
    return [writer.put.remote(_load.remote(job, tiles[i:i + group]), kept=True) for i in range(0, len(tiles), group)]


def batch_segments(batch: Sequence[Tile], needs: dict[Tile, list[Key]]) -> list[Key]:
    """The segments a batch's windows cover, each once, in order."""
    return sorted({k for t in batch for k in needs[t]})


class _Segments:
    """Decode tasks of the segments tiles need, submitted ahead and released once no batch needs them soon.

    A segment serves the batches of its own tile row and, for their halos, of the rows above and
    below. On a scene wider than the stream's horizon those uses are far apart: a segment whose
    next batch is more than ``hold`` batches after the one that just finished is let go, and read
    back from ``input.zarr`` (where its first decode stored it) when that batch comes. So the
    stream holds a bounded number of segments whatever the scene's width, as well as its height.
    ``decode`` is the decode task (``.remote(job, tiles, done)``). ``held`` bounds the segments
    kept at once (decoding, decoded or held for a later batch) by count: lookahead stops there, and
    a released segment with later uses is let go while more are held (a batch being sent still
    gets its segments whatever the bound).
    """

    def __init__(self, job: SceneStream, done: set[str], segments: dict[Key, tuple[Tile, ...]],
                 batches: Iterable[Sequence[Tile]], needs: dict[Tile, list[Key]], hold: int | None = None,
                 limit: int | None = None, decode: Any = None, held: int | None = None) -> None:
        self.job, self.done, self.segments, self.hold, self.limit = job, done, segments, hold, limit
        self.held = held
        self.decode = decode or _decode
        self.refs: dict[Key, ray.ObjectRef] = {}
        self.running: list[ray.ObjectRef] = []  # decode tasks not yet seen finished (kept with a limit)
        self.uses: dict[Key, list[int]] = {}  # indices of the batches still to finish that need it
        for index, batch in enumerate(batches):
            for key in batch_segments(batch, needs):
                self.uses.setdefault(key, []).append(index)
        self.stored: set[Key] = set()  # let go with batches to come: read back when needed
        self.finished: set[Key] = set()  # held segments whose decode is known finished (a batch used them)
        self.decoded = self.reused = self.reread = 0  # chunks

    def _submit(self, tiles: tuple[Tile, ...], done: set[str]) -> tuple[ray.ObjectRef, int]:
        recorded = frozenset(t.key for t in tiles if t.key in done)
        return self.decode.remote(self.job, tiles, recorded), len(recorded)

    def need(self, key: Key) -> ray.ObjectRef:
        """The decode task of a segment, submitted now if it is not running or held."""
        if key not in self.refs:
            tiles = self.segments[key]
            if key in self.stored:  # decoded and stored earlier in this run: read back, not decoded again
                self.refs[key], _ = self._submit(tiles, self.done | {t.key for t in tiles})
                self.reread += len(tiles)
            else:
                self.refs[key], reused = self._submit(tiles, self.done)
                self.decoded += len(tiles) - reused
                self.reused += reused
            if self.limit is not None:
                self.running.append(self.refs[key])
        return self.refs[key]

    def ahead(self, keys: Iterable[Key]) -> bool:
        """Submit the decodes of segments a later batch needs, within the limit; False once it is reached.

        Segments are submitted in the order asked for, so the next batches' come first.
        """
        if self.limit is not None and self.running:
            _, self.running = ray.wait(self.running, num_returns=len(self.running), timeout=0, fetch_local=False)
        for key in keys:
            if key in self.refs:
                continue
            if self.limit is not None and len(self.running) >= self.limit:
                return False
            if self.held is not None and len(self.refs) >= self.held:
                return False
            self.need(key)
        return True

    def release(self, key: Key, index: int) -> None:
        """Batch ``index``, which needed the segment, is done (call once per batch, not per tile).

        Its decode task has finished (the batch used its result), so its chunks are in
        ``input.zarr`` and recorded: a segment let go here can be read back.
        """
        uses = self.uses[key]
        uses.remove(index)
        if not uses:
            self.refs.pop(key, None)  # the object store frees it once the batches using it are done
            self.finished.discard(key)
        elif key in self.refs:
            self.finished.add(key)
            if self.hold is not None and uses[0] - index > self.hold:
                self._let_go(key)
        if self.held is not None:  # over the bound: let go of finished segments needed last
            for k in sorted((k for k in self.finished if k in self.refs), key=lambda k: -self.uses[k][0]):
                if len(self.refs) <= self.held:
                    break
                self._let_go(k)

    def _let_go(self, key: Key) -> None:
        """Drop a finished segment with later uses: read back from ``input.zarr`` when one comes."""
        del self.refs[key]
        self.finished.discard(key)
        self.stored.add(key)


class _Writes:
    """The map writer's puts in flight: counted as they finish (their tiles kept), bounded in number."""

    def __init__(self, limit: int) -> None:
        self.limit, self.pending, self.kept = limit, {}, 0

    def add(self, ref: ray.ObjectRef, tiles: int) -> None:
        self.pending[ref] = tiles

    def drain(self, to: int | None = None) -> None:
        """Count the finished puts; with ``to``, first wait until at most that many are in flight."""
        refs = list(self.pending)
        if not refs:
            return
        if to is None:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        else:
            ready, _ = ray.wait(refs, num_returns=max(0, len(refs) - to))
        for ref in ready:
            ray.get(ref)  # a writer's error surfaces here
            self.kept += self.pending.pop(ref)


@dataclass
class _Plan:
    """The tiles to predict, their windows' segments, and the batches in the order they are sent."""

    batches: list[list[Tile]]
    needs: dict[Tile, list[Key]]


def _plan(job: SceneStream, todo: list[Tile], pool: PredictorPool, infer_job: InferenceJob) -> _Plan:
    g = job.alignment.grid
    clipped = infer_job.statistics == "scene"
    windows = {t: tile_window(t, job.tile, infer_job.halo, pool.size_divisor, g.height, g.width, clipped=clipped)
               for t in todo}
    needs = {t: sorted({segment_of(k, job.tile, job.segment_width) for k in chunks_under(windows[t], job.tile)})
             for t in todo}
    # A small scene is cut into smaller batches rather than leave lanes idle (the example pair's 4
    # tiles: one batch of 4 on one of two CPU lanes took 10.1 s, two batches of 2 on both 4.7 s).
    size = max(1, min(pool.batch_size, -(-len(todo) // pool.lanes)))
    if todo:  # a GPU's first pass of a shape is slow: taken while the first segments decode
        pool.warm_up((size, 2, len(job.bands), *padded_shape(windows[todo[0]])), job.alignment.dtype)
    return _Plan([todo[i:i + size] for i in range(0, len(todo), size)], needs)


def run_stream(job: SceneStream, pool: PredictorPool, infer_job: InferenceJob, writer, *,
               tuning: StreamTuning = TUNING, decode: Any = None, progress: Progress | None = None) -> StreamStats:
    """Stream every tile of the scene through decode, the model actors and the map writer.

    ``writer`` is a Ray actor handle with ``put(results, kept=False)`` (a
    :class:`pipeline.engine.mapwriter.MapWriter`). Tiles recorded as predicted by an earlier
    attempt are read back and written to the map only. ``decode`` replaces the decode task
    (a benchmark paces the stream with its own).
    """
    g = job.alignment.grid
    tiles = make_tiles(g.height, g.width, job.tile)
    records = Records(job.run_dir)
    done_in, done_out = records.done("ingest"), records.done("infer")
    todo = [t for t in tiles if t.key not in done_out]
    finished = [t for t in tiles if t.key in done_out]
    stats = StreamStats(tiles=len(tiles), reused=len(finished))
    bar = progress or Progress("infer")
    if finished:
        bar.note(f"{len(finished)} of {len(tiles)} tiles reused from an earlier attempt")
    plan = _plan(job, todo, pool, infer_job)
    ahead = tuning.lookahead_batches * pool.slots
    segments = _Segments(job, done_in, make_segments(tiles, job.tile, job.segment_width), plan.batches, plan.needs,
                         hold=tuning.hold_factor * ahead, limit=tuning.decodes_per_lane * pool.lanes, decode=decode,
                         held=max(2 * pool.lanes, held_budget(tuning) // segment_bytes(job)))

    def send(actor, batch: Batch) -> tuple:
        keys = batch_segments(batch.tiles, plan.needs)
        count, results = actor.predict_chunks.options(num_returns=2).remote(
            infer_job, list(batch.tiles), keys, *[segments.need(k) for k in keys])
        return count, results, keys

    scheduler = Scheduler(pool, send, attempts=tuning.attempts,
                          on_retry=lambda b: bar.note(f"a model actor was lost: {len(b.tiles)} tile(s) predicted again"))
    scheduler.add(Batch(tuple(b), i) for i, b in enumerate(plan.batches))
    writes = _Writes(tuning.writes_per_slot * pool.slots)
    for ref, group in zip(feed_from_stores(job, writer, finished), range(0, len(finished), 16)):
        writes.add(ref, len(finished[group:group + 16]))
    _drive(scheduler, segments, plan, writes, writer, stats, bar, ahead)
    writes.drain(to=0)
    bar(writes.kept, len(tiles))
    stats.retried = list(scheduler.retried)
    stats.chunks_decoded, stats.chunks_reused, stats.chunks_reread = segments.decoded, segments.reused, segments.reread
    return stats


def _drive(scheduler: Scheduler, segments: _Segments, plan: _Plan, writes: _Writes, writer, stats: StreamStats,
           bar: Progress, ahead: int) -> None:
    """The stream's loop: decode ahead, send batches to free slots, hand finished ones to the writer."""
    total = stats.tiles
    while scheduler.busy:
        # decode ahead: the segments of the next batches are submitted before an actor is free
        held_back = not all(segments.ahead(batch_segments(b.tiles, plan.needs)) for b in scheduler.upcoming(ahead))
        # the map writer bounds the stream too: results wait in the object store, not in memory
        if len(writes.pending) > writes.limit:
            writes.drain(to=writes.limit // 2)
        scheduler.fill(timeout=5.0)
        # A decode that finishes wakes the loop too while others wait for it: the next is submitted at
        # once, not when a batch comes back (with a fast model, the decodes ran only just in time).
        for call in scheduler.wait(also=segments.running if held_back else (), timeout=1.0):
            for key in call.context:
                segments.release(key, call.batch.index)
            stats.predicted += len(call.batch.tiles)
            writes.add(writer.put.remote(call.result), len(call.batch.tiles))
        writes.drain()
        bar(writes.kept, total)
    scheduler.raise_error()


def ingest_stream(job: SceneStream, *, progress: Progress | None = None, in_flight: int = 4,
                  decode: Any = None) -> tuple[int, int]:
    """Decode every chunk not yet recorded into ``input.zarr`` with Ray tasks (a row segment each).

    The scene-statistics passes need the whole scene stored before they start. Returns (chunks
    decoded, chunks reused).
    """
    g = job.alignment.grid
    tiles = make_tiles(g.height, g.width, job.tile)
    done = Records(job.run_dir).done("ingest")
    todo = [seg for seg in make_segments(tiles, job.tile, job.segment_width).values()
            if not all(t.key in done for t in seg)]
    bar = progress or Progress("ingest", unit="chunks")
    decode = decode or _decode
    pending: dict = {}
    finished = len(tiles) - sum(len(seg) for seg in todo)
    decoded = 0
    for seg in [*todo, None]:
        while pending and (seg is None or len(pending) >= in_flight):
            ready, _ = ray.wait(list(pending), num_returns=1)
            ray.get(ready)
            finished += pending.pop(ready[0])
            bar(finished, len(tiles))
        if seg is not None:
            pending[decode.remote(job, seg, frozenset(t.key for t in seg if t.key in done))] = len(seg)
            decoded += sum(t.key not in done for t in seg)
    return decoded, len(tiles) - decoded
