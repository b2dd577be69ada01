"""The fit step: what a map needs measured over the whole scene, once, before its stream.

Deep models with ``--statistics scene`` measure the scene statistics of their window-dependent
layers (:mod:`models.statistics`): the scene is decoded into ``input.zarr`` first, then each
level is one pass over the tiles on the model actors, in parallel through the one
:class:`~pipeline.engine.scheduler.Scheduler`. The stream then predicts with the statistics
fixed, so the map equals one forward pass over the whole scene.

Scene-fitted models (CVA, IR-MAD: :mod:`models.fitting`) are fitted to a sample of the scene's
valid pixels (:func:`sample_windows`: reproducible, stratified over the scene, about a
megapixel whatever its size), read by Ray tasks in parallel and fitted on a model actor; the
stream then applies the fit on the actors like any model.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import ray

from models.statistics import Moments, Stats, add_moments, measure_levels
from pipeline.engine import heap
from pipeline.engine.pool import PredictorPool
from pipeline.engine.predictor import InferenceJob
from pipeline.engine.scheduler import TUNING, Batch, Scheduler
from pipeline.engine.stream import SceneStream, ingest_stream
from pipeline.progress import Progress
from pipeline.tiling import Tile, by_clipped_shape, make_tiles


@dataclass(frozen=True)
class Fitted:
    """What the fit step found: the job to stream with, and what it cost."""

    job: InferenceJob
    passes: int = 0  # passes over the scene's tiles on the model actors
    chunks_decoded: int = 0  # decoded into input.zarr before the passes
    chunks_reused: int = 0
    seconds: float = 0.0
    samples: int = 0  # pixels a scene-fitted model was fitted on


def fit_scene(scene: SceneStream, job: InferenceJob, pool: PredictorPool, *, kind: str = "deep",
              attempts: int = TUNING.attempts) -> Fitted:
    """Measure what ``job`` needs of the whole scene before its stream; the job to stream with."""
    begin = time.perf_counter()
    if kind == "scene-fitted":
        report = fit_model(scene, pool)
        return Fitted(replace(job, fitted=report), seconds=time.perf_counter() - begin,
                      samples=int(report["n_samples"]))
    if job.statistics != "scene":
        return Fitted(job)
    decoded, reused = ingest_stream(scene)
    bar = Progress("statistics", unit="passes")
    g = scene.alignment.grid
    stats, passes = measure_statistics(pool, job, make_tiles(g.height, g.width, scene.tile), attempts=attempts,
                                       on_level=lambda k, n: bar(k - 1, n))
    bar(passes, passes)
    return Fitted(replace(job, scene_stats=stats), passes, decoded, reused, time.perf_counter() - begin)


def measure_statistics(pool: PredictorPool, job: InferenceJob, tiles: list[Tile], *, attempts: int = TUNING.attempts,
                       on_level: Callable[[int, int], None] | None = None) -> tuple[Stats, int]:
    """The scene statistics of ``job``'s stores, one pass over ``tiles`` per level; and the number of passes.

    Each pass sends batches of tiles whose clipped windows have one shape (so no batch splits into
    several forward passes) to the actors, which sum the moments of their valid pixels.
    """
    tiles = by_clipped_shape(list(tiles), job.halo)
    batches = [Batch(tuple(tiles[i:i + pool.batch_size]), n) for n, i in enumerate(range(0, len(tiles), pool.batch_size))]
    levels = pool.call_one("statistics_levels")
    done = 0

    def measure(level: list[str], fixed: Stats) -> dict[str, Moments]:
        nonlocal done
        done += 1
        if on_level:
            on_level(done, len(levels))
        scheduler = Scheduler(pool, lambda actor, b: (actor.measure.remote(job, list(b.tiles), level, fixed), None, None),
                              attempts=attempts)
        total: dict[str, Moments] = {}
        for part in scheduler.map(batches):
            add_moments(total, part)
        return total

    return measure_levels(levels, measure), len(levels)


SAMPLE_PIXELS = 1 << 20  # a scene-fitted model's sample: about a megapixel of valid pixels
SAMPLE_SIDE = 256  # the sample's windows: aligned to 256- and 512-pixel blocks, so each decodes one block
SAMPLE_SEED = 0


def sample_windows(height: int, width: int, *, target: int = SAMPLE_PIXELS, side: int = SAMPLE_SIDE,
                   seed: int = SAMPLE_SEED) -> list[tuple[int, int, int, int]]:
    """The windows ``(y0, y1, x0, x1)`` a scene-fitted model's sample is read from: reproducible and stratified.

    A scene of at most ``4 x target`` pixels is read whole. A larger one is cut into a ``k x k``
    grid of strata holding twice the target's windows of ``side`` pixels (nodata and clouds take
    some), and one window is drawn in each stratum, at a seeded random place aligned to ``side``:
    the sample covers the whole scene, and reads about ``2 x target`` pixels whatever its size.
    """
    if height * width <= 4 * target:
        return [(y, min(y + side * 4, height), x, min(x + side * 4, width))
                for y in range(0, height, side * 4) for x in range(0, width, side * 4)]
    rng = np.random.default_rng(seed)
    k = math.ceil(math.sqrt(2 * target / side**2))
    out = []
    def starts(i: int, n: int) -> tuple[int, int]:
        """The ``side``-aligned window starts inside stratum ``i`` of ``k`` along a side of ``n`` pixels."""
        lo, hi = -(-i * n // k // side), ((i + 1) * n // k - side) // side
        return lo, max(lo, hi)

    for i in range(k):
        for j in range(k):
            (ya, yb), (xa, xb) = starts(i, height), starts(j, width)
            y0, x0 = int(rng.integers(ya, yb + 1)) * side, int(rng.integers(xa, xb + 1)) * side
            out.append((y0, min(y0 + side, height), x0, min(x0 + side, width)))
    return out


def sample_pixels(scene: SceneStream, windows: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The model's bands at the pixels of ``windows`` where both dates have data: ``(before (n, C), after (n, C))``."""
    from pipeline import storage
    from pipeline.io.read import AlignedPairReader

    band = np.asarray(scene.bands) - 1
    before, after = [], []
    with storage.using(scene.storage), AlignedPairReader(scene.alignment) as reader:
        for y0, y1, x0, x1 in windows:
            image, valid = reader.read(y0, y1, x0, x1)
            before.append(image[0][band][:, valid].T)
            after.append(image[1][band][:, valid].T)
    return np.concatenate(before), np.concatenate(after)


_sample = ray.remote(num_cpus=TUNING.task_cpus, scheduling_strategy="SPREAD")(heap.trimmed(sample_pixels))


def fit_model(scene: SceneStream, pool: PredictorPool, *, target: int = SAMPLE_PIXELS) -> dict:
    """Fit the pool's scene-fitted model to a sample of ``scene``; the fit (``FitReport.to_dict()``).

    Ray tasks read the sample's windows in parallel (a row of strata each); a model actor
    draws at most ``target`` of their pixels (seeded) and fits the model to them.
    """
    g = scene.alignment.grid
    windows = sample_windows(g.height, g.width, target=target)
    per_task = max(1, math.ceil(len(windows) / 8))
    parts = [_sample.remote(scene, windows[i:i + per_task]) for i in range(0, len(windows), per_task)]
    return pool.call_one("fit_scene", target, *parts)
