"""Prefect flow ``detect_changes``: one bitemporal pair in, one change-map COG out.

The flow only orders the steps; each task is a thin wrapper with retries around a
plain function of :mod:`pipeline`. User errors (bad inputs, unknown model, wrong
weights) are not retried.
"""
from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from models import LoadedWeights, UnknownModelError, WeightsError, WeightsMeta
from pipeline import export, ingest, ray_runtime, scene, storage
from pipeline.config import RunConfig
from pipeline.errors import ChangemapError
from pipeline.grid import Alignment
from pipeline.inference import InferenceJob, InferenceStats, borrow_pool, select_bands
from pipeline.io import store

_USER_ERRORS = (ChangemapError, WeightsError, UnknownModelError)


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry infrastructure failures, not errors in the user's inputs."""
    try:
        state.result()
    except _USER_ERRORS:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


_task = dict(cache_policy=NO_CACHE, retry_condition_fn=_retry_unless_user_error)


@task(name="weights", retries=2, retry_delay_seconds=2, **_task)
def weights_task(model: str, weights: str | None, in_channels: int | None, statistics: str = "window",
                 tile: int = 512, halo: int = 64):
    return scene.load_weights(model, weights, in_channels, statistics=statistics, tile=tile, halo=halo)


@task(name="grid", retries=2, retry_delay_seconds=2, **_task)
def grid_task(before: str, after: str) -> Alignment:
    return scene.plan_grid(before, after)


@task(name="ingest", retries=2, retry_delay_seconds=2, **_task)
def ingest_task(alignment: Alignment, input_store: str, tile: int) -> None:
    ingest.ingest_pair(alignment, input_store, tile)


@task(name="infer", retries=1, retry_delay_seconds=5, **_task)
def infer_task(cfg: RunConfig, loaded: LoadedWeights | None, meta: WeightsMeta, alignment: Alignment,
               paths: scene.RunPaths, bands: tuple[int, ...]) -> InferenceStats:
    store.create_output_store(paths.output_store, alignment.grid, cfg.tile)
    started = ray_runtime.ensure_ray(cfg.ray_address)
    try:
        # Inside an archive run the model actors are shared across pairs (loaded once).
        with borrow_pool(meta.model, loaded, workers=cfg.workers, batch_size=cfg.batch_size,
                         model_args=dict(meta.model_args)) as pool:
            job = InferenceJob(paths.input_store, paths.output_store, cfg.tile, cfg.halo, bands, storage.installed(),
                               cfg.statistics)
            stats = pool.run(job, scene.tiles_for(alignment, cfg.tile), progress=scene.Progress(),
                             on_level=scene.report_level)
        store.mark_complete(paths.output_store)
        return stats
    finally:
        ray_runtime.shutdown_if_started(started)


@task(name="export", retries=2, retry_delay_seconds=2, **_task)
def export_task(cfg: RunConfig, paths: scene.RunPaths, threshold: float, model_tags: dict[str, str]) -> None:
    export.export_cog(paths.output_store, paths.input_store, cfg.output, probability=cfg.probability,
                      mask=cfg.mask, threshold=threshold, tags={"CHANGEMAP_CONFIG": cfg.to_json(), **model_tags})


@flow(name="detect_changes", log_prints=False)
def detect_changes(before: str, after: str, output: str, model: str | None = None, weights: str | None = None,
                   tile: int = 512, halo: int = 64, statistics: str = "window", batch_size: int = 4,
                   threshold: float | None = None, workers: int | None = None, probability: str = "uint8",
                   mask: bool = False, bands: list[int] | None = None, workdir: str | None = None,
                   keep_workdir: bool = False,
                   overwrite: bool = False, ray_address: str | None = None,
                   storage_options: SecretStr | None = None) -> dict[str, Any]:
    """Detect changes between BEFORE and AFTER and write a change-map COG on BEFORE's grid.

    Paths may be fsspec URLs; ``storage_options`` (fsspec options as JSON text, also
    mirrored into GDAL's settings) is a secret string: Prefect stores it masked (a
    ``SecretStr``; Prefect's ``SecretDict`` is stored in clear by its parameter encoder).
    Without it the process's installed options (the CLI's ``--storage-options``) and the
    environment apply.
    Returns a summary: tiles, megapixels, seconds, megapixels_per_second, output, threshold.
    """
    start = time.perf_counter()
    if storage_options is not None:
        storage.install(storage.StorageOptions.from_json(storage_options.get_secret_value()))
    cfg = RunConfig(before=before, after=after, output=output, model=scene.choose_model(model, weights),
                    weights=weights, tile=tile, halo=halo, statistics=statistics, batch_size=batch_size,
                    threshold=threshold, workers=workers,
                    probability=probability, mask=mask, bands=tuple(bands) if bands else None,
                    workdir=workdir, keep_workdir=keep_workdir, overwrite=overwrite, ray_address=ray_address)
    logger = get_run_logger()
    scene.check_output(cfg)
    loaded, meta = weights_task(cfg.model, cfg.weights, len(cfg.bands) if cfg.bands else None, cfg.statistics,
                                cfg.tile, cfg.halo)
    alignment = grid_task(cfg.before, cfg.after)
    chosen_bands = select_bands(meta, alignment.before.count, cfg.bands)
    if alignment.warp_after:
        logger.info("AFTER %s is warped onto BEFORE's grid (bilinear)", cfg.after)
    paths = scene.make_paths(cfg)
    succeeded = False
    try:
        ingest_task(alignment, paths.input_store, cfg.tile)
        stats = infer_task(cfg, loaded, meta, alignment, paths, chosen_bands)
        cut = cfg.threshold if cfg.threshold is not None else meta.threshold
        export_task(cfg, paths, cut, {"CHANGEMAP_MODEL": meta.model, "CHANGEMAP_WEIGHTS_SHA256": meta.sha256,
                                      "CHANGEMAP_WEIGHTS_LICENSE": meta.license})
        succeeded = True
    finally:
        kept = scene.cleanup(paths, cfg, succeeded)
        if kept:
            logger.info("intermediate stores kept in %s", kept)
    seconds = time.perf_counter() - start
    mp = alignment.grid.megapixels
    return {"tiles": stats.tiles, "megapixels": mp, "seconds": seconds, "megapixels_per_second": mp / seconds,
            "output": cfg.output, "threshold": cut, "workers": stats.workers, "device": stats.device,
            "ray_cluster": stats.cluster, "warped_after": alignment.warp_after, "workdir": kept,
            "statistics": cfg.statistics, "statistics_passes": stats.statistics_passes}
