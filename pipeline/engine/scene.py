"""One scene's map, end to end behind one call: the stores, Ray, the model actors, the stream, the writer."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline import storage
from pipeline.checks import Preflight
from pipeline.config import RunOptions
from pipeline.engine import mapwriter, ray_runtime, stream
from pipeline.engine.inference import InferenceJob, borrow_pool, shared_pool
from pipeline.engine.workdir import RunPaths
from pipeline.io import store
from pipeline.products import outputs
from pipeline.progress import Progress
from pipeline.tiling import make_tiles

RemoteMapWriter = ray.remote(num_cpus=0)(mapwriter.MapWriter)


@dataclass(frozen=True)
class SceneResult:
    """What making one scene's map did."""

    stream: stream.StreamStats
    sinks: list[Any]
    workers: int
    device: str
    cluster: str
    statistics_passes: int = 0


def _writer(pre: Preflight, run: RunOptions, sinks: list[Any]):
    """The map writer actor: on this node for a local output (the file is written where the path is)."""
    options: dict[str, Any] = {}
    if not storage.is_remote(run.output):
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                        soft=False)
    return RemoteMapWriter.options(**options).remote(run.output, pre.alignment.grid, mapwriter.MapFormat.of(pre, run.compress),
                                                     mapwriter.map_tags(pre), sinks,
                                                     storage.installed())


def object_store_for(pre: Preflight) -> int:
    """The object store a local Ray runtime needs for this scene's stream (its bands, sample size and tile)."""
    return stream.object_store_bytes(len(pre.bands), np.dtype(pre.alignment.dtype).itemsize, pre.spec.tile)


@contextmanager
def warm_start(pre: Preflight, run: RunOptions) -> Iterator[None]:
    """The run's model actors started and the stream's workers warmed, ahead of the flow.

    :func:`pipeline.engine.ray_runtime.services` enters this while Prefect's API starts; the map
    borrows the actors (:func:`pipeline.engine.inference.borrow_pool`) instead of starting its own.
    The stores' modules are imported meanwhile, in a thread: this one waits for the actors.
    """
    imports = threading.Thread(target=store.preload, name="store-imports", daemon=True)
    imports.start()
    with shared_pool(pre.meta.model, pre.loaded, workers=run.workers, batch_size=run.batch_size,
                     model_args=dict(pre.meta.model_args), compile=run.compile) as pool:
        stream.warm_workers(pool.lanes)
        imports.join()
        yield


def make_map(pre: Preflight, paths: RunPaths, run: RunOptions) -> SceneResult:
    """Stream the scene's tiles into its change map at ``run.output``; the stores keep what a rerun reuses.

    Window statistics stream decode, model and map together. Scene statistics first decode the
    whole scene into ``input.zarr`` (its passes need it), then measure and predict on the actor
    pool, then write the map from the stores.
    """
    g, spec = pre.alignment.grid, pre.spec
    store.create_input_store(paths.input_store, g, pre.alignment.before.count, pre.alignment.dtype, spec.tile)
    store.create_output_store(paths.output_store, g, spec.tile)
    job = stream.SceneStream(pre.alignment, paths.input_store, paths.output_store, paths.run_dir, spec.tile, pre.bands,
                             storage.installed())
    infer_job = InferenceJob(paths.input_store, paths.output_store, spec.halo, pre.bands, storage.installed(),
                             spec.statistics, shape=(g.height, g.width, spec.tile))
    started = ray_runtime.ensure_ray(run.ray_address, object_store_memory=object_store_for(pre))
    try:
        with borrow_pool(pre.meta.model, pre.loaded, workers=run.workers, batch_size=run.batch_size,
                         model_args=dict(pre.meta.model_args), compile=run.compile) as pool:
            writer = _writer(pre, run, outputs.make_sinks(pre, run))
            try:
                before = pool.phase_seconds()  # a shared pool may have served other scenes
                stats, passes = _stream(job, infer_job, pool, writer, spec.statistics)
                stats.model_seconds = _since(before, pool.phase_seconds())
                sinks = ray.get(writer.close.remote())
            except BaseException:
                ray.get(writer.abort.remote())  # nothing half-written at or beside the output
                raise
            workers, device = pool.workers, pool.device
        store.mark_complete(paths.output_store)
        return SceneResult(stats, sinks, workers, device, ray.get_runtime_context().gcs_address, passes)
    finally:
        ray_runtime.shutdown_if_started(started)


def _stream(job: stream.SceneStream, infer_job: InferenceJob, pool, writer, statistics: str
            ) -> tuple[stream.StreamStats, int]:
    """The tiles through the model into the writer; returns the stream's figures and the statistics passes."""
    if statistics == "scene":
        decoded, reused = stream.ingest_stream(job)
        bar = Progress("infer")
        g = job.alignment.grid
        tiles = make_tiles(g.height, g.width, job.tile)
        inferred = pool.run(infer_job, tiles, progress=bar,
                            on_level=lambda k, n: bar.note(f"statistics pass {k}/{n} over the tiles"))
        ray.get(stream.feed_from_stores(job, writer, tiles))
        return stream.StreamStats(tiles=len(tiles), predicted=len(tiles), chunks_decoded=decoded,
                                  chunks_reused=reused, retried=list(pool.retried)), inferred.statistics_passes
    return stream.run_stream(job, pool, infer_job, writer), 0


def _since(before: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    """Phase seconds added since ``before`` (a lost actor takes its seconds with it: never below zero)."""
    return {k: max(0.0, v - before.get(k, 0.0)) for k, v in now.items()}
