"""Inference: model actors (one per GPU, CPU fallback) predicting tiles.

:class:`TilePredictor` is a plain class (tests call it directly); Ray runs it as a threaded
actor that loads the model once and is fed batches of tiles: by the stream, from just-decoded
segments (:meth:`TilePredictor.predict_chunks`), or, for scene statistics, from halo windows
read straight from ``input.zarr``, each core written into that tile's own chunk of
``output.zarr``, so no two writers share a chunk and a retried tile just rewrites the same chunk.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import ray
import torch
import zarr
from ray.exceptions import RayActorError

from models import LoadedWeights
from models.statistics import Moments, SceneStatistics, Stats, add_moments, measure_levels
from pipeline import loader, storage
from pipeline.engine.tile_engine import Lanes, PhaseClock, TileEngine, forward_probability, normalize
from pipeline.errors import ChangemapError
from pipeline.io import store
from pipeline.tiling import Tile, Window, assemble, by_clipped_shape


@dataclass(frozen=True)
class InferenceJob:
    """What a predictor needs to know about one scene."""

    input_store: str
    output_store: str
    halo: int
    bands: tuple[int, ...]  # 1-based
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)  # for stores in object storage
    statistics: str = "window"  # "scene": windows clipped at the scene edge, scene statistics (models.statistics)
    scene_stats: Stats | None = None  # the measured scene statistics, set for the prediction pass
    shape: tuple[int, int, int] = (0, 0, 0)  # (height, width, tile) of a streamed scene (no store to read it from)


class TilePredictor:
    """Loads a model once and predicts batches of tiles of one or more scenes."""

    def __init__(self, model_name: str, weights: LoadedWeights | None, *, batch_size: int = 4,
                 device: str | None = None, threads: int | None = None, lanes: int = 1,
                 model_args: dict | None = None, compile: bool = False) -> None:
        for module in filter(None, os.environ.get("CHANGEMAP_PLUGINS", "").split(",")):
            importlib.import_module(module.strip())  # modules that register models of their own
        if threads:  # torch threads of each lane (forward passes running at once): see cpu_lanes
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.meta = loader.build_loaded(model_name, weights, model_args)
        self.model.to(self.device)
        if compile:  # opt-in: minutes of compilation, paid back on long GPU runs
            self.model = torch.compile(self.model)
        self.batch_size = batch_size
        self._lanes = Lanes(lanes)  # forward passes at once; one more batch is prepared meanwhile
        self.clock = PhaseClock()  # seconds of each prediction phase, over all scenes and calls
        self._buffers = threading.local()  # each calling thread's reused batch (see TileEngine.batches)
        self._scenes: dict[str, tuple] = {}
        self._engines: dict[str, TileEngine] = {}
        self._warmed: set[tuple] = set()
        self.calls = 0

    def phase_seconds(self) -> dict[str, float]:
        """Seconds this predictor has spent in each phase of prediction (:class:`pipeline.engine.tile_engine.PhaseClock`)."""
        return self.clock.totals()

    def warm_up(self, shape: tuple[int, ...], dtype: str) -> float:
        """One forward pass on a zero batch of ``shape`` ``(B, 2, C, h, w)``, once per shape and dtype.

        A GPU loads the kernels of a model and picks its convolution algorithms during the first
        pass of each shape; warmed while the stream decodes its first segments, that falls on no
        tile. Counted in the phase clock as ``warm-up``; returns its seconds (0 if done before).
        """
        if (shape, dtype) in self._warmed:
            return 0.0
        self._warmed.add((shape, dtype))
        begin = time.perf_counter()
        with self._lanes.shared(), self.clock.timed("warm-up"):
            forward_probability(self.model, self._prepare(np.zeros(shape, dtype)))
        return time.perf_counter() - begin

    def describe(self) -> dict[str, str]:
        """Where this predictor runs (for logs and tests)."""
        return {"device": str(self.device), "model": self.meta.model, "threads": str(torch.get_num_threads()),
                "size_divisor": str(self.model.size_divisor)}

    def _prepare(self, x: np.ndarray) -> torch.Tensor:
        """A ``(B, 2, C, h, w)`` raw batch, normalised on the model's device.

        On a GPU the raw batch (uint8 imagery: a quarter of float32's bytes) is copied from pinned
        memory without blocking, and normalised there; on the CPU numpy normalises it (faster
        than torch on one thread, see :func:`pipeline.engine.tile_engine.normalize`).
        """
        if self.device.type == "cpu":
            return torch.from_numpy(normalize(x, self.meta))
        raw = torch.from_numpy(np.ascontiguousarray(x))
        if self.device.type == "cuda":
            raw = raw.pin_memory()
        return normalize(raw.to(self.device, non_blocking=True), self.meta)

    def _engine(self, job: InferenceJob, height: int, width: int, tile: int) -> TileEngine:
        """An engine for one scene, sharing this predictor's model, lanes, phase clock and batch buffers."""
        return TileEngine(self.model, self._prepare, height=height, width=width, tile=tile, halo=job.halo,
                          batch_size=self.batch_size, statistics=job.statistics, lanes=self._lanes,
                          clock=self.clock, buffers=self._buffers, prepare_ahead=self.device.type == "cuda")

    def _scene(self, job: InferenceJob) -> tuple[TileEngine, Callable, Callable, zarr.Array, zarr.Array]:
        """The engine and readers of one scene's stores (kept for the next batches of the scene)."""
        if job.output_store not in self._scenes:
            storage.install(job.storage)  # this actor's process reads/writes the stores with them
            if len(self._scenes) > 8:  # an actor serving an archive keeps a few scenes' handles only
                self._scenes.clear()
            image = store.open_array(job.input_store, store.IMAGE)
            valid = store.open_array(job.input_store, store.VALID)
            out = store.open_array(job.output_store, store.PROBABILITY, mode="r+")
            tile = store.check_layout(job.input_store, image, job.bands)
            band_index = np.asarray(job.bands) - 1
            engine = self._engine(job, valid.shape[0], valid.shape[1], tile)

            def read(w: Window) -> np.ndarray:
                return image[:, :, w.y0:w.y1, w.x0:w.x1][:, band_index]

            def read_valid(w: Window) -> np.ndarray:
                return valid[w.y0:w.y1, w.x0:w.x1]

            self._scenes[job.output_store] = (engine, read, read_valid, valid, out)
        return self._scenes[job.output_store]

    def predict_chunks(self, job: InferenceJob, tiles: Sequence[Tile], keys: Sequence[tuple[int, int]],
                       *segments: tuple[np.ndarray, np.ndarray]) -> tuple[int, list[tuple[Tile, np.ndarray, np.ndarray]]]:
        """Predict ``tiles`` from just-decoded row segments (the stream; no zarr round trip).

        ``segments`` are ``(image (2, C, h, w) of the model's bands, valid (h, w))`` of the row
        segments keyed ``(row, first col)`` in ``keys`` that the tiles' windows cover (see
        :func:`pipeline.engine.stream.make_segments`). Returns how many tiles, and each tile's core
        probabilities (NaN where the tile has no valid pixel, which costs no forward pass) with
        its valid mask: two results, so the stream's driver fetches the count only. Calls run at
        once (the actor is threaded): one forward pass per lane, and on a GPU another call
        prepares its windows meanwhile.
        """
        fault_point(self)
        height, width, tile = job.shape
        engine = self._engines.get(job.output_store)
        if engine is None:
            if len(self._engines) > 8:
                self._engines.clear()
            engine = self._engines[job.output_store] = self._engine(job, height, width, tile)
        images: dict[tuple[int, int], np.ndarray] = {}
        valids: dict[tuple[int, int], np.ndarray] = {}
        for (row, first), (image, valid) in zip(keys, segments):
            for i in range(-(-valid.shape[1] // tile)):  # the segment's chunks, as views
                images[(row, first + i)] = image[..., i * tile:(i + 1) * tile]
                valids[(row, first + i)] = valid[:, i * tile:(i + 1) * tile]
        found: dict[Tile, np.ndarray] = {}
        with_data = [t for t in tiles if valids[(t.row, t.col)].any()]
        engine.predict(with_data, lambda w: assemble(w, tile, images),
                       lambda t, core: found.__setitem__(t, core.astype("float32", copy=True)))
        return len(tiles), [(t, found.get(t, np.full((t.height, t.width), np.nan, "float32")),
                             np.ascontiguousarray(valids[(t.row, t.col)])) for t in tiles]

    def _with_data(self, job: InferenceJob, tiles: Sequence[Tile]) -> list[Tile]:
        """Tiles without any valid pixel stay NaN (nodata) and cost nothing."""
        valid = self._scene(job)[3]
        return [t for t in tiles if valid[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width].any()]

    def predict(self, job: InferenceJob, tiles: Sequence[Tile]) -> int:
        """Predict ``tiles`` and write their cores to the output store; returns how many were done."""
        engine, read, _, _, out = self._scene(job)

        def write(t: Tile, core: np.ndarray) -> None:
            out[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] = core

        engine.predict(self._with_data(job, tiles), read, write, job.scene_stats)
        return len(tiles)

    def statistics_levels(self) -> list[list[str]]:
        """The levels in which the scene statistics are measured (one pass over the tiles each)."""
        return SceneStatistics(self.model).levels(self.meta.in_channels, self.model.size_divisor)

    def measure(self, job: InferenceJob, tiles: Sequence[Tile], level: list[str], fixed: Stats) -> dict[str, Moments]:
        """Summed moments of the ``level`` layer calls over the valid pixels of ``tiles``' cores."""
        engine, read, read_valid, _, _ = self._scene(job)
        return engine.measure(self._with_data(job, tiles), read, read_valid, level, fixed)


def fault_point(predictor: TilePredictor) -> None:
    """Fault injection for tests: end this actor's process as a lost node would.

    ``CHANGEMAP_FAULT_ACTOR_EXIT_AFTER=k`` exits on the (k+1)-th batch, once per
    ``CHANGEMAP_FAULT_MARKER`` file (the restarted actor carries on).
    """
    predictor.calls += 1
    after = os.environ.get("CHANGEMAP_FAULT_ACTOR_EXIT_AFTER")
    marker = os.environ.get("CHANGEMAP_FAULT_MARKER")
    if after is None or not marker or predictor.calls <= int(after) or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    os._exit(1)


ATTEMPTS = 3  # tries of one batch before the run fails naming its tiles
log = logging.getLogger("changemap.inference")


def lost_tiles_error(batch: Sequence[Tile], exc: BaseException) -> ChangemapError:
    """The error of tiles whose actor was lost on every attempt."""
    return ChangemapError(
        f"tiles {', '.join(t.key for t in batch)} failed {ATTEMPTS} times because their model actor was lost "
        f"({type(exc).__name__}); check the workers' memory (CUDA out of memory?) and logs, then run the same "
        "command again: finished tiles are kept")


# Passed on to the actors' processes: fault injection (tests) and modules registering models.
_FAULT_VARS = ("CHANGEMAP_FAULT_ACTOR_EXIT_AFTER", "CHANGEMAP_FAULT_MARKER", "CHANGEMAP_PLUGINS")

# Threaded: calls run forward passes on the actor's lanes; on a GPU one more prepares its batch
# meanwhile (predict_chunks). The pool sets max_concurrency.
RemotePredictor = ray.remote(TilePredictor)
MAX_CPU_LANES = 4  # forward passes at once on a CPU actor (each holds a batch's activations)


def cpu_lanes(cores: int) -> tuple[int, int]:
    """How a CPU actor given ``cores`` runs its model: forward passes at once, and torch threads for each.

    Several single- or few-threaded passes at once do more than one pass over all the cores
    (convolutions do not scale linearly with threads).
    """
    lanes = max(1, min(cores, MAX_CPU_LANES))
    return lanes, max(1, cores // lanes)


@dataclass(frozen=True)
class InferenceStats:
    """What the inference step did."""

    tiles: int
    seconds: float
    workers: int
    device: str
    cluster: str = ""  # the Ray cluster's GCS address the actors ran on
    statistics_passes: int = 0  # passes over the tiles that measured scene statistics


# Windows per forward pass when --batch-size is not given. On one H200 (fp16 autocast, 640² windows),
# TinyCD's forward passes ran at 55 / 76 / 85 / 64 / 66 MP/s in batches of 4 / 8 / 16 / 32 / 64, and
# ChangerEx MiT-b0's at 51 / 98 / 124 / 83 / 82: 16 is the fastest for both. On the CPU the lanes
# already share the cores, and a larger batch only holds more windows.
GPU_BATCH_SIZE = 16
CPU_BATCH_SIZE = 4


def default_batch_size(gpus: int) -> int:
    """Windows per forward pass when none is asked for: :data:`GPU_BATCH_SIZE` on GPUs, else :data:`CPU_BATCH_SIZE`."""
    return GPU_BATCH_SIZE if gpus else CPU_BATCH_SIZE


RELEASE_WAIT_S = 10.0  # how long a pool waits for CPUs that killed actors have yet to give back


def free_cpus(wanted: int = 0) -> int:
    """The cluster's free CPUs (at least 1), waiting up to :data:`RELEASE_WAIT_S` for ``wanted`` of them.

    It waits only while fewer than ``wanted`` are free but the cluster has that many: a pool closed
    just before (its actors killed) gives its CPUs back a moment later, and a run that follows one
    in the same process would otherwise be refused.
    """
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        cpus = max(1, int(ray.available_resources().get("CPU", 1)))
        if cpus >= wanted or wanted > ray.cluster_resources().get("CPU", 0) or time.monotonic() > deadline:
            return cpus
        time.sleep(0.1)


class PredictorPool:
    """Model actors placed on the Ray cluster: one per GPU (``num_gpus=1``), else CPU actors."""

    def __init__(self, model_name: str, weights: LoadedWeights | None, *, workers: int | None = None,
                 batch_size: int | None = None, model_args: dict | None = None, compile: bool = False) -> None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        batch_size = batch_size or default_batch_size(gpus)
        cpus = free_cpus(workers if workers and not gpus else 0)
        # Actors that cannot be placed would wait forever: refuse instead.
        if workers and workers > (gpus or cpus):
            kind = "GPU" if gpus else "free CPU"
            raise ChangemapError(
                f"--workers {workers} asks for more inference actors than the Ray cluster has {kind}s "
                f"({gpus or cpus}); use --workers {gpus or cpus} or fewer, or attach a bigger cluster"
            )
        if gpus:
            self.workers = workers or gpus
            options = {"num_gpus": 1, "num_cpus": 1}
            threads, lanes = None, 1
            self.device = "cuda"
        else:
            self.workers = workers or 1
            # An actor lives on one node: no more CPUs than the largest node has.
            largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=cpus)
            per_actor = max(1, min(cpus // self.workers, int(largest)))
            # Torch uses all the actor's cores, but one logical CPU of each (half of a 1-CPU node) is
            # left to the stream's decode and write tasks, which would otherwise never be placed.
            options = {"num_cpus": per_actor - 1 if per_actor > 1 else 0.5}
            lanes, threads = cpu_lanes(per_actor)
            self.device = "cpu"
        # A GPU actor takes one more call than it has lanes: the next batch is read and normalised
        # while the current one runs. A CPU actor's lanes already use its cores, so a batch waiting
        # there gains nothing and holds its windows: the process tree's peak was 55-65 MiB higher
        # with it (null model, 8192²), and TinyCD no faster.
        waiting = 1 if gpus else 0
        options["max_concurrency"] = lanes + waiting
        faults = {k: os.environ[k] for k in _FAULT_VARS if k in os.environ}
        if faults:  # tests inject faults into the actors' processes
            options["runtime_env"] = {"env_vars": faults}
        weights_ref = ray.put(weights)  # kept: a lost actor's replacement loads the same weights
        self._spawn = lambda: RemotePredictor.options(**options).remote(
            model_name, weights_ref, batch_size=batch_size, device=self.device, threads=threads, lanes=lanes,
            model_args=model_args, compile=compile)
        self.actors = [self._spawn() for _ in range(self.workers)]
        self._replaced: dict = {}  # actor id of a lost actor -> its replacement
        self.retried: list[str] = []  # keys of tiles predicted again after a lost actor
        described = ray.get([a.describe.remote() for a in self.actors])  # fail here if the model cannot load
        self.size_divisor = int(described[0]["size_divisor"])
        self.batch_size = batch_size
        self._lock = threading.Lock()
        # A slot per lane (and per waiting batch): calls the pool sends an actor at once.
        self.slots = (lanes + waiting) * len(self.actors)
        self.lanes = lanes * len(self.actors)  # forward passes the pool runs at once
        self._idle: queue.Queue = queue.Queue()
        for actor in self.actors * (lanes + waiting):
            self._idle.put(actor)

    def acquire(self, timeout: float = 0.0):
        """A free actor slot, or None when none frees up within ``timeout`` seconds."""
        try:
            actor = self._idle.get(timeout=timeout) if timeout else self._idle.get_nowait()
        except queue.Empty:
            return None
        with self._lock:
            while actor._actor_id in self._replaced:  # a slot of a lost actor now belongs to its replacement
                actor = self._replaced[actor._actor_id]
        return actor

    def replace(self, lost):
        """Start a replacement for an actor that died (once, however many of its calls report it)."""
        with self._lock:
            if lost._actor_id not in self._replaced:
                new = self._spawn()
                self.actors = [new if a._actor_id == lost._actor_id else a for a in self.actors]
                self._replaced[lost._actor_id] = new
            return self._replaced[lost._actor_id]

    def release(self, actor) -> None:
        """Give a slot back."""
        self._idle.put(actor)

    def warm_up(self, shape: tuple[int, ...], dtype: str) -> None:
        """Start a pass of the run's batch ``shape`` on each GPU actor (:meth:`TilePredictor.warm_up`); not waited for.

        CPU actors are not warmed: a pass there is seconds of real work, and nothing loads lazily.
        """
        if self.device == "cuda":
            for actor in self.actors:
                actor.warm_up.remote(shape, dtype)

    def phase_seconds(self) -> dict[str, float]:
        """Seconds the pool's actors have spent in each phase of prediction, summed over actors and lanes.

        An actor answers between calls, as its calls take its slots; a lost actor's seconds are gone
        (a figure, not worth failing a run for).
        """
        total: dict[str, float] = {}
        for ref in [a.phase_seconds.remote() for a in self.actors]:
            try:
                seconds = ray.get(ref)
            except RayActorError:
                continue
            for phase, s in seconds.items():
                total[phase] = total.get(phase, 0.0) + s
        return total

    def run(self, job: InferenceJob, tiles: Sequence[Tile],
            progress: Callable[[int, int], None] | None = None,
            on_level: Callable[[int, int], None] | None = None) -> InferenceStats:
        """Predict all tiles of one scene, reporting ``(done, total)`` as batches finish.

        With ``job.statistics == "scene"`` the scene statistics are measured first, one pass
        over the tiles per level, reporting ``(level, levels)`` to ``on_level`` as each starts.
        Safe to call from several threads at once (an archive runs pairs concurrently):
        actors are lent batch by batch from one idle queue, so scenes share them fairly.
        """
        start = time.perf_counter()
        passes = 0
        if job.statistics == "scene":
            # Actors get batches of one window shape, so no batch splits into several forward passes.
            tiles = by_clipped_shape(list(tiles), job.halo)
            levels = self._call_one("statistics_levels")
            done_levels = 0

            def measure(level: list[str], fixed: Stats) -> dict[str, Moments]:
                nonlocal done_levels
                done_levels += 1
                if on_level:
                    on_level(done_levels, len(levels))
                total: dict[str, Moments] = {}
                for part in self._map("measure", job, tiles, level, fixed):
                    add_moments(total, part)
                return total

            job = replace(job, scene_stats=measure_levels(levels, measure))
            passes = len(levels)
        self._map("predict", job, tiles, progress=progress)
        return InferenceStats(len(tiles), time.perf_counter() - start, self.workers, self.device,
                              ray.get_runtime_context().gcs_address, passes)

    def _call_one(self, method: str, *args):
        """Call ``method`` on one idle actor and return its result."""
        actor = self._idle.get()
        try:
            return ray.get(getattr(actor, method).remote(*args))
        finally:
            self._idle.put(actor)

    def _map(self, method: str, job: InferenceJob, tiles: Sequence[Tile], *args,
             progress: Callable[[int, int], None] | None = None) -> list:
        """Call ``actor.method(job, batch, *args)`` over the tiles in batches; results in completion order.

        ``progress`` gets ``(tiles done, total)``; the first error is raised once the
        batches already sent are back.
        """
        pending = [(list(tiles[i:i + self.batch_size]), 0) for i in range(0, len(tiles), self.batch_size)]
        pending.reverse()
        inflight: dict = {}
        results: list = []
        done, error = 0, None
        while (pending and error is None) or inflight:
            if pending and error is None:
                actor = self.acquire(timeout=0.05 if inflight else 5.0)
                if actor is not None:
                    batch, attempt = pending.pop()
                    inflight[getattr(actor, method).remote(job, batch, *args)] = (actor, batch, attempt)
            if not inflight:
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0 if pending and error is None else 1.0)
            for ref in ready:
                actor, batch, attempt = inflight.pop(ref)
                self.release(actor)
                try:
                    results.append(ray.get(ref))
                except RayActorError as exc:  # the actor was lost: its batch goes to the replacement
                    self.replace(actor)
                    if attempt + 1 >= ATTEMPTS:
                        error = error or lost_tiles_error(batch, exc)
                    else:
                        log.warning("a model actor was lost; retrying its %d tile(s) %s", len(batch),
                                    ", ".join(t.key for t in batch))
                        self.retried += [t.key for t in batch]
                        pending.append((batch, attempt + 1))
                    continue
                except Exception as exc:  # noqa: BLE001 - re-raised once the other batches are back
                    error = error or exc
                    continue
                done += len(batch)
                if progress:
                    progress(done, len(tiles))
        if error is not None:
            raise error
        return results

    def close(self) -> None:
        """Release the actors (and their GPU memory)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


# Pools lent to every run of this process that uses the same model, weights and
# batch size (an archive keeps its actors, and their loaded models, across pairs).
_shared: dict[str, PredictorPool] = {}
_shared_lock = threading.Lock()


def pool_key(model_name: str, weights: LoadedWeights | None, batch_size: int | None, workers: int | None,
             model_args: dict | None, compile: bool = False) -> str:
    """What makes two runs able to share model actors."""
    sha = weights.meta.sha256 if weights is not None else "random"
    return json.dumps([model_name, sha, batch_size, workers, model_args or {}, compile], sort_keys=True, default=str)


@contextmanager
def shared_pool(model_name: str, weights: LoadedWeights | None, *, workers: int | None = None,
                batch_size: int | None = None, model_args: dict | None = None, compile: bool = False
                ) -> Iterator[PredictorPool]:
    """Create a pool that :func:`borrow_pool` lends to runs in this process until the block ends."""
    key = pool_key(model_name, weights, batch_size, workers, model_args, compile)
    pool = PredictorPool(model_name, weights, workers=workers, batch_size=batch_size, model_args=model_args,
                         compile=compile)
    with _shared_lock:
        _shared[key] = pool
    try:
        yield pool
    finally:
        with _shared_lock:
            _shared.pop(key, None)
        pool.close()


@contextmanager
def borrow_pool(model_name: str, weights: LoadedWeights | None, *, workers: int | None = None,
                batch_size: int | None = None, model_args: dict | None = None, compile: bool = False
                ) -> Iterator[PredictorPool]:
    """The shared pool for this model if one is open, else a pool of our own, closed afterwards."""
    with _shared_lock:
        pool = _shared.get(pool_key(model_name, weights, batch_size, workers, model_args, compile))
    if pool is not None:
        yield pool
        return
    own = PredictorPool(model_name, weights, workers=workers, batch_size=batch_size, model_args=model_args,
                        compile=compile)
    try:
        yield own
    finally:
        own.close()

