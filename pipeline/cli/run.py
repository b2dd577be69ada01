"""``changemap run``, ``archive`` and ``serve``: a pair, many pairs, scheduled deployments.

:func:`run_pair` and :func:`run_archive` are what the commands do, callable from Python with a
session of the caller's (a benchmark passes one whose model actors it chose).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pipeline.cli import options
from pipeline.cli.errors import quiet_user_errors
from pipeline.config import ArchiveOptions, MapSettings, MapSpec, ProductSettings, RunOptions
from pipeline.session import Session
from pipeline.summary import RunSummary

# Options of one pair that an archive derives per pair instead of taking them.
PER_PAIR = ("output", "keep_workdir", "vector", "stats", "quicklook", "stac")


def run_pair(spec: MapSpec, run: RunOptions, products: ProductSettings = ProductSettings(), *,
             session: Session | None = None) -> RunSummary:
    """Check a run, start what it needs, and make its map through the ``detect_changes`` flow; its summary.

    The checks come first, before Prefect's API and Ray start: a user error costs seconds. Then
    Prefect's API, Ray and the model actors start at the same time, and the flow finds them up.
    ``session`` is the caller's and stays open; without one the command opens its own.
    """
    begin = time.time()
    with Session.borrow(session, run) as session:
        plan = session.plan(spec, run)
        checked = time.time() - begin
        from flows.change_detection import detect_changes  # imports Prefect: only once the checks passed

        quiet_user_errors()
        startup = session.start(plan)
        summary = detect_changes(spec, run, products, session=session)
    import psutil  # Ray's dependency

    before = begin - psutil.Process().create_time()  # the interpreter and the imports of this command
    return summary.model_copy(update={"startup_seconds": {
        k: round(v, 3) for k, v in {"before the checks": before, "checks": checked, **startup}.items()}})


def run_archive(archive: ArchiveOptions, settings: MapSettings, run: RunOptions,
                products: ProductSettings = ProductSettings(), *, session: Session | None = None) -> dict[str, Any]:
    """Check an archive run, then process its pairs through the ``process_archive`` flow; its summary data."""
    from pipeline import checks

    if archive.dry_run:
        return search_only(archive, settings, run, session=session)
    with Session.borrow(session, run) as session:
        bands = checks.check_archive(archive, settings, run, session)
        from flows.archive import process_archive  # imports Prefect and Ray: only once the checks passed
        from pipeline.engine.stream import UNREAD_ITEMSIZE, object_store_bytes

        quiet_user_errors()
        session.start(object_store_memory=object_store_bytes(bands, UNREAD_ITEMSIZE, settings.tile))
        state = process_archive(archive, settings, run, products, session=session, return_state=True)
    data = state.result(raise_on_failure=False)
    if not isinstance(data, dict):  # the flow itself failed (bad manifest, unknown model, ...)
        raise data if isinstance(data, Exception) else RuntimeError(str(state.message))
    return data


def search_only(archive: ArchiveOptions, settings: MapSettings, run: RunOptions, *,
                session: Session | None = None) -> dict[str, Any]:
    """``archive --catalog ... --dry-run``: search, check the chosen Items' bands, write the manifest; no pixel read.

    Neither Prefect nor Ray starts. The manifest (``PREFIX/search-pairs.csv``) is what
    ``changemap archive MANIFEST --output-prefix PREFIX`` maps unchanged.
    """
    from pipeline import checks, loader
    from pipeline.archive import choose

    begin = time.perf_counter()
    with Session.borrow(session, run) as session:
        checks.check_source(archive)
        if not archive.catalog:
            raise checks.ManifestError("--dry-run shows the pairs a --catalog search chooses; add --catalog (a manifest "
                                       "or globs are their own list of pairs)")
        for role, url in (("--catalog", archive.catalog), ("--output-prefix", archive.output_prefix)):
            checks.check_protocol(url, role)
        plan = session.pairs(archive)
        fitted = loader.model_kind(loader.choose_model(settings.model, settings.weights)) == "scene-fitted"
        checks.check_items(plan, settings, None if fitted else 3)
        url = choose.manifest_url(archive.output_prefix)
        choose.write_manifest(plan.found, url, archive.output_prefix)
    found = plan.found
    rows = [{"id": p.id, "tile": p.tile, "before": p.before.id, "before_date": f"{p.before.datetime:%Y-%m-%d}",
             "before_cloud": p.before.cloud_cover, "after": p.after.id, "after_date": f"{p.after.datetime:%Y-%m-%d}",
             "after_cloud": p.after.cloud_cover, "status": "chosen"} for p in found.pairs]
    rows += [{"id": tile, "tile": tile, "status": "unpaired", "error": reason} for tile, reason in found.skipped]
    message = f"{len(found.pairs)} pairs chosen, {len(found.skipped)} tiles without a pair"
    return {"message": message, "dry_run": True, "manifest": url, "output_prefix": archive.output_prefix,
            "pairs": rows, "seconds": time.perf_counter() - begin,
            "counts": {"chosen": len(found.pairs), "unpaired": len(found.skipped), "failed": 0}}


def _print_search(data: dict[str, Any]) -> None:
    """The dry run's table: one line per tile."""
    for row in data["pairs"]:
        if row["status"] == "chosen":
            clouds = ["?" if c is None else f"{c:g} %" for c in (row["before_cloud"], row["after_cloud"])]
            print(f"  {row['tile']}: {row['before']} ({row['before_date']}, cloud {clouds[0]}) -> "
                  f"{row['after']} ({row['after_date']}, cloud {clouds[1]})")
        else:
            print(f"  {row['tile']}: no pair: {row['error']}")
    print(f"changemap archive: {data['message']}; manifest {data['manifest']} (map them with: changemap archive "
          f"{data['manifest']} --output-prefix {data['output_prefix']} and the same model options)")


def run_command(args: argparse.Namespace) -> int:
    """``changemap run``."""
    summary = run_pair(options.take(args, MapSpec), options.take(args, RunOptions), options.take(args, ProductSettings))
    if args.json:
        print(summary.model_dump_json())
    for line in summary.lines():
        print(line)
    return 0


def archive_command(args: argparse.Namespace) -> int:
    """``changemap archive``: exit code 1 when a pair failed."""
    data = run_archive(options.take(args, ArchiveOptions), options.take(args, MapSettings),
                       options.take(args, RunOptions, exclude=PER_PAIR), options.take(args, ProductSettings))
    if args.json:
        print(json.dumps(data, sort_keys=True))
    if data.get("dry_run"):
        _print_search(data)
        return 0
    for row in data["pairs"]:
        if row["status"] in ("failed", "unpaired"):
            print(f"  {row['id']}: {row['status']}: {row['error']}", file=sys.stderr)
    print(f"changemap archive: {data['message']} in {data['seconds']:.1f} s; summary {data['summary_csv']}")
    return 0 if data["counts"]["failed"] == 0 else 1


def _params(pairs: list[str]) -> dict:
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--param takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def serve_command(args: argparse.Namespace) -> int:
    """``changemap serve``: the deployments of a prefect.yaml, served until interrupted."""
    from flows.deployments import serve

    serve(args.file, only=args.deployment, limit=args.limit, overrides=_params(args.param))
    return 0
