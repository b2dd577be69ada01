"""The fit step: what a map needs measured over the whole scene, once, before its stream.

Deep models with ``--statistics scene`` measure the scene statistics of their window-dependent
layers (:mod:`models.statistics`): the scene is decoded into ``input.zarr`` first, then each
level is one pass over the tiles on the model actors, in parallel through the one
:class:`~pipeline.engine.scheduler.Scheduler`. The stream then predicts with the statistics
fixed, so the map equals one forward pass over the whole scene.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from models.statistics import Moments, Stats, add_moments, measure_levels
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


def fit_scene(scene: SceneStream, job: InferenceJob, pool: PredictorPool, *, attempts: int = TUNING.attempts
              ) -> Fitted:
    """Measure what ``job`` needs of the whole scene before its stream; the job to stream with."""
    if job.statistics != "scene":
        return Fitted(job)
    decoded, reused = ingest_stream(scene)
    bar = Progress("statistics", unit="passes")
    g = scene.alignment.grid
    stats, passes = measure_statistics(pool, job, make_tiles(g.height, g.width, scene.tile), attempts=attempts,
                                       on_level=lambda k, n: bar(k - 1, n))
    bar(passes, passes)
    return Fitted(replace(job, scene_stats=stats), passes, decoded, reused)


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
