"""``changemap`` command line: ``run`` a scene pair, ``evaluate``, ``train``, list ``models``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from pipeline.config import STATISTICS
from pipeline.cli.learn import add_dataset_evaluate_options as _add_dataset_evaluate_options
from pipeline.cli.learn import add_train_parser as _add_train_parser

_USER_ERROR_EXIT = 2


def _bands(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bands takes comma-separated band numbers like 3,2,1, got {text!r}") from None


def _add_run_options(p: argparse.ArgumentParser, *, single: bool = True) -> None:
    """The options of one pair's run (shared by ``run`` and ``archive``)."""
    p.add_argument("--model", default=None,
                   help="registered model name or model config file (see `changemap models`); default: the "
                        "model a changemap checkpoint given as --weights names, else tinycd")
    p.add_argument("--weights", default=None,
                   help="known weights name (e.g. levir, whu), a local checkpoint or a URL; 'none' for random")
    p.add_argument("--tile", type=int, default=512, help="core tile side in pixels (= zarr chunk side)")
    p.add_argument("--halo", type=int, default=64, help="context margin around each tile in pixels")
    p.add_argument("--statistics", choices=STATISTICS, default="window",
                   help="window: InstanceNorm/squeeze-excite layers use each window's statistics (fast); scene: "
                        "the scene's, measured in extra passes, so the map equals one pass over the whole scene")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--threshold", type=float, default=None, help="binary threshold (default: the weights')")
    p.add_argument("--workers", type=int, default=None, help="inference actors (default: one per GPU, else 1)")
    p.add_argument("--probability", choices=("uint8", "float32"), default="uint8",
                   help="band 1 type: uint8 scaled 0-255 (default) or float32 0-1")
    p.add_argument("--mask", action="store_true", help="also write the binary change mask as band 2")
    p.add_argument("--bands", type=_bands, default=None, help="1-based input bands for the model, e.g. 3,2,1")
    p.add_argument("--workdir", default=None, help="folder for intermediate zarr stores (default: temporary)")
    if single:
        p.add_argument("--keep-workdir", action="store_true", help="keep the intermediate stores after success")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output" if single else "redo pairs whose output is already complete")
    p.add_argument("--ray-address", default=None, help="attach to this Ray cluster (default: a local runtime)")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help="fsspec storage options (also given to GDAL), e.g. '{\"key\": ..., \"secret\": ..., "
                        "\"endpoint_url\": ...}' or keyed by protocol '{\"s3\": {...}}'; default: environment")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="changemap", description="Change maps from bitemporal GeoTIFFs.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="detect changes between two rasters and write a COG change map")
    run.add_argument("before", help="BEFORE raster (its grid is the output grid)")
    run.add_argument("after", help="AFTER raster (warped onto BEFORE's grid when it differs)")
    run.add_argument("--output", "-o", required=True, help="output change map (Cloud-Optimized GeoTIFF)")
    _add_run_options(run)
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
    arc.add_argument("manifest", nargs="?", help="CSV (id,before,after[,output]) or JSON-lines file, path or URL")
    arc.add_argument("--before", default=None, help="glob of BEFORE rasters (quote it), e.g. 's3://b/2019/*.tif'")
    arc.add_argument("--after", default=None, help="glob of AFTER rasters (quote it)")
    arc.add_argument("--pair-by", default="stem",
                     help="pair glob matches by file 'stem' (default) or a regex with a named group, "
                          "e.g. '(?P<tile>T\\d+)'")
    arc.add_argument("--output-prefix", required=True, help="folder or URL prefix: outputs PREFIX/{id}.tif, summary")
    arc.add_argument("--concurrency", type=int, default=1, help="pairs processed at once (sharing the model actors)")
    _add_run_options(arc, single=False)
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


def _secret(args: argparse.Namespace):
    """``--storage-options`` for a flow: a SecretStr, which Prefect stores masked (a plain str is stored as is)."""
    from pydantic import SecretStr

    return SecretStr(args.storage_options) if args.storage_options else None


def _run(args: argparse.Namespace) -> int:
    from flows.change_detection import detect_changes
    from pipeline.scene import summary_line

    summary = detect_changes(
        before=args.before, after=args.after, output=args.output, model=args.model, weights=args.weights,
        tile=args.tile, halo=args.halo, statistics=args.statistics, batch_size=args.batch_size,
        threshold=args.threshold, workers=args.workers, probability=args.probability, mask=args.mask,
        bands=args.bands,
        workdir=args.workdir, keep_workdir=args.keep_workdir, overwrite=args.overwrite,
        ray_address=args.ray_address, storage_options=_secret(args),
    )
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    print(summary_line(summary))
    return 0


def _archive(args: argparse.Namespace) -> int:
    from flows.archive import process_archive

    state = process_archive(
        output_prefix=args.output_prefix, manifest=args.manifest, before=args.before, after=args.after,
        pair_by=args.pair_by, concurrency=args.concurrency, overwrite=args.overwrite, model=args.model,
        weights=args.weights, tile=args.tile, halo=args.halo, statistics=args.statistics,
        batch_size=args.batch_size,
        threshold=args.threshold, workers=args.workers, probability=args.probability, mask=args.mask,
        bands=args.bands, workdir=args.workdir, ray_address=args.ray_address, storage_options=_secret(args),
        return_state=True,
    )
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
    args = _parser().parse_args(argv)
    if getattr(args, "ray_address", None):
        import pipeline

        # Ray is not imported yet: attaching to a cluster must not pin the driver to loopback.
        if pipeline.LOOPBACK_RAY and "ray" not in sys.modules:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from models import UnknownModelError, WeightsError
    from pipeline.errors import ChangemapError

    try:
        if getattr(args, "storage_options", None):
            from pipeline import storage

            storage.install(storage.StorageOptions.from_json(args.storage_options))
        commands = {"run": _run, "archive": _archive, "serve": _serve, "evaluate": _evaluate, "models": _models,
                    "train": _train}
        return commands[args.command](args)
    except (ChangemapError, WeightsError, UnknownModelError) as exc:
        print(f"changemap: error: {exc}", file=sys.stderr)
        return _USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
