"""``changemap`` command line: ``run`` a scene pair, ``evaluate``, ``train``, list ``models``."""
from __future__ import annotations

import argparse
import difflib
import gc
import json
import os
import sys
from collections.abc import Sequence

from pipeline.cli import options
from pipeline.cli.errors import user_error
from pipeline.cli.learn import add_dataset_evaluate_options as _add_dataset_evaluate_options
from pipeline.cli.learn import add_train_parser as _add_train_parser
from pipeline.cli.run import PER_PAIR, archive_command, run_command, serve_command
from pipeline.config import ArchiveOptions, MapSettings, MapSpec, ProductSettings, RunOptions
from pipeline.errors import ChangemapError, one_paragraph

_USER_ERROR_EXIT = 2


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
    options.add_fields(run, ProductSettings)
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

    arc = sub.add_parser("archive", help="process many pairs (manifest, globs or a STAC search) into change maps",
                         usage="changemap archive MANIFEST --output-prefix PREFIX [options]\n"
                               "       changemap archive --before GLOB --after GLOB [--pair-by stem|REGEX] "
                               "--output-prefix PREFIX [options]\n"
                               "       changemap archive --catalog SOURCE --collections C [--bbox W,S,E,N] "
                               "--before-dates START/END --after-dates START/END [--max-cloud PCT] [--dry-run] "
                               "--output-prefix PREFIX [options]")
    options.add_fields(arc, ArchiveOptions)
    options.add_fields(arc, MapSettings)
    options.add_fields(arc, RunOptions, exclude=PER_PAIR,
                       help_overrides={"overwrite": "redo pairs whose output is already complete"})
    options.add_fields(arc, ProductSettings)
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


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.data or args.model or args.weights:
        return _evaluate_dataset(args)
    if not args.prediction or not args.label:
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
    print(f"{'model':<28} {'kind':<13} {'parameters':>12}  weights")
    for info in infos:
        weights = ("none needed: fitted to each scene" if info["kind"] == "scene-fitted"
                   else ", ".join(info["weights"]) or "-")
        print(f"{info['name']:<28} {info['kind']:<13} {info['parameters']:>12,}  {weights}")
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
    commands = {"run": run_command, "archive": archive_command, "serve": serve_command, "evaluate": _evaluate,
                "models": _models,
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
