"""The tile stream of one scene: decode -> model -> map, every stage overlapping the others on Ray.

Each row segment (a few tile chunks of one row) is decoded (read + warp) by a Ray task placed
anywhere in the cluster, which also writes its chunks to ``input.zarr`` and records them; a batch
of tiles goes to a model actor as soon as the segments its windows cover are decoded, straight
from the object store (no zarr round trip); the actor's core probabilities go to
``output.zarr`` (a write task, then a record) and to the map writer, which writes the COG's
blocks as tiles finish. In-flight work is bounded (segments decoded a few batches ahead and
released once no batch needs them soon, read back from ``input.zarr`` for a use further on;
batches per actor slot), so memory grows with neither the scene's height nor its width.

Resume: chunks and tiles with a completion record are not redone (a finished tile's
probabilities are read back from ``output.zarr`` for the map). Lost actors: a batch whose actor
died is retried on a restarted or another actor, up to :data:`ATTEMPTS` times.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
import ray
from ray.exceptions import RayActorError

from pipeline import storage
from pipeline.engine.workdir import Records
from pipeline.errors import InputRasterError
from pipeline.grid import Alignment
from pipeline.io import store
from pipeline.io.read import AlignedPairReader
from pipeline.progress import Progress
from pipeline.tiling import Tile, chunks_under, make_tiles, padded_shape, tile_window

if TYPE_CHECKING:  # torch stays out of the decode and store workers: they start a second faster
    from pipeline.engine.inference import InferenceJob, PredictorPool

LOOKAHEAD_BATCHES = 2  # batches whose chunks are decoded ahead of the model, per actor slot
# A decoded segment is kept for a batch at most this many lookaheads later; one needed further on
# is read back from input.zarr then. Its uses are a tile row apart: width / (tile x batch size)
# batches, 4 for an 8192-pixel-wide scene in batches of four 512-pixel tiles. With one CPU actor
# (a lookahead of 4 batches, so 8 held) scenes up to 16,384 pixels wide keep every segment between
# its rows as before; wider ones read segments back rather than hold more rows of them.
HOLD_FACTOR = 2
# Decode tasks submitted ahead of need and not yet finished, at most, per forward pass the pool runs
# at once. Ray starts a worker process for each stream task running at once (150-220 MiB apiece):
# on a node of many CPUs the lookahead alone had some 20 decode tasks running for one GPU actor.
# Batches never wait on this bound: the segments of a batch being sent are submitted whatever it.
# A decode task did 10 MP/s on the H200 machine (input.zarr included): 8 of them fall short of
# ChangerEx's 124 MP/s there. Paced stream (pipeline.pacing), 8192², those rates slowed tenfold so
# the runtime's own work does not count, one GPU: 9.8 s at 8 against 7.1 s at 16 for a 5.4 s bound
# (decodes at once 6.9 and 9.6 on average); at TinyCD's 85 MP/s 10.1 against 9.4 s for 7.9 s.
DECODES_PER_LANE = 16
log = logging.getLogger("changemap.stream")


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


@dataclass
class StreamStats:
    """What the stream did: counts and the busy seconds of each stage (summed over workers)."""

    tiles: int = 0
    predicted: int = 0
    reused: int = 0  # tiles whose probabilities a previous attempt had recorded
    chunks_decoded: int = 0
    chunks_reused: int = 0
    chunks_reread: int = 0  # chunks read back from input.zarr for a later batch (scenes wider than the horizon)
    retried: list[str] = field(default_factory=list)  # keys of tiles predicted again after a lost actor
    model_seconds: dict[str, float] = field(default_factory=dict)  # the model actors' phases while it ran (set by run)


# --- the CPU stages, as plain functions (Ray runs them as tasks anywhere in the cluster) -----------

SEGMENT_WIDTH = 2048  # pixels of a tile row one decode task reads, stores and hands on as one object


# Room in a local runtime's object store, in row segments of the scene: the stream holds about
# three tile rows of them (fewer on scenes wider than the horizon), with its lookahead and results.
# A 13-band uint16 pair (segments of 53 MiB) in 512 MiB spilled to disk: 2048 x 10980 px with the
# benchmark's null model took 18.5-25.1 s, against 5.6 s with 2 GiB and 6.2 s with 4 GiB; the peak
# memory was the same (3,350-3,520 MiB: pages are used only as objects fill them), and an RGB
# 8192² run's peak did not move with 4 GiB (1,908-1,953 against 1,935-1,945 MiB).
STORE_SEGMENTS = 48
UNREAD_ITEMSIZE = 4  # bytes a sample is assumed to take before the scenes are read (an archive's): float32


def object_store_bytes(bands: int, itemsize: int, tile: int) -> int:
    """Object store for a local Ray runtime streaming scenes of ``bands`` samples of ``itemsize`` bytes.

    Room for :data:`STORE_SEGMENTS` row segments, at least the default (512 MiB: an RGB uint8
    scene's) and at most 30 % of this machine's memory (Ray's own default share).
    """
    from pipeline.engine.ray_runtime import DEFAULT_OBJECT_STORE

    segment = tile * max(1, SEGMENT_WIDTH // tile) * tile * (2 * bands * itemsize + 1)  # both dates + valid mask
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(max(DEFAULT_OBJECT_STORE, STORE_SEGMENTS * segment), max(DEFAULT_OBJECT_STORE, 0.3 * memory)))


def make_segments(tiles: list[Tile], tile: int) -> dict[tuple[int, int], tuple[Tile, ...]]:
    """The tiles grouped into row segments of ``SEGMENT_WIDTH // tile`` chunks (at least one), keyed ``(row, first col)``.

    One task per segment amortises opening the pair, Ray's per-task cost and the store's per-write
    cost over several chunks; one read of a wider window is also cheaper than several narrow ones.
    """
    segments: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        segments.setdefault(segment_of((t.row, t.col), tile), []).append(t)
    return {k: tuple(v) for k, v in segments.items()}


def segment_of(key: tuple[int, int], tile: int) -> tuple[int, int]:
    """The segment key holding chunk ``(row, col)``."""
    per = max(1, SEGMENT_WIDTH // tile)
    return key[0], key[1] - key[1] % per


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


# A worker keeps the arrays of the few scenes it last wrote: opening input.zarr's two took 1.4 ms
# a segment, of the 37-43 ms of CPU a 2048 x 512 segment's decode task takes here. Keyed by the
# whole stream (paths, layout, storage options): a handle never outlives what it was opened for.
@functools.lru_cache(maxsize=4)
def _input_writer(job: SceneStream) -> store.InputWriter:
    return store.InputWriter(job.input_store)


@functools.lru_cache(maxsize=4)
def _probability_writer(job: SceneStream) -> store.ProbabilityWriter:
    return store.ProbabilityWriter(job.output_store)


def _submit_decode(job: SceneStream, tiles: tuple[Tile, ...], recorded: set[str]) -> tuple[ray.ObjectRef, int]:
    """Start a segment's decode task; returns it and how many of its chunks an earlier attempt recorded."""
    done = frozenset(t.key for t in tiles if t.key in recorded)
    return _decode.remote(job, tiles, done), len(done)


def _runs(tiles: list[Tile]) -> list[tuple[Tile, Tile]]:
    """Consecutive chunks of one row, as (first, last) pairs."""
    runs: list[list[Tile]] = []
    for t in tiles:
        if runs and runs[-1][-1].col == t.col - 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return [(r[0], r[-1]) for r in runs]


def store_tiles(job: SceneStream, results: list[tuple[Tile, np.ndarray, np.ndarray]]) -> int:
    """Write a batch's core probabilities into their own chunks of ``output.zarr``, then record them."""
    with storage.using(job.storage):
        _probability_writer(job).write([(t.y0, t.x0, prob) for t, prob, _ in results])
        records, node = Records(job.run_dir), ray.get_runtime_context().get_node_id()
        for t, _, _ in results:
            records.mark("infer", t.key, node)
    return len(results)


def load_tiles(job: SceneStream, tiles: list[Tile]) -> list[tuple[Tile, np.ndarray, np.ndarray]]:
    """Finished tiles read back from the stores (resume, and the scene-statistics path)."""
    with storage.using(job.storage):
        prob = store.open_array(job.output_store, store.PROBABILITY)
        valid = store.open_array(job.input_store, store.VALID)
        return [(t, prob[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width],
                 valid[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width]) for t in tiles]


# Every stream task takes half a CPU: Ray starts a worker process for each task it runs at once
# (150-220 MiB apiece at 8192²), and at a quarter four store tasks ran at once on the CPU a
# model actor leaves free. Decoding is spread over the cluster's nodes: reads and warps are the
# stream's heaviest CPU work.
TASK_CPUS = 0.5
_decode = ray.remote(num_cpus=TASK_CPUS, scheduling_strategy="SPREAD")(decode_segment)
_store = ray.remote(num_cpus=TASK_CPUS)(store_tiles)
_load = ray.remote(num_cpus=TASK_CPUS)(load_tiles)


WARM_HOLD_S = 0.3  # a warm-up task keeps its worker this long, so that tasks submitted together start a process each


def _ready() -> int:
    """Hold a worker briefly: run once per worker so that its process is started and has this module imported."""
    import time

    import pipeline.engine.mapwriter  # noqa: F401  (the map writer's module, for a worker that becomes the writer)

    time.sleep(WARM_HOLD_S)
    return os.getpid()


_warm = ray.remote(num_cpus=TASK_CPUS, scheduling_strategy="SPREAD")(_ready)


def stream_workers(lanes: int) -> int:
    """Worker processes a stream feeding ``lanes`` forward passes at once runs at most, about.

    Its decodes ahead of need, and four more: decodes of a batch being sent beyond those, and the
    ``output.zarr`` writes (a paced stream on a 16-CPU node with one GPU, 8 decodes ahead, ran
    10-12 tasks at once; with 16, 16-18).
    """
    return DECODES_PER_LANE * lanes + 4


def warm_workers(lanes: int = 1) -> list:
    """Start the stream's CPU workers (process start and imports, a second or two each) ahead of the stream.

    As many as the stream runs at once (:func:`stream_workers`), within the cluster's free CPUs:
    a worker the stream starts itself leaves its decodes waiting meanwhile (paced stream on a
    16-CPU node, ``python -m pipeline.benchmark schedule``: its first decodes waited 1-2 s for
    processes). Returns the tasks' references; nothing needs to wait for them.
    """
    free = int(ray.available_resources().get("CPU", 0) / TASK_CPUS)
    return [_warm.remote() for _ in range(max(1, min(stream_workers(lanes), free)))]


def feed_from_stores(job: SceneStream, writer, tiles: list[Tile], group: int = 16) -> list:
    """Send finished tiles, read back from the stores in small groups by Ray tasks, to the map writer."""
    return [writer.put.remote(_load.remote(job, tiles[i:i + group])) for i in range(0, len(tiles), group)]


def _kill_point(done: int) -> None:
    """Fault injection for tests: kill this run like a preempted node.

    ``CHANGEMAP_FAULT_RUN_KILL_AFTER=k`` sends SIGKILL once ``k`` tiles are recorded.
    """
    after = os.environ.get("CHANGEMAP_FAULT_RUN_KILL_AFTER")
    if after is not None and done >= int(after):
        os.kill(os.getpid(), signal.SIGKILL)


def batch_segments(batch: list[Tile], needs: dict[Tile, list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """The segments a batch's windows cover, each once, in order."""
    return sorted({k for t in batch for k in needs[t]})


class _Segments:
    """Decode tasks of the segments tiles need, submitted ahead and released once no batch needs them soon.

    A segment serves the batches of its own tile row and, for their halos, of the rows above and
    below. On a scene wider than the stream's horizon those uses are far apart: a segment whose
    next batch is more than ``hold`` batches after the one that just finished is let go, and read
    back from ``input.zarr`` (where its first decode stored it) when that batch comes. So the
    stream holds a bounded number of segments whatever the scene's width, as well as its height.
    """

    def __init__(self, job: SceneStream, done: set[str], segments: dict[tuple[int, int], tuple[Tile, ...]],
                 batches: Iterable[list[Tile]], needs: dict[Tile, list[tuple[int, int]]],
                 hold: int | None = None, limit: int | None = None) -> None:
        self.job, self.done, self.segments, self.hold, self.limit = job, done, segments, hold, limit
        self.refs: dict[tuple[int, int], ray.ObjectRef] = {}
        self.running: list[ray.ObjectRef] = []  # decode tasks not yet seen finished (kept with a limit)
        self.uses: dict[tuple[int, int], list[int]] = {}  # indices of the batches still to finish that need it
        for index, batch in enumerate(batches):
            for key in batch_segments(batch, needs):
                self.uses.setdefault(key, []).append(index)
        self.stored: set[tuple[int, int]] = set()  # let go with batches to come: read back when needed
        self.decoded = self.reused = self.reread = 0  # chunks

    def need(self, key: tuple[int, int]) -> ray.ObjectRef:
        if key not in self.refs:
            tiles = self.segments[key]
            if key in self.stored:  # decoded and stored earlier in this run: read back, not decoded again
                self.refs[key], _ = _submit_decode(self.job, tiles, self.done | {t.key for t in tiles})
                self.reread += len(tiles)
            else:
                self.refs[key], reused = _submit_decode(self.job, tiles, self.done)
                self.decoded += len(tiles) - reused
                self.reused += reused
            if self.limit is not None:
                self.running.append(self.refs[key])
        return self.refs[key]

    def ahead(self, keys: Iterable[tuple[int, int]]) -> bool:
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
            self.need(key)
        return True

    def release(self, key: tuple[int, int], index: int) -> None:
        """Batch ``index``, which needed the segment, is done (call once per batch, not per tile).

        Its decode task has finished (the batch used its result), so its chunks are in
        ``input.zarr`` and recorded: a segment let go here can be read back.
        """
        uses = self.uses[key]
        uses.remove(index)
        if not uses:
            self.refs.pop(key, None)  # the object store frees it once the batches using it are done
        elif self.hold is not None and uses[0] - index > self.hold and key in self.refs:
            del self.refs[key]
            self.stored.add(key)


def run_stream(job: SceneStream, pool: PredictorPool, infer_job: InferenceJob, writer, *,
               progress: Progress | None = None) -> StreamStats:
    """Stream every tile of the scene through decode, the model actors and the map writer.

    ``writer`` is a Ray actor handle with ``put(results)`` (a :class:`pipeline.engine.mapwriter.MapWriter`).
    Tiles recorded as predicted by an earlier attempt are read back and written to the map only.
    """
    from pipeline.engine.inference import ATTEMPTS, lost_tiles_error

    g = job.alignment.grid
    tiles = make_tiles(g.height, g.width, job.tile)
    records = Records(job.run_dir)
    done_in, done_out = records.done("ingest"), records.done("infer")
    stats = StreamStats(tiles=len(tiles))
    todo = [t for t in tiles if t.key not in done_out]
    finished = [t for t in tiles if t.key in done_out]
    stats.reused = len(finished)
    bar = progress or Progress("infer")
    if finished:
        bar.note(f"{len(finished)} of {len(tiles)} tiles reused from an earlier attempt")
    windows = {t: tile_window(t, job.tile, infer_job.halo, pool.size_divisor, g.height, g.width, clipped=False)
               for t in todo}
    needs = {t: sorted({segment_of(k, job.tile) for k in chunks_under(windows[t], job.tile)}) for t in todo}
    # A small scene is cut into smaller batches rather than leave lanes idle (the example pair's 4
    # tiles: one batch of 4 on one of two CPU lanes took 10.1 s, two batches of 2 on both 4.7 s).
    size = max(1, min(pool.batch_size, -(-len(todo) // pool.lanes)))
    if todo:  # a GPU's first pass of a shape is slow: taken while the first segments decode
        pool.warm_up((size, 2, len(job.bands), *padded_shape(windows[todo[0]])), job.alignment.dtype)
    order = [todo[i:i + size] for i in range(0, len(todo), size)]
    batches = deque([batch, 0, index] for index, batch in enumerate(order))  # batch, attempt, index
    ahead = LOOKAHEAD_BATCHES * pool.slots
    chunks = _Segments(job, done_in, make_segments(tiles, job.tile), order, needs, hold=HOLD_FACTOR * ahead,
                       limit=DECODES_PER_LANE * pool.lanes)
    writes = feed_from_stores(job, writer, finished)  # finished tiles first, read back from the stores
    predicting: dict = {}  # count ref -> (actor, batch, attempt, batch index, segment keys, results ref)
    storing: dict = {}  # ref -> number of tiles
    done = len(finished)
    bar(done, len(tiles))
    while batches or predicting or storing:
        # decode ahead: the chunks of the next batches are submitted before an actor is free
        held_back = False  # segments wanted ahead wait for a running decode to finish
        for batch, _, _ in islice(batches, ahead):
            if not chunks.ahead(batch_segments(batch, needs)):
                held_back = True
                break
        # the map writer bounds the stream too: results wait in the object store, not in memory
        if len(writes) > 4 * pool.slots:
            _, writes = ray.wait(writes, num_returns=len(writes) - 2 * pool.slots)
        while batches:
            actor = pool.acquire(timeout=0 if predicting or storing else 5.0)
            if actor is None:
                break
            batch, attempt, index = batches.popleft()
            keys = batch_segments(batch, needs)
            count, results = actor.predict_chunks.options(num_returns=2).remote(
                infer_job, batch, keys, *[chunks.need(k) for k in keys])
            predicting[count] = (actor, batch, attempt, index, keys, results)
        waiting = list(predicting) + list(storing)
        if not waiting:
            continue
        # A decode that finishes wakes the loop too while others wait for it: the next is submitted at
        # once, not when a batch comes back (with a fast model, the decodes ran only just in time).
        ready, _ = ray.wait(waiting + (chunks.running if held_back else []), num_returns=1, timeout=1.0,
                            fetch_local=False)  # a segment is not pulled to the driver's node
        for ref in ready:
            if ref not in predicting and ref not in storing:  # a decode ahead: the loop submits the next
                continue
            if ref in storing:
                done += storing.pop(ref)
                ray.get(ref)
                bar(done, len(tiles))
                _kill_point(done - stats.reused)
                continue
            actor, batch, attempt, index, keys, results = predicting.pop(ref)
            pool.release(actor)
            try:
                ray.get(ref)  # the count only: the probabilities go from the object store to their writers
            except RayActorError as exc:
                if attempt + 1 >= ATTEMPTS:
                    raise lost_tiles_error(batch, exc) from None
                pool.replace(actor)
                stats.retried += [t.key for t in batch]
                log.warning("a model actor was lost; retrying its %d tile(s) %s (attempt %d of %d)",
                            len(batch), ", ".join(t.key for t in batch), attempt + 2, ATTEMPTS)
                bar.note(f"a model actor was lost: {len(batch)} tile(s) predicted again")
                batches.appendleft([batch, attempt + 1, index])
                continue
            for key in keys:
                chunks.release(key, index)
            stats.predicted += len(batch)
            storing[_store.remote(job, results)] = len(batch)
            writes.append(writer.put.remote(results))
    ray.get(writes)
    stats.chunks_decoded, stats.chunks_reused, stats.chunks_reread = chunks.decoded, chunks.reused, chunks.reread
    return stats


def ingest_stream(job: SceneStream, *, progress: Progress | None = None, in_flight: int = 4) -> tuple[int, int]:
    """Decode every chunk not yet recorded into ``input.zarr`` with Ray tasks (a row segment each).

    The scene-statistics path needs the whole scene stored before its passes. Returns (chunks
    decoded, chunks reused).
    """
    g = job.alignment.grid
    tiles = make_tiles(g.height, g.width, job.tile)
    done = Records(job.run_dir).done("ingest")
    todo = [seg for seg in make_segments(tiles, job.tile).values() if not all(t.key in done for t in seg)]
    bar = progress or Progress("ingest", unit="chunks")
    pending: dict = {}
    decoded = 0
    finished = len(tiles) - sum(len(seg) for seg in todo)
    for seg in todo:
        if len(pending) >= in_flight:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ray.get(ready)
            finished += pending.pop(ready[0])
            bar(finished, len(tiles))
        ref, reused = _submit_decode(job, seg, done)
        decoded += len(seg) - reused
        pending[ref] = len(seg)
    for ref, n in pending.items():
        ray.get(ref)
        finished += n
        bar(finished, len(tiles))
    return decoded, len(tiles) - decoded
