"""``changemap`` command line: ``run`` a scene pair, ``evaluate``, ``train``, list ``models``."""
from __future__ import annotations

import argparse
import difflib
import gc
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence

from pipeline.cli import options
from pipeline.cli.learn import add_dataset_evaluate_options as _add_dataset_evaluate_options
from pipeline.cli.learn import add_train_parser as _add_train_parser
from pipeline.config import ArchiveOptions, MapSettings, MapSpec, RunOptions
from pipeline.errors import ChangemapError, one_paragraph

_USER_ERROR_EXIT = 2
# Options of one pair that an archive derives per pair instead of taking them.
_PER_PAIR = ("output", "keep_workdir", "vector", "stats", "quicklook", "stac")
# Errors of the model zoo that are the user's (a name or a checkpoint that does not fit); looked up
# only once the zoo is imported, so that a typo in an option is answered without importing torch.
_MODEL_ERRORS = ("UnknownModelError", "UnknownBackboneError", "WeightsError")


class _UsageError(Exception):
    """A command line argparse cannot parse (answered like any user error, without the usage text)."""


class _Parser(argparse.ArgumentParser):
    """argparse, answering a bad command line in one line (``changemap: error: ...``) instead of the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message}; see '{self.prog} --help'")

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                   ) -> argparse.Namespace:
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self._command(getattr(ns, "command", None))
            hint = _did_you_mean(extra, command)
            (command or self).error(f"unrecognized arguments: {' '.join(extra)}{hint}")
        return ns

    def _command(self, name: str | None) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                return action.choices[name]
        return None


def _did_you_mean(extra: list[str], parser: argparse.ArgumentParser | None) -> str:
    known = [o for a in parser._actions for o in a.option_strings] if parser else []
    hints = [close[0] for token in extra if token.startswith("--")
             for close in [difflib.get_close_matches(token.split("=", 1)[0], known, n=1, cutoff=0.6)] if close]
    return f" (did you mean {' or '.join(hints)}?)" if hints else ""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="changemap", description="Change maps from bitemporal GeoTIFFs.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="detect changes between two rasters and write a COG change map")
    options.add_fields(run, MapSpec)
    options.add_fields(run, RunOptions)
    run.add_argument("--json", action="store_true", help="print the run summary as JSON too")

    ev = sub.add_parser("evaluate", help="score a change map against a label raster, or a model on a dataset",
                        usage="changemap evaluate PRED LABEL [options]\n"
                              "       changemap evaluate --model NAME --weights W --data DATASET [options]")
    ev.add_argument("prediction", nargs="?", help="change map (changemap output, or any raster of probabilities/0-1 mask)")
    ev.add_argument("label", nargs="?", help="label raster (0/255, 0/1 with 255 unlabeled, or OSCD 1/2)")
    _add_dataset_evaluate_options(ev)
    ev.add_argument("--threshold", type=float, default=None,
                    help="threshold band 1 (default: use the mask band if present, else the map's threshold)")
    ev.add_argument("--label-values", default=None, help="NO_CHANGE,CHANGE[,NODATA], e.g. 0,255 or 1,2")
    ev.add_argument("--align", action="store_true", help="warp the label onto the prediction's grid (nearest)")
    ev.add_argument("--json", default=None, help="also write the metrics to this JSON file")

    arc = sub.add_parser("archive", help="process many pairs (manifest or globs) into change maps",
                         usage="changemap archive MANIFEST --output-prefix PREFIX [options]\n"
                               "       changemap archive --before GLOB --after GLOB [--pair-by stem|REGEX] "
                               "--output-prefix PREFIX [options]")
    options.add_fields(arc, ArchiveOptions)
    options.add_fields(arc, MapSettings)
    options.add_fields(arc, RunOptions, exclude=_PER_PAIR,
                       help_overrides={"overwrite": "redo pairs whose output is already complete"})
    arc.add_argument("--json", action="store_true", help="print the archive summary as JSON too")

    srv = sub.add_parser("serve", help="run the Prefect deployments of a prefect.yaml here (schedules + triggered runs)")
    srv.add_argument("--file", default="infra/prefect/prefect.yaml", help="deployment file (prefect.yaml format)")
    srv.add_argument("--deployment", action="append", default=None,
                     help="serve only this deployment (repeatable; default: all in the file)")
    srv.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter of every served deployment (VALUE parsed as JSON, else text)")
    srv.add_argument("--limit", type=int, default=None, help="flow runs executed at once (default: no limit)")

    _add_train_parser(sub)

    mods = sub.add_parser("models", help="list the registered models, their sizes and known weights")
    mods.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _user_error_types() -> tuple[type[BaseException], ...]:
    zoo = [sys.modules.get("models.registry"), sys.modules.get("models.weights"), sys.modules.get("models")]
    found = {getattr(m, name, None) for m in zoo if m is not None for name in _MODEL_ERRORS}
    return (ChangemapError, *(t for t in found if isinstance(t, type)))


def user_error(exc: BaseException | None) -> BaseException | None:
    """The user error behind ``exc``, if any: itself, or the cause Ray (``RayTaskError``) or a wrapper carries.

    A user error is a :class:`~pipeline.errors.ChangemapError` or the model zoo's unknown-model and
    weights errors: the user can fix it, and it is answered in one paragraph, without a traceback.
    """
    types, seen = _user_error_types(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # RayTaskError(X) is an X, and carries the original X
        if isinstance(exc, types):
            return cause if isinstance(cause, types) else exc
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


def _user_error_names() -> re.Pattern:
    names: set[str] = set()
    stack = list(_user_error_types())
    while stack:
        cls = stack.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            stack.extend(cls.__subclasses__())
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\)?:")


# The loggers that would repeat a user error with a traceback: Prefect's flow and task run loggers
# ("Encountered exception during execution", "Task run failed with exception", "Finished in state
# Failed(...)"), its engine loggers, and Ray's driver ("Unhandled error" of a task whose result
# nobody read after the run had already failed).
_ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect.flow_engine",
                   "prefect.task_engine", "ray._private.worker")


class _QuietUserErrors(logging.Filter):
    """Drops the engines' log records about a user error: the CLI says it once, in one paragraph."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and user_error(record.exc_info[1]) is not None:
            return False
        if record.levelno < logging.INFO:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to judge
            return True
        return not _user_error_names().search(text)


_QUIET = _QuietUserErrors()


def _quiet_user_errors() -> None:
    """Prefect and Ray log a failing flow, task or remote task with its traceback; a user error is said once, by us."""
    for name in _ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)


def _run(args: argparse.Namespace) -> int:
    from pipeline import checks, storage

    begin = time.time()
    spec, run = options.take(args, MapSpec), options.take(args, RunOptions)
    with storage.using(storage.StorageOptions.from_json(run.storage_json()) if run.storage_options else None):
        pre = checks.preflight(spec, run, remember=True)  # before Prefect and Ray: a user error costs seconds
    checked = time.time() - begin
    from flows.change_detection import detect_changes
    from pipeline.engine import ray_runtime  # imports Ray: only once the checks passed
    from pipeline.engine.scene import object_store_for, warm_start

    _quiet_user_errors()
    # The model actors start while Prefect's API does: the flow finds them ready.
    with ray_runtime.services(run.ray_address, warm=lambda: warm_start(pre, run),
                              object_store_memory=object_store_for(pre)) as startup:
        summary = detect_changes(spec, run)
    import psutil  # Ray's dependency

    before = begin - psutil.Process().create_time()  # the interpreter and the imports of this command
    summary = summary.model_copy(update={"startup_seconds": {
        k: round(v, 3) for k, v in {"before the checks": before, "checks": checked, **startup}.items()}})
    if args.json:
        print(summary.model_dump_json())
    for line in summary.lines():
        print(line)
    return 0


def _archive(args: argparse.Namespace) -> int:
    from pipeline import checks, storage

    archive_options = options.take(args, ArchiveOptions)
    settings, run = options.take(args, MapSettings), options.take(args, RunOptions, exclude=_PER_PAIR)
    with storage.using(storage.StorageOptions.from_json(run.storage_json()) if run.storage_options else None):
        bands = checks.check_archive(archive_options, settings, run)
    from flows.archive import process_archive
    from pipeline.engine import ray_runtime  # imports Ray: only once the checks passed
    from pipeline.engine.stream import UNREAD_ITEMSIZE, object_store_bytes

    _quiet_user_errors()
    store = object_store_bytes(bands, UNREAD_ITEMSIZE, settings.tile)  # the pairs are read later
    with ray_runtime.services(run.ray_address, object_store_memory=store):
        state = process_archive(archive_options, settings, run, return_state=True)
    data = state.result(raise_on_failure=False)
    if not isinstance(data, dict):  # the flow itself failed (bad manifest, unknown model, ...)
        raise data if isinstance(data, Exception) else RuntimeError(str(state.message))
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


def _serve(args: argparse.Namespace) -> int:
    from flows.deployments import serve

    serve(args.file, only=args.deployment, limit=args.limit, overrides=_params(args.param))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.data or args.model or args.weights:
        return _evaluate_dataset(args)
    if not args.prediction or not args.label:
        from pipeline.errors import ChangemapError

        raise ChangemapError("evaluate takes PRED LABEL, or --model NAME --weights W --data DATASET")

    from pipeline.learn.evaluate import evaluate_pair, parse_label_values

    values = parse_label_values(args.label_values) if args.label_values else None
    c = evaluate_pair(args.prediction, args.label, threshold=args.threshold, label_values=values, align=args.align)
    metrics = {"prediction": args.prediction, "label": args.label, **c.as_dict()}
    print(f"F1 {c.f1:.4f}  IoU {c.iou:.4f}  precision {c.precision:.4f}  recall {c.recall:.4f}  "
          f"OA {c.overall_accuracy:.4f}  kappa {c.kappa:.4f}  over {c.total:,} labelled pixels "
          f"[[TN {c.tn:,}, FP {c.fp:,}], [FN {c.fn:,}, TP {c.tp:,}]]")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0


def _evaluate_dataset(args: argparse.Namespace) -> int:
    from pipeline.cli.learn import run_evaluate_dataset

    return run_evaluate_dataset(args)


def _train(args: argparse.Namespace) -> int:
    from pipeline.cli.learn import run_train

    return run_train(args)


def _models(args: argparse.Namespace) -> int:
    import models

    infos = [models.model_info(name) for name in models.list_models()]
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    print(f"{'model':<28} {'parameters':>12}  weights")
    for info in infos:
        print(f"{info['name']:<28} {info['parameters']:>12,}  {', '.join(info['weights']) or '-'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``changemap`` console script."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        print(f"changemap: error: {exc}", file=sys.stderr)
        return _USER_ERROR_EXIT
    if getattr(args, "ray_address", None):
        import pipeline

        # Ray is not imported yet: attaching to a cluster must not pin the driver to loopback.
        if pipeline.LOOPBACK_RAY and "ray" not in sys.modules:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    commands = {"run": _run, "archive": _archive, "serve": _serve, "evaluate": _evaluate, "models": _models,
                "train": _train}
    try:
        return commands[args.command](args)
    except Exception as exc:
        found = user_error(exc)
        if found is None:
            raise
        print(f"changemap: error: {one_paragraph(str(found))}", file=sys.stderr)
        return _USER_ERROR_EXIT


def console(argv: Sequence[str] | None = None) -> int:
    """The ``changemap`` console script: :func:`main`, then an exit without the final garbage collection.

    The interpreter's last collection walks every object a run imported (Prefect, pydantic,
    torch): 1.8 s of a 12 s run here. Freezing them first leaves it nothing to walk; files and
    processes are closed by then, and atexit handlers still run.
    """
    code = main(argv)
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console())
