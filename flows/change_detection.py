"""Prefect flow ``detect_changes``: one bitemporal pair in, one change-map COG out.

The flow only orders the steps; each task is a thin wrapper with retries around one plain
function of :mod:`pipeline`. User errors (bad inputs, unknown model, wrong weights) are not
retried.
"""
from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import artifacts
from models import UnknownModelError, WeightsError
from pipeline import checks, ingest, outputs, storage, workdir
from pipeline.checks import Preflight
from pipeline.config import MapSpec, RunOptions
from pipeline.errors import ChangemapError
from pipeline.inference import InferenceStats, run_inference
from pipeline.summary import RunSummary

_USER_ERRORS = (ChangemapError, WeightsError, UnknownModelError)


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry infrastructure failures, not errors in the user's inputs."""
    try:
        state.result()
    except _USER_ERRORS:
        return False
    except Exception:
        return True
    return True


_task = dict(cache_policy=NO_CACHE, retry_condition_fn=_retry_unless_user_error)


@task(name="check", retries=2, retry_delay_seconds=2, **_task)
def check_task(spec: MapSpec, run: RunOptions) -> Preflight:
    return checks.preflight(spec, run)


@task(name="ingest", retries=2, retry_delay_seconds=2, **_task)
def ingest_task(pre: Preflight, paths: workdir.RunPaths) -> None:
    ingest.ingest_pair(pre.alignment, paths.input_store, pre.spec.tile)


@task(name="infer", retries=1, retry_delay_seconds=5, **_task)
def infer_task(pre: Preflight, paths: workdir.RunPaths, run: RunOptions) -> InferenceStats:
    return run_inference(paths.input_store, paths.output_store, model=pre.meta.model, loaded=pre.loaded,
                         model_args=dict(pre.meta.model_args), halo=pre.spec.halo, bands=pre.bands,
                         statistics=pre.spec.statistics, workers=run.workers, batch_size=run.batch_size,
                         ray_address=run.ray_address)


@task(name="export", retries=2, retry_delay_seconds=2, **_task)
def export_task(pre: Preflight, paths: workdir.RunPaths, run: RunOptions) -> dict:
    made = outputs.write_map_and_outputs(paths, pre, run)
    artifacts.publish(made, pre)
    return made


@flow(name="detect_changes", log_prints=False)
def detect_changes(spec: MapSpec, run: RunOptions) -> RunSummary:
    """Detect changes between ``spec.before`` and ``spec.after`` and write a change-map COG on BEFORE's grid.

    Paths may be fsspec URLs; ``run.storage_options`` (fsspec options as JSON, also mirrored
    into GDAL's settings) is a secret: Prefect stores it masked, and it is used for this run
    only. Without it the process's options and the environment apply.
    """
    start = time.perf_counter()
    with storage.using(storage.StorageOptions.from_json(run.storage_json()) if run.storage_options else None):
        pre = check_task(spec, run)
        if pre.alignment.warp_after:
            get_run_logger().info("AFTER %s is warped onto BEFORE's grid (bilinear)", storage.redact_url(spec.after))
        paths = workdir.paths_for(pre.spec, run)
        succeeded = False
        try:
            ingest_task(pre, paths)
            stats = infer_task(pre, paths, run)
            made = export_task(pre, paths, run)
            succeeded = True
        finally:
            kept = workdir.cleanup(paths, run, succeeded)
            if kept:
                get_run_logger().info("intermediate stores kept in %s", storage.redact_url(kept))
    seconds = time.perf_counter() - start
    mp = pre.alignment.grid.megapixels
    return RunSummary(output=run.output, tiles=stats.tiles, megapixels=mp, seconds=seconds,
                      megapixels_per_second=mp / seconds, threshold=pre.threshold, workers=stats.workers,
                      device=stats.device, ray_cluster=stats.cluster, warped_after=pre.alignment.warp_after,
                      workdir=kept, statistics=pre.spec.statistics, statistics_passes=stats.statistics_passes,
                      change=made["change"], outputs={k: storage.redact_url(v) for k, v in made["outputs"].items()})
