"""Prefect flow ``process_archive``: many pairs through ``detect_changes``, one Ray runtime, one set of actors.

Pairs come from a manifest (CSV / JSON lines, path or URL) or two globs paired by a
rule. Pairs whose output is already a complete map are skipped (checked: readable
COG with changemap's tags for the same inputs and settings) unless ``overwrite``. The
rest run as ``detect_changes`` subflows, ``concurrency`` at a time, all borrowing the
same model actors, so the model is loaded once per actor, not once per pair. A pair
that fails is reported with its error; the others finish. The summary goes next to
the outputs (CSV + JSON) and into a Prefect table artifact; the final state's message
says how many pairs succeeded, failed and were skipped.
"""
from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed
from pydantic import SecretStr

from flows.change_detection import detect_changes, weights_task
from pipeline import archive, ray_runtime, scene, storage
from pipeline.archive import PairResult, Plan
from pipeline.config import RunConfig
from pipeline.errors import ChangemapError
from pipeline.inference import shared_pool

_task = dict(cache_policy=NO_CACHE)


@task(name="plan-archive", retries=2, retry_delay_seconds=2, **_task)
def plan_task(manifest: str | None, before: str | None, after: str | None, pair_by: str, output_prefix: str) -> Plan:
    if manifest and (before or after):
        raise archive.ManifestError("give either a MANIFEST or --before/--after globs, not both")
    if manifest:
        return archive.read_manifest(manifest, output_prefix)
    if not (before and after):
        raise archive.ManifestError("an archive needs a MANIFEST, or both --before and --after glob patterns")
    return archive.glob_pairs(before, after, pair_by, output_prefix)


@task(name="check-outputs", retries=2, retry_delay_seconds=2, **_task)
def check_task(plan: Plan, settings: dict[str, dict[str, Any]], overwrite: bool
               ) -> tuple[list[archive.Pair], list[PairResult]]:
    """Split the pairs into those to run and results for those already complete (or not ours)."""
    todo, done = [], []
    for pair in plan.pairs:
        state, reason, mp = archive.existing_output(pair, settings[pair.id])
        if state == "missing" or overwrite:
            todo.append(pair)
        elif state == "complete":
            done.append(PairResult(pair.id, "skipped", megapixels=mp, output=pair.output))
        else:
            done.append(PairResult(pair.id, "failed", megapixels=mp, output=pair.output,
                                   error=f"output exists and {reason}; pass --overwrite to replace it"))
    return todo, done


@task(name="summary", retries=2, retry_delay_seconds=2, **_task)
def summary_task(results: list[PairResult], output_prefix: str, extra: dict[str, Any]) -> tuple[str, str]:
    urls = archive.write_summary(results, output_prefix, extra)
    create_table_artifact(
        key="archive-summary", table=[r.row() for r in results],
        description=f"{archive.summary_message(results)}. Summary files: {', '.join(map(storage.redact_url, urls))}",
    )
    return urls


def _one_pair(pair: archive.Pair, run_options: dict[str, Any]) -> PairResult:
    """Run ``detect_changes`` for one pair; any error becomes a failed row, never an exception."""
    start = time.perf_counter()
    try:
        summary = detect_changes.with_options(flow_run_name=f"pair-{pair.id}")(
            before=pair.before, after=pair.after, output=pair.output, overwrite=True, **run_options)
    except Exception as exc:  # noqa: BLE001 - one failed pair must not stop the others
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PairResult(pair.id, "failed", seconds=time.perf_counter() - start, output=pair.output,
                          error=f"{type(exc).__name__}: {text}"[:500])
    return PairResult(pair.id, "succeeded", seconds=summary["seconds"], megapixels=summary["megapixels"],
                      output=pair.output, tiles=summary["tiles"])


@flow(name="process_archive", log_prints=False)
def process_archive(output_prefix: str, manifest: str | None = None, before: str | None = None,
                    after: str | None = None, pair_by: str = "stem", concurrency: int = 1,
                    overwrite: bool = False, model: str | None = None, weights: str | None = None,
                    tile: int = 512, halo: int = 64, statistics: str = "window", batch_size: int = 4,
                    threshold: float | None = None, workers: int | None = None, probability: str = "uint8",
                    mask: bool = False,
                    bands: list[int] | None = None, workdir: str | None = None, ray_address: str | None = None,
                    storage_options: SecretStr | None = None):
    """Process every pair of an archive (manifest, or ``before``/``after`` globs paired by ``pair_by``).

    Returns a Completed state when no pair failed, else a Failed one; both carry the
    summary (``counts``, ``pairs`` rows, ``summary_csv``/``summary_json`` URLs) as data.
    """
    start = time.perf_counter()
    logger = get_run_logger()
    if storage_options is not None:
        storage.install(storage.StorageOptions.from_json(storage_options.get_secret_value()))
    if concurrency < 1:
        raise ChangemapError(f"--concurrency must be at least 1, got {concurrency}")
    model = scene.choose_model(model, weights)  # a changemap checkpoint names its model
    run_options = dict(model=model, weights=weights, tile=tile, halo=halo, statistics=statistics,
                       batch_size=batch_size, threshold=threshold, workers=workers, probability=probability,
                       mask=mask, bands=bands, workdir=workdir, ray_address=ray_address)
    plan = plan_task(manifest, before, after, pair_by, output_prefix)
    for url, why in plan.unpaired:
        logger.warning("unpaired: %s: %s", storage.redact_url(url), why)
    # What each pair's map is made with: an existing output must match it to be skipped.
    settings = {p.id: RunConfig(before=p.before, after=p.after, output=p.output,
                                **{**run_options, "bands": tuple(bands) if bands else None}).to_dict()
                for p in plan.pairs}
    todo, results = check_task(plan, settings, overwrite)
    logger.info("%d pairs: %d to run, %d already complete", len(plan.pairs), len(todo),
                sum(r.status == "skipped" for r in results))
    actors = 0
    if todo:
        loaded, meta = weights_task(model, weights, len(bands) if bands else None, statistics, tile, halo)
        started = ray_runtime.ensure_ray(ray_address)
        try:
            with shared_pool(meta.model, loaded, workers=workers, batch_size=batch_size,
                             model_args=dict(meta.model_args)) as pool:
                actors = pool.workers
                with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pair") as ex:
                    # Each pair runs in a copy of this flow's context, so it is this run's subflow.
                    futures = [ex.submit(contextvars.copy_context().run, _one_pair, p, run_options) for p in todo]
                    results += [f.result() for f in futures]
                tiles_inferred = pool.tiles_done
        finally:
            ray_runtime.shutdown_if_started(started)
    else:
        tiles_inferred = 0
    results += [PairResult(storage.basename(url), "unpaired", error=f"{storage.redact_url(url)}: {why}")
                for url, why in plan.unpaired]
    order = {p.id: i for i, p in enumerate(plan.pairs)}
    results.sort(key=lambda r: (order.get(r.id, len(order)), r.id))
    for r in results:
        if r.status == "failed":
            logger.error("pair %s failed: %s", r.id, storage.scrub(r.error))
    extra = {"seconds": round(time.perf_counter() - start, 3), "tiles_inferred": tiles_inferred,
             "model_actors": actors, "output_prefix": storage.redact_url(output_prefix)}
    csv_url, json_url = summary_task(results, output_prefix, extra)
    message = archive.summary_message(results)
    counts = archive.summary_counts(results)
    data = {"message": message, "counts": counts, **extra, "summary_csv": csv_url, "summary_json": json_url,
            "pairs": [r.row() for r in results]}
    if counts["failed"]:
        return Failed(message=message, data=data)
    return Completed(message=message, data=data)
