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
