"""Command-line parts of ``changemap train`` and ``changemap evaluate --model/--weights/--data``.

Kept out of :mod:`pipeline.cli` so the main parser stays short; nothing heavy is imported
until a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import ClassVar, Literal

from pydantic import field_validator

from pipeline.cli import options
from pipeline.config import Frozen, option
from pipeline.learn.training.config import TrainConfig


class EvaluateOptions(Frozen):
    """``changemap evaluate --model NAME --weights W --data DATASET``: the model and the dataset to score it on.

    (``--threshold``, ``--label-values``, ``--align`` and ``--json`` are shared with the
    ``evaluate PRED LABEL`` form and declared with it.)
    """

    what: ClassVar[str] = "evaluate options"

    model: str | None = option(None, "registered model or model config (default: the checkpoint's)")
    weights: str | None = option(None, "known weights name, checkpoint (e.g. RUN_DIR/best.pt) or URL")
    data: str | None = option(None, "dataset: LEVIR-CD layout folder (A/, B/, label/, list/*.txt) or CSV/JSONL "
                                    "manifest")
    split: str | None = option(None, "only this split of the dataset (list/NAME.txt, NAME/ or the manifest's "
                                     "split column)")
    bands: tuple[int, ...] | None = option(None, "1-based input bands (default: the weights')")
    tile: int = option(0, "predict in tiles of this side (default 0: whole images)")
    halo: int = option(64, "context margin around each tile with --tile")
    statistics: Literal["window", "scene"] = option(
        "window", "with --tile: each window's statistics (window) or the image's (scene; as one pass)")

    @field_validator("tile", "halo")
    @classmethod
    def _non_negative(cls, v: int, info) -> int:
        if v < 0:
            raise ValueError(f"--{info.field_name} must be 0 or more, got {v}")
        return v

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"--bands are 1-based band numbers, got {v}")
        return v


def add_dataset_evaluate_options(ev: argparse.ArgumentParser) -> None:
    """``evaluate --model NAME --weights W --data DATASET`` options (their defaults set: the PRED LABEL form reads them)."""
    g = ev.add_argument_group("evaluating a model on a dataset")
    options.add_fields(g, EvaluateOptions, show_defaults=False, keep_defaults=True)


def add_train_parser(sub) -> None:
    """The ``train`` sub-command, from :class:`TrainConfig`'s fields.

    Options not given stay unset: a resumed run keeps its saved ones.
    """
    t = sub.add_parser("train", argument_default=argparse.SUPPRESS,
                       help="train or fine-tune a change model on a dataset (one process or Ray Train workers)")
    options.add_fields(t, TrainConfig, show_defaults=False)


def run_train(args: argparse.Namespace) -> int:
    """``changemap train``."""
    from models.weights import checkpoint_model
    from pipeline.errors import ChangemapError
    from pipeline.io.fs import download
    from pipeline.learn.training import resume_config, train

    given = options.given(args, TrainConfig)
    if given.pop("resume", False):
        cfg = resume_config(given.pop("out"), given)
    else:
        if "model" not in given and given.get("weights"):
            given["model"] = checkpoint_model(given["weights"], fetch=download)
        missing = [f"--{k}" for k in ("model", "data") if not given.get(k)]
        if missing:
            raise ChangemapError(f"train needs {' and '.join(missing)} (or --resume to continue a run)")
        cfg = options.take(args, TrainConfig, model=given["model"])
    result = train(cfg)
    best = result["best"]
    m = best.get("metrics", {})
    line = f"changemap: best epoch {best.get('epoch')}"
    if "val_f1" in m:
        line += f", validation F1 {m['val_f1']:.4f} at threshold {best['threshold']:.2f}"
    print(f"{line}, training F1 {m.get('train_f1', float('nan')):.4f} -> {result['run_dir']}/best.pt")
    return 0


def run_evaluate_dataset(args: argparse.Namespace) -> int:
    """``changemap evaluate --model NAME --weights W --data DATASET``."""
    from pathlib import Path

    from pipeline.errors import ChangemapError
    from pipeline.learn.evaluate import evaluate_dataset, parse_label_values

    opts = options.take(args, EvaluateOptions)
    if not opts.data:
        raise ChangemapError("evaluate --model/--weights needs --data DATASET (or give PRED LABEL rasters)")
    if args.prediction or args.label:
        raise ChangemapError("give either PRED LABEL or --data DATASET, not both")
    values = parse_label_values(args.label_values) if args.label_values else None

    def progress(done: int, total: int, name: str) -> None:
        print(f"\r{done}/{total} {name}", end="", file=sys.stderr, flush=True)

    scores = evaluate_dataset(opts.model, opts.weights, opts.data, split=opts.split, threshold=args.threshold,
                              label_values=values, bands=opts.bands, tile=opts.tile, halo=opts.halo,
                              statistics=opts.statistics, align=args.align,
                              progress=progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    width = max(len(n) for n, _ in scores.per_image)
    for name, c in scores.per_image:
        print(f"{name:<{width}}  F1 {c.f1:.4f}  IoU {c.iou:.4f}  precision {c.precision:.4f}  recall {c.recall:.4f}"
              f"  kappa {c.kappa:.4f}")
    c = scores.total
    print(f"{scores.model} ({scores.weights}, threshold {scores.threshold:.2f}) on {len(scores.per_image)} image(s) "
          f"of {opts.data}: F1 {c.f1:.4f}  IoU {c.iou:.4f}  precision {c.precision:.4f}  recall {c.recall:.4f}  "
          f"OA {c.overall_accuracy:.4f}  kappa {c.kappa:.4f}  over {c.total:,} labelled pixels "
          f"[[TN {c.tn:,}, FP {c.fp:,}], [FN {c.fn:,}, TP {c.tp:,}]]")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": opts.data, **scores.as_dict()}, indent=2))
    return 0
