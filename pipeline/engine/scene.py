"""One scene's map, end to end behind one call: the stores, the fit step, the stream, the map writer."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from pipeline import storage
from pipeline.config import ProductSettings, RunOptions
from pipeline.engine import fit, mapwriter, stream
from pipeline.engine.predictor import InferenceJob
from pipeline.engine.workdir import RunPaths
from pipeline.io import store
from pipeline.products import outputs

if TYPE_CHECKING:
    from pipeline.checks import RunPlan
    from pipeline.session import Session


@dataclass(frozen=True)
class SceneResult:
    """What making one scene's map did."""

    stream: stream.StreamStats
    sinks: list[Any]
    workers: int
    device: str
    cluster: str
    statistics_passes: int = 0
    threshold: float = 0.5  # the map's (the scene's own when Otsu's decided it)
    fit: dict[str, Any] | None = None  # what the fit step fitted and what it cost (scene-fitted models)


def _open_writer(writer, plan: RunPlan, run: RunOptions, sinks: list[Any], keep: stream.TileKeeper,
                 tags: dict[str, str] | None) -> None:
    """Start the scene's map in the map writer actor ``writer``."""
    ray.get(writer.open.remote(
        run.output, plan.alignment.grid, mapwriter.MapFormat.of(plan, run.compress),
        {**mapwriter.map_tags(plan), **(tags or {})}, sinks, storage.installed(), keep=keep, scene=keep.job))


def make_map(plan: RunPlan, paths: RunPaths, run: RunOptions, session: Session,
             products: ProductSettings = ProductSettings()) -> SceneResult:
    """Make the scene's change map at ``run.output`` with ``session``'s actors; the stores keep what a rerun reuses.

    The fit step first measures what the model needs of the whole scene (scene statistics, a
    scene-fitted model's fit), then one stream decodes, predicts and writes the map, feeding its
    statistics (and, with ``run.vector``, polygons made as ``products`` says). A threshold the
    scene decides (Otsu's) is taken from the histogram of the scores once they are all known.
    """
    g, spec = plan.alignment.grid, plan.spec
    store.create_input_store(paths.input_store, g, plan.alignment.before.count, plan.alignment.dtype, spec.tile)
    store.create_output_store(paths.output_store, g, spec.tile)
    scene = stream.SceneStream(plan.alignment, paths.input_store, paths.output_store, paths.run_dir, spec.tile,
                               plan.bands, storage.installed(), stream.segment_width_for(
                                   len(plan.bands), np.dtype(plan.alignment.dtype).itemsize, spec.tile))
    job = InferenceJob(paths.input_store, paths.output_store, spec.halo, plan.bands, storage.installed(),
                       spec.statistics, shape=(g.height, g.width, spec.tile))
    session.start_ray(stream.object_store_for(plan))
    pool = session.pool(plan)
    before = pool.phase_seconds()  # a session's pool may have served other scenes
    fitted = fit.fit_scene(scene, job, pool, kind=plan.kind)
    known = _with_threshold(fitted.job.fitted, plan.threshold, plan.threshold_method)  # the fit, with a known threshold
    # the map is written where its path is, for a local output: on this node
    node = None if storage.is_remote(run.output) else ray.get_runtime_context().get_node_id()
    with session.map_writer(node) as writer:
        _open_writer(writer, plan, run, outputs.make_sinks(plan, run, products), stream.TileKeeper(scene),
                     _fit_tags(known))
        try:
            stats = stream.run_stream(scene, pool, fitted.job, writer)
            stats.model_seconds = _since(before, pool.phase_seconds())
            if fitted.passes:  # the scene was decoded before its passes: the stream read it back
                stats = replace(stats, chunks_decoded=fitted.chunks_decoded, chunks_reused=fitted.chunks_reused)
            threshold, report = plan.threshold, known
            if threshold is None:  # the scene decides: Otsu's over its scores, then the map's second pass
                threshold = _scene_threshold(ray.get(writer.histogram.remote()), fitted.job.fitted)
                report = _with_threshold(fitted.job.fitted, threshold, "otsu over the scene's scores")
            sinks = ray.get(writer.close.remote(threshold if plan.threshold is None else None, _fit_tags(report)))
        except BaseException:
            ray.get(writer.abort.remote())  # nothing half-written at or beside the output
            raise
    store.mark_complete(paths.output_store)
    fit_info = {**_fit_summary(report), "seconds": round(fitted.seconds, 3)} if report else None
    return SceneResult(stats, sinks, pool.workers, pool.device, ray.get_runtime_context().gcs_address, fitted.passes,
                       threshold, fit_info)


def _scene_threshold(histogram: tuple[np.ndarray, np.ndarray], fit: dict | None) -> float:
    """Otsu's threshold over the histogram of a scene's scores (0.5 where no pixel has data).

    A scene-fitted model's is taken over its native change statistic (each bin's score mapped
    back to it): Otsu over the scores themselves, a nonlinear map of the statistic, was measured
    to be much worse (:mod:`models.fitting`).
    """
    from models.fitting import native_from_score, otsu_from_histogram

    counts, edges = histogram
    if not counts.any():  # no valid pixel: any threshold makes the same (empty) map
        return 0.5
    if fit is None:
        return float(otsu_from_histogram(counts, edges))
    centers = native_from_score(np.clip((edges[:-1] + edges[1:]) / 2, 0.0, 1.0 - 1e-9), fit["scale"])
    return float(otsu_from_histogram(counts, edges, centers=centers))


def _with_threshold(fit: dict | None, threshold: float | None, method: str) -> dict | None:
    """A scene's fit with the map's threshold (as it is when that is known; None: no fit, or not known yet)."""
    if fit is None or threshold is None:
        return fit if threshold is not None else None
    from models.fitting import FitReport

    report = FitReport.from_dict(fit)
    if threshold != report.threshold or method != "otsu":
        report = report.with_threshold(float(threshold), method)
    return report.to_dict()


def _fit_tags(report: dict | None) -> dict[str, str] | None:
    """The map's tag of its fit: what was fitted, so that a user can see it and apply it again."""
    return {"CHANGEMAP_FIT": json.dumps(report, sort_keys=True)} if report else None


def _fit_summary(report: dict) -> dict[str, Any]:
    """What a run's summary says about a scene-fitted model's fit."""
    keys = ("method", "n_samples", "iterations", "converged", "correlations", "dropped_bands", "scale", "threshold",
            "threshold_native", "threshold_method", "notes")
    return {k: report[k] for k in keys if k in report}


def _since(before: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    """Phase seconds added since ``before`` (a lost actor takes its seconds with it: never below zero)."""
    return {k: max(0.0, v - before.get(k, 0.0)) for k, v in now.items()}
