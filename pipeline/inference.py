"""Inference: model actors (one per GPU, CPU fallback) predicting tiles from the zarr store.

:class:`TilePredictor` is a plain class (tests call it directly); Ray runs it as an
actor that loads the model once and is fed batches of tiles. Each actor reads its
halo windows straight from ``input.zarr`` and writes the core of each prediction
into that tile's own chunk of ``output.zarr``, so no two writers share a chunk and a
retried tile just rewrites the same chunk.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import ray
import torch
from ray.util import ActorPool

import models
from models import LoadedWeights, WeightsMeta
from pipeline.errors import ChangemapError
from pipeline.io import store
from pipeline.tiling import Tile, Window, halo_window, window_size


@dataclass(frozen=True)
class InferenceJob:
    """What a predictor needs to know about one scene."""

    input_store: str
    output_store: str
    tile: int
    halo: int
    bands: tuple[int, ...]  # 1-based


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
    """Read ``(2, C, S, S)`` from the image array, reflect-padding what lies outside the scene."""
    raw = image[:, :, w.y0:w.y1, w.x0:w.x1][:, band_index]
    pads = ((0, 0), (0, 0), (w.pad_top, w.pad_bottom), (w.pad_left, w.pad_right))
    if not any(p for pair in pads for p in pair):
        return raw
    # numpy reflects repeatedly for pads wider than the data; a 1-pixel edge cannot reflect.
    mode = "reflect" if min(raw.shape[-2:]) > 1 else "edge"
    return np.pad(raw, pads, mode=mode)


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

    def describe(self) -> dict[str, str]:
        """Where this predictor runs (for logs and tests)."""
        return {"device": str(self.device), "model": self.meta.model, "threads": str(torch.get_num_threads())}

    def _arrays(self, job: InferenceJob):
        if job.output_store not in self._stores:
            self._stores[job.output_store] = (
                store.open_array(job.input_store, store.IMAGE),
                store.open_array(job.input_store, store.VALID),
                store.open_array(job.output_store, store.PROBABILITY, mode="r+"),
            )
        return self._stores[job.output_store]

    def _batches(self, job: InferenceJob, tiles: Sequence[Tile]):
        """Yield ``(tiles, raw windows (B, 2, C, S, S))`` for the tiles that have valid data."""
        image, valid, _ = self._arrays(job)
        height, width = valid.shape
        size = window_size(job.tile, job.halo, self.model.size_divisor)
        band_index = np.asarray(job.bands) - 1
        # Tiles without any valid pixel stay NaN (nodata) and cost nothing.
        todo = [t for t in tiles if valid[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width].any()]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            yield batch, np.stack([read_window(image, halo_window(t, job.halo, size, height, width), band_index)
                                   for t in batch])

    def predict(self, job: InferenceJob, tiles: Sequence[Tile]) -> int:
        """Predict ``tiles`` and write their cores to the output store; returns how many were done."""
        _, _, out = self._arrays(job)
        for batch, x in self._batches(job, tiles):
            prob = self._forward(x)
            for t, p in zip(batch, prob):
                out[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] = p[job.halo:job.halo + t.height,
                                                                    job.halo:job.halo + t.width]
        return len(tiles)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Normalise a ``(B, 2, C, S, S)`` raw batch and return change probabilities ``(B, S, S)``."""
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True).float()
        t = (t * self.meta.scale - self._mean) / self._std
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            logits = self.model(t)
        return self.model.change_probability(logits.float()).cpu().numpy()


RemotePredictor = ray.remote(TilePredictor)


@dataclass(frozen=True)
class InferenceStats:
    """What the inference step did."""

    tiles: int
    seconds: float
    workers: int
    device: str


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

    def run(self, job: InferenceJob, tiles: Sequence[Tile],
            progress: Callable[[int, int], None] | None = None) -> InferenceStats:
        """Predict all tiles of one scene, reporting ``(done, total)`` as batches finish."""
        start = time.perf_counter()
        batches = [list(tiles[i:i + self.batch_size]) for i in range(0, len(tiles), self.batch_size)]
        pool = ActorPool(self.actors)
        done = 0
        for n in pool.map_unordered(lambda actor, batch: actor.predict.remote(job, batch), batches):
            done += n
            if progress:
                progress(done, len(tiles))
        return InferenceStats(len(tiles), time.perf_counter() - start, self.workers, self.device)

    def close(self) -> None:
        """Release the actors (and their GPU memory)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
