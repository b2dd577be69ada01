"""One scene's map, end to end behind one call: the stores, the fit step, the stream, the map writer."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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


def _writer(plan: RunPlan, run: RunOptions, sinks: list[Any], keep: stream.TileKeeper):
    """The map writer actor: on this node for a local output (the file is written where the path is)."""
    options: dict[str, Any] = {"num_cpus": 0}
    if not storage.is_remote(run.output):
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                        soft=False)
    return ray.remote(mapwriter.MapWriter).options(**options).remote(
        run.output, plan.alignment.grid, mapwriter.MapFormat.of(plan, run.compress), mapwriter.map_tags(plan), sinks,
        storage.installed(), keep=keep)


def make_map(plan: RunPlan, paths: RunPaths, run: RunOptions, session: Session,
             products: ProductSettings = ProductSettings()) -> SceneResult:
    """Make the scene's change map at ``run.output`` with ``session``'s actors; the stores keep what a rerun reuses.

    The map feeds its statistics (and, with ``run.vector``, polygons made as ``products`` says) as it is written.

    The fit step first measures what the model needs of the whole scene (scene statistics), then
    one stream decodes, predicts and writes the map.
    """
    g, spec = plan.alignment.grid, plan.spec
    store.create_input_store(paths.input_store, g, plan.alignment.before.count, plan.alignment.dtype, spec.tile)
    store.create_output_store(paths.output_store, g, spec.tile)
    scene = stream.SceneStream(plan.alignment, paths.input_store, paths.output_store, paths.run_dir, spec.tile,
                               plan.bands, storage.installed())
    job = InferenceJob(paths.input_store, paths.output_store, spec.halo, plan.bands, storage.installed(),
                       spec.statistics, shape=(g.height, g.width, spec.tile))
    session.start_ray(stream.object_store_for(plan))
    pool = session.pool(plan)
    writer = _writer(plan, run, outputs.make_sinks(plan, run, products), stream.TileKeeper(scene))
    try:
        before = pool.phase_seconds()  # a session's pool may have served other scenes
        fitted = fit.fit_scene(scene, job, pool)
        stats = stream.run_stream(scene, pool, fitted.job, writer)
        stats.model_seconds = _since(before, pool.phase_seconds())
        if fitted.passes:  # the scene was decoded before its passes: the stream read it back
            stats = replace(stats, chunks_decoded=fitted.chunks_decoded, chunks_reused=fitted.chunks_reused)
        sinks = ray.get(writer.close.remote())
    except BaseException:
        ray.get(writer.abort.remote())  # nothing half-written at or beside the output
        raise
    store.mark_complete(paths.output_store)
    return SceneResult(stats, sinks, pool.workers, pool.device, ray.get_runtime_context().gcs_address, fitted.passes)


def _since(before: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    """Phase seconds added since ``before`` (a lost actor takes its seconds with it: never below zero)."""
    return {k: max(0.0, v - before.get(k, 0.0)) for k, v in now.items()}
