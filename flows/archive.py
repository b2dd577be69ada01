"""Prefect flow ``process_archive``: many pairs through ``detect_changes``, one Ray runtime, one set of actors.

Pairs come from a manifest (CSV / JSON lines, path or URL), a STAC catalog search (one pair
per tile, :mod:`pipeline.archive.choose`; the choice kept as ``PREFIX/search-pairs.csv``) or two
globs paired by a rule. Pairs whose output is already a complete map are skipped (checked: readable
COG with changemap's tags for the same inputs and settings, and every requested extra
output present and stamped with the same product settings) unless ``overwrite``; a
complete map whose products are missing or were made with other product settings
(``--min-area``, ``--simplify``) keeps its map and has its products made again from it.
The rest run as ``detect_changes`` subflows,
``concurrency`` at a time, all borrowing the same model actors, so the model is loaded
once per actor, not once per pair. Each pair also writes its statistics and the
requested polygons, quicklook and STAC Item under the prefix
(:func:`pipeline.archive.pairs.pair_outputs`). A pair that fails is reported with its error;
the others finish. The summary (with each pair's change statistics and their totals)
goes next to the outputs (CSV + JSON) and into a Prefect table artifact, and with
``stac`` a STAC Collection of the pairs' Items; the final state's message says how many
pairs succeeded, failed and were skipped.
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

from flows.change_detection import detect_changes, retry_unless_user_error
from pipeline import checks, loader, storage
from pipeline.archive import pairs, report, skip
from pipeline.archive.pairs import Plan
from pipeline.archive.report import PairResult
from pipeline.config import ArchiveOptions, MapSettings, MapSpec, ProductSettings, RunOptions
from pipeline.engine import stream
from pipeline.products import outputs
from pipeline.session import Session

_task = dict(cache_policy=NO_CACHE, retry_condition_fn=retry_unless_user_error)  # a bad manifest: said at once


@task(name="plan-archive", retries=2, retry_delay_seconds=2, **_task)
def plan_task(options: ArchiveOptions, session: Session) -> Plan:
    """The archive's pairs (listed, globbed or searched once per session); a search's choice kept as a manifest."""
    plan = session.pairs(options)
    if plan.found is not None:
        from pipeline.archive import choose

        choose.write_manifest(plan.found, choose.manifest_url(options.output_prefix), options.output_prefix)
        for line in plan.found.report():
            get_run_logger().info("search: %s", line)
    return plan


@task(name="check-outputs", retries=2, retry_delay_seconds=2, **_task)
def check_task(plan: Plan, specs: dict[str, MapSpec], options: ArchiveOptions, products: ProductSettings,
               overwrite: bool) -> tuple[list[pairs.Pair], list[pairs.Pair], list[PairResult]]:
    """Split the pairs: to run, to make their products again (the map kept), and results of the others.

    The others are complete (skipped) or not ours (failed, unless ``overwrite``).
    A complete pair's statistics are read back, so the summary's totals cover it too.
    """
    todo, remake, done = [], [], []
    logger = get_run_logger()
    for pair in plan.pairs:
        outputs = pairs.pair_outputs(pair, options)
        state, reason, mp = skip.existing_output(pair, specs[pair.id], outputs, products)
        if state == "missing" or overwrite:
            todo.append(pair)
        elif state == "products":
            logger.info("pair %s: its map is complete but %s; making its products again from the map", pair.id, reason)
            remake.append(pair)
        elif state == "complete":
            done.append(PairResult(pair.id, "skipped", megapixels=mp, output=pair.output,
                                   change=skip.read_statistics(outputs["stats"])))
        else:
            done.append(PairResult(pair.id, "failed", megapixels=mp, output=pair.output,
                                   error=f"output exists and {reason}; pass --overwrite to replace it"))
    return todo, remake, done


@task(name="summary", retries=2, retry_delay_seconds=2, **_task)
def summary_task(results: list[PairResult], output_prefix: str, extra: dict[str, Any]) -> tuple[str, str]:
    urls = report.write_summary(results, output_prefix, extra)
    create_table_artifact(
        key="archive-summary", table=[r.row() for r in results],
        description=f"{report.summary_message(results)}; {report.totals_message(report.summary_totals(results))}. "
                    f"Summary files: {', '.join(map(storage.redact_url, urls))}",
    )
    return urls


@task(name="stac-collection", retries=2, retry_delay_seconds=2, **_task)
def collection_task(results: list[PairResult], by_id: dict[str, pairs.Pair], options: ArchiveOptions) -> str | None:
    items = [(r.id, pairs.pair_outputs(by_id[r.id], options)["stac"]) for r in results
             if r.status in ("succeeded", "skipped", "updated")]
    url = report.write_collection(items, options.output_prefix)
    if url is None:
        get_run_logger().warning("no STAC Item to gather: no collection written")
    return url


@task(name="remake-products", retries=1, retry_delay_seconds=2, **_task)
def remake_task(spec: MapSpec, run: RunOptions, products: ProductSettings, session: Session) -> dict:
    """The products of a kept map made again from it (its settings changed, or a product is missing)."""
    plan = session.plan(spec, run)
    return outputs.finish_outputs(plan, run, products, outputs.sinks_from_map(plan, run, products))


def _one_pair(pair: pairs.Pair, spec: MapSpec, run: RunOptions, options: ArchiveOptions, products: ProductSettings,
              session: Session, remake: bool = False) -> PairResult:
    """Run ``detect_changes`` for one pair (or remake its products); any error becomes a failed row, never an exception."""
    start = time.perf_counter()
    pair_run = run.model_copy(update={**pairs.pair_outputs(pair, options), "overwrite": True})
    try:
        if remake:
            made = remake_task(spec, pair_run, products, session)
            return PairResult(pair.id, "updated", seconds=time.perf_counter() - start, output=pair.output,
                              change=dict(made["change"]))
        summary = detect_changes.with_options(flow_run_name=f"pair-{pair.id}")(spec, pair_run, products,
                                                                                session=session)
    except Exception as exc:  # noqa: BLE001 - one failed pair must not stop the others
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PairResult(pair.id, "failed", seconds=time.perf_counter() - start, output=pair.output,
                          error=f"{type(exc).__name__}: {text}"[:500])
    return PairResult(pair.id, "succeeded", seconds=summary.seconds, megapixels=summary.megapixels,
                      output=pair.output, tiles=summary.tiles, change=dict(summary.change),
                      tiles_predicted=summary.tiles_predicted)


@flow(name="process_archive", log_prints=False)
def process_archive(archive_options: ArchiveOptions, settings: MapSettings = MapSettings(),
                    run: RunOptions = RunOptions(), products: ProductSettings = ProductSettings(),
                    session: Session | None = None):
    """Process every pair of an archive (manifest, catalog search, or ``before``/``after`` globs paired by ``pair_by``).

    Every pair's map is made with ``settings``; ``run`` says how (its output paths are each
    pair's, :func:`pipeline.archive.pairs.pair_outputs`). Returns a Completed state when no pair
    failed, else a Failed one; both carry the summary (``counts``, ``totals``, ``pairs`` rows,
    ``summary_csv``/``summary_json`` URLs, ``collection`` URL or ``None``) as data. ``session``
    is the caller's (:class:`pipeline.session.Session`); without one the flow opens its own.
    """
    with Session.borrow(session, run) as session:
        return _process(archive_options, settings, run, products, session)


def _process(options: ArchiveOptions, settings: MapSettings, run: RunOptions, products: ProductSettings,
             session: Session):
    start = time.perf_counter()
    logger = get_run_logger()
    checks.check_archive(options, settings, run, session)
    plan = plan_task(options, session)
    for url, why in plan.unpaired:
        logger.warning("unpaired: %s: %s", storage.redact_url(url), why)  # a file, or a searched tile without a pair
    # What each pair's map is: an existing output must be this map to be skipped.
    model = loader.choose_model(settings.model, settings.weights)  # a changemap checkpoint names its model
    specs = {p.id: MapSpec.of(p.before, p.after, settings).model_copy(update={"model": model}) for p in plan.pairs}
    todo, remake, results = check_task(plan, specs, options, products, run.overwrite)
    logger.info("%d pairs: %d to run, %d to make their products again, %d already complete", len(plan.pairs),
                len(todo), len(remake), sum(r.status == "skipped" for r in results))
    actors = 0
    if todo:
        loaded, meta = checks.check_model(model, settings.weights, len(settings.bands) if settings.bands else None,
                                          settings.statistics, settings.tile, settings.halo, session)
        session.start_ray(stream.object_store_bytes(meta.in_channels, stream.UNREAD_ITEMSIZE, settings.tile))
        actors = session.pool_for(meta, loaded).workers  # every pair's map borrows these actors
        with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="pair") as ex:
            # Each pair runs in a copy of this flow's context, so it is this run's subflow.
            futures = [ex.submit(contextvars.copy_context().run, _one_pair, p, specs[p.id], run, options, products,
                                 session) for p in todo]
            results += [f.result() for f in futures]
    results += [_one_pair(p, specs[p.id], run, options, products, session, remake=True) for p in remake]
    results += [PairResult(storage.basename(url), "unpaired", error=f"{storage.redact_url(url)}: {why}")
                for url, why in plan.unpaired]
    order = {p.id: i for i, p in enumerate(plan.pairs)}
    results.sort(key=lambda r: (order.get(r.id, len(order)), r.id))
    for r in results:
        if r.status == "failed":
            logger.error("pair %s failed: %s", r.id, storage.scrub(r.error))
    collection = collection_task(results, {p.id: p for p in plan.pairs}, options) if options.stac else None
    tiles_inferred = sum(r.tiles_predicted for r in results)
    extra = {"seconds": round(time.perf_counter() - start, 3), "tiles_inferred": tiles_inferred,
             "model_actors": actors, "output_prefix": storage.redact_url(options.output_prefix),
             "collection": storage.redact_url(collection) if collection else None}
    csv_url, json_url = summary_task(results, options.output_prefix, extra)
    message = report.summary_message(results)
    counts = report.summary_counts(results)
    data = {"message": message, "counts": counts, "totals": report.summary_totals(results), **extra,
            "summary_csv": csv_url, "summary_json": json_url, "pairs": [r.row() for r in results]}
    if counts["failed"]:
        return Failed(message=message, data=data)
    return Completed(message=message, data=data)
