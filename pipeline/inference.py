"""Inference: model actors (one per GPU, CPU fallback) predicting tiles from the zarr store.

:class:`TilePredictor` is a plain class (tests call it directly); Ray runs it as an
actor that loads the model once and is fed batches of tiles. Each actor reads its
halo windows straight from ``input.zarr`` and writes the core of each prediction
into that tile's own chunk of ``output.zarr``, so no two writers share a chunk and a
retried tile just rewrites the same chunk.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import ray
import torch

import models
from models import LoadedWeights, WeightsMeta
from models.statistics import Moments, SceneStatistics, Stats, add_moments, measure_levels
from pipeline import storage
from pipeline.errors import ChangemapError
from pipeline.io import store
from pipeline.learn.predict import forward_probability
from pipeline.tiling import (Tile, Window, batch_by_shape, by_clipped_shape, core_offset, pad_window, padded_shape,
                             statistics_weights, tile_window)


@dataclass(frozen=True)
class InferenceJob:
    """What a predictor needs to know about one scene."""

    input_store: str
    output_store: str
    tile: int
    halo: int
    bands: tuple[int, ...]  # 1-based
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)  # for stores in object storage
    statistics: str = "window"  # "scene": windows clipped at the scene edge, scene statistics (models.statistics)
    scene_stats: Stats | None = None  # the measured scene statistics, set for the prediction pass


def select_bands(meta: WeightsMeta, raster_bands: int, override: Sequence[int] | None) -> tuple[int, ...]:
    """The 1-based bands fed to the model, checked against the raster and the model."""
    bands = tuple(override) if override else (meta.bands or tuple(range(1, meta.in_channels + 1)))
    if len(bands) != meta.in_channels:
        raise ChangemapError(
            f"model {meta.model} takes {meta.in_channels} bands but --bands selects {len(bands)} ({bands}); "
            f"select exactly {meta.in_channels}"
        )
    if max(bands) > raster_bands:
        raise ChangemapError(
            f"model {meta.model} reads bands {bands} but the rasters have only {raster_bands} band(s); "
            "pass rasters with those bands or choose others with --bands"
        )
    return bands


def read_window(image, w: Window, band_index: np.ndarray) -> np.ndarray:
    """Read ``(2, C, h, w)`` from the image array, reflect-padding what the window adds outside it."""
    return pad_window(image[:, :, w.y0:w.y1, w.x0:w.x1][:, band_index], w)


class TilePredictor:
    """Loads a model once and predicts batches of tiles of one or more scenes."""

    def __init__(self, model_name: str, weights: LoadedWeights | None, *, batch_size: int = 4,
                 device: str | None = None, threads: int | None = None,
                 model_args: dict | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.meta = models.build_model(model_name, weights, model_args)
        self.model.to(self.device)
        self.batch_size = batch_size
        self._stores: dict[str, tuple] = {}
        n = self.meta.in_channels
        self._mean = torch.tensor(self.meta.mean, device=self.device).view(1, 1, n, 1, 1)
        self._std = torch.tensor(self.meta.std, device=self.device).view(1, 1, n, 1, 1)
        self._scene: SceneStatistics | None = None

    def describe(self) -> dict[str, str]:
        """Where this predictor runs (for logs and tests)."""
        return {"device": str(self.device), "model": self.meta.model, "threads": str(torch.get_num_threads())}

    def _arrays(self, job: InferenceJob):
        if job.output_store not in self._stores:
            storage.install(job.storage)  # this actor's process reads/writes the stores with them
            if len(self._stores) > 8:  # an actor serving an archive keeps a few scenes' handles only
                self._stores.clear()
            self._stores[job.output_store] = (
                store.open_array(job.input_store, store.IMAGE),
                store.open_array(job.input_store, store.VALID),
                store.open_array(job.output_store, store.PROBABILITY, mode="r+"),
            )
        return self._stores[job.output_store]

    def _batches(self, job: InferenceJob, tiles: Sequence[Tile]):
        """Yield ``(tiles, windows, raw windows (B, 2, C, h, w))`` for the tiles that have valid data.

        Batches hold windows of one shape (clipped windows are smaller at the scene edge).
        """
        image, valid, _ = self._arrays(job)
        height, width = valid.shape
        band_index = np.asarray(job.bands) - 1
        # Tiles without any valid pixel stay NaN (nodata) and cost nothing.
        todo = [t for t in tiles if valid[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width].any()]
        windows = {t: tile_window(t, job.tile, job.halo, self.model.size_divisor, height, width,
                                  clipped=job.statistics == "scene") for t in todo}
        for batch in batch_by_shape(todo, lambda t: padded_shape(windows[t]), self.batch_size):
            wins = [windows[t] for t in batch]
            yield batch, wins, np.stack([read_window(image, w, band_index) for w in wins])

    def predict(self, job: InferenceJob, tiles: Sequence[Tile]) -> int:
        """Predict ``tiles`` and write their cores to the output store; returns how many were done."""
        _, _, out = self._arrays(job)
        fixed = self.scene_statistics().fixed(job.scene_stats) if job.scene_stats is not None else nullcontext()
        with fixed:
            for batch, wins, x in self._batches(job, tiles):
                prob = self._forward(x)
                for t, w, p in zip(batch, wins, prob):
                    top, left = core_offset(t, w)
                    out[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] = p[top:top + t.height, left:left + t.width]
        return len(tiles)

    def scene_statistics(self) -> SceneStatistics:
        """The model's window-dependent layers (raises :class:`StatisticsUnsupported` for attention models)."""
        if self._scene is None:
            self._scene = SceneStatistics(self.model)
        return self._scene

    def statistics_levels(self) -> list[list[str]]:
        """The levels in which the scene statistics are measured (one pass over the tiles each)."""
        return self.scene_statistics().levels(self.meta.in_channels, self.model.size_divisor)

    def measure(self, job: InferenceJob, tiles: Sequence[Tile], level: list[str], fixed: Stats) -> dict[str, Moments]:
        """Summed moments of the ``level`` layer calls over the valid pixels of ``tiles``' cores."""
        _, valid, _ = self._arrays(job)
        total: dict[str, Moments] = {}
        for batch, wins, x in self._batches(job, tiles):
            weights = np.stack([statistics_weights(t, w, pad_window(valid[w.y0:w.y1, w.x0:w.x1], w))
                                for t, w in zip(batch, wins)])
            add_moments(total, self.scene_statistics().collect(self._input(x), torch.from_numpy(weights), level, fixed))
        return total

    def _input(self, x: np.ndarray) -> torch.Tensor:
        """A ``(B, 2, C, h, w)`` raw batch, normalised on the model's device."""
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True).float()
        return (t * self.meta.scale - self._mean) / self._std

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Change probabilities ``(B, h, w)`` of a ``(B, 2, C, h, w)`` raw batch."""
        return forward_probability(self.model, self._input(x))


RemotePredictor = ray.remote(TilePredictor)


@dataclass(frozen=True)
class InferenceStats:
    """What the inference step did."""

    tiles: int
    seconds: float
    workers: int
    device: str
    cluster: str = ""  # the Ray cluster's GCS address the actors ran on
    statistics_passes: int = 0  # passes over the tiles that measured scene statistics


class PredictorPool:
    """Model actors placed on the Ray cluster: one per GPU (``num_gpus=1``), else CPU actors."""

    def __init__(self, model_name: str, weights: LoadedWeights | None, *, workers: int | None = None,
                 batch_size: int = 4, model_args: dict | None = None) -> None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = max(1, int(ray.available_resources().get("CPU", 1)))
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
            threads = None
            self.device = "cuda"
        else:
            self.workers = workers or 1
            per_actor = max(1, cpus // self.workers)
            options = {"num_cpus": per_actor}
            threads = per_actor
            self.device = "cpu"
        weights_ref = ray.put(weights)
        self.actors = [
            RemotePredictor.options(**options).remote(model_name, weights_ref, batch_size=batch_size,
                                                      device=self.device, threads=threads, model_args=model_args)
            for _ in range(self.workers)
        ]
        ray.get([a.describe.remote() for a in self.actors])  # fail here if the model cannot load
        self.batch_size = batch_size
        self.tiles_done = 0
        self._lock = threading.Lock()
        self._idle: queue.Queue = queue.Queue()
        for actor in self.actors:
            self._idle.put(actor)

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
        done = sum(self._map("predict", job, tiles, progress=progress))
        with self._lock:
            self.tiles_done += done
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
        pending = [list(tiles[i:i + self.batch_size]) for i in range(0, len(tiles), self.batch_size)]
        pending.reverse()
        inflight: dict = {}
        results: list = []
        done, error = 0, None
        while (pending and error is None) or inflight:
            if pending and error is None:
                try:
                    actor = self._idle.get(timeout=0.05 if inflight else 5.0)
                except queue.Empty:
                    actor = None
                if actor is not None:
                    batch = pending.pop()
                    inflight[getattr(actor, method).remote(job, batch, *args)] = (actor, len(batch))
            if not inflight:
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0 if pending and error is None else 1.0)
            for ref in ready:
                actor, n = inflight.pop(ref)
                self._idle.put(actor)
                try:
                    results.append(ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - re-raised once the other batches are back
                    error = error or exc
                    continue
                done += n
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


def pool_key(model_name: str, weights: LoadedWeights | None, batch_size: int, workers: int | None,
             model_args: dict | None) -> str:
    """What makes two runs able to share model actors."""
    sha = weights.meta.sha256 if weights is not None else "random"
    return json.dumps([model_name, sha, batch_size, workers, model_args or {}], sort_keys=True, default=str)


@contextmanager
def shared_pool(model_name: str, weights: LoadedWeights | None, *, workers: int | None = None,
                batch_size: int = 4, model_args: dict | None = None) -> Iterator[PredictorPool]:
    """Create a pool that :func:`borrow_pool` lends to runs in this process until the block ends."""
    key = pool_key(model_name, weights, batch_size, workers, model_args)
    pool = PredictorPool(model_name, weights, workers=workers, batch_size=batch_size, model_args=model_args)
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
                batch_size: int = 4, model_args: dict | None = None) -> Iterator[PredictorPool]:
    """The shared pool for this model if one is open, else a pool of our own, closed afterwards."""
    with _shared_lock:
        pool = _shared.get(pool_key(model_name, weights, batch_size, workers, model_args))
    if pool is not None:
        yield pool
        return
    own = PredictorPool(model_name, weights, workers=workers, batch_size=batch_size, model_args=model_args)
    try:
        yield own
    finally:
        own.close()
