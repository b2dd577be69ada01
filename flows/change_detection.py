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
from pipeline import storage
from pipeline.checks import RunPlan
from pipeline.config import MapSpec, ProductSettings, RunOptions
from pipeline.engine import workdir
from pipeline.engine.scene import SceneResult, make_map
from pipeline.errors import ChangemapError
from pipeline.products import outputs
from pipeline.session import Session
from pipeline.summary import RunSummary

_USER_ERRORS = (ChangemapError, WeightsError, UnknownModelError)


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry infrastructure failures, not errors in the user's inputs."""
    try:
        state.result()
    except _USER_ERRORS:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


_task = dict(cache_policy=NO_CACHE, retry_condition_fn=retry_unless_user_error)


@task(name="check", retries=2, retry_delay_seconds=2, **_task)
def check_task(spec: MapSpec, run: RunOptions, session: Session) -> RunPlan:
    return session.plan(spec, run)


@task(name="map", retries=1, retry_delay_seconds=5, **_task)
def map_task(plan: RunPlan, paths: workdir.RunPaths, run: RunOptions, products: ProductSettings,
             session: Session) -> SceneResult:
    return make_map(plan, paths, run, session, products)


@task(name="outputs", retries=2, retry_delay_seconds=2, **_task)
def outputs_task(plan: RunPlan, run: RunOptions, products: ProductSettings, made: SceneResult) -> dict:
    extras = outputs.finish_outputs(plan, run, products, made.sinks)
    artifacts.publish(extras, plan)
    return extras


@flow(name="detect_changes", log_prints=False)
def detect_changes(spec: MapSpec, run: RunOptions, products: ProductSettings = ProductSettings(),
                   session: Session | None = None) -> RunSummary:
    """Detect changes between ``spec.before`` and ``spec.after`` and write a change-map COG on BEFORE's grid.

    Paths may be fsspec URLs; ``run.storage_options`` (fsspec options as JSON, also mirrored
    into GDAL's settings) is a secret: Prefect stores it masked, and it is used for this run
    only. Without it the process's options and the environment apply. ``products`` says how the
    polygons are made (stamped on the products). ``session`` is the
    caller's (:class:`pipeline.session.Session`: Ray, the model actors, the checked plan);
    without one the flow opens its own for its length.
    """
    start = time.perf_counter()
    with Session.borrow(session, run) as session:
        plan = check_task(spec, run, session)
        if plan.alignment.warp_after:
            get_run_logger().info("AFTER %s is warped onto BEFORE's grid (bilinear)", storage.redact_url(spec.after))
        paths = workdir.paths_for(plan.spec, run)
        succeeded = False
        try:
            with workdir.locked(paths):
                made = map_task(plan, paths, run, products, session)
                extras = outputs_task(plan, run, products, made)
            succeeded = True
        finally:
            kept = workdir.cleanup(paths, run, succeeded)
            if kept:
                get_run_logger().info("intermediate stores kept in %s", storage.redact_url(kept))
    seconds = time.perf_counter() - start
    mp = plan.alignment.grid.megapixels
    s = made.stream
    if s.retried:
        get_run_logger().warning("%d tile(s) were predicted again after a lost model actor: %s", len(s.retried),
                                 ", ".join(s.retried))
    return RunSummary(output=run.output, tiles=s.tiles, megapixels=mp, seconds=seconds,
                      megapixels_per_second=mp / seconds, threshold=made.threshold,
                      threshold_method=plan.threshold_method, fit=made.fit or {}, workers=made.workers,
                      device=made.device, ray_cluster=made.cluster, warped_after=plan.alignment.warp_after,
                      workdir=kept, statistics=plan.spec.statistics, statistics_passes=made.statistics_passes,
                      tiles_predicted=s.predicted, tiles_reused=s.reused, tiles_retried=len(s.retried),
                      chunks_decoded=s.chunks_decoded, chunks_reused=s.chunks_reused,
                      model_seconds={k: round(v, 3) for k, v in s.model_seconds.items()},
                      change=extras["change"], outputs={k: storage.redact_url(v) for k, v in extras["outputs"].items()})
