"""Command-line parts of ``changemap train`` and ``changemap evaluate --model/--weights/--data``.

Kept out of :mod:`pipeline.cli` so the main parser stays short; nothing heavy is imported
until a command runs.
"""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import STATISTICS


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,0.4,0.3, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 3,2,1, got {text!r}") from None


def add_dataset_evaluate_options(ev: argparse.ArgumentParser) -> None:
    """``evaluate --model NAME --weights W --data DATASET`` options."""
    g = ev.add_argument_group("evaluating a model on a dataset")
    g.add_argument("--model", default=None, help="registered model or model config (default: the checkpoint's)")
    g.add_argument("--weights", default=None, help="known weights name, checkpoint (e.g. RUN_DIR/best.pt) or URL")
    g.add_argument("--data", default=None,
                   help="dataset: LEVIR-CD layout folder (A/, B/, label/, list/*.txt) or CSV/JSONL manifest")
    g.add_argument("--split", default=None, help="only this split of the dataset (list/NAME.txt, NAME/ or the "
                                                 "manifest's split column)")
    g.add_argument("--bands", type=_ints, default=None, help="1-based input bands (default: the weights')")
    g.add_argument("--tile", type=int, default=0, help="predict in tiles of this side (default 0: whole images)")
    g.add_argument("--halo", type=int, default=64, help="context margin around each tile with --tile")
    g.add_argument("--statistics", choices=STATISTICS, default="window",
                   help="with --tile: each window's statistics (window) or the image's (scene; as one pass)")


def add_train_parser(sub) -> None:
    """The ``train`` sub-command (options not given stay unset: a resumed run keeps its saved ones)."""
    t = sub.add_parser("train", argument_default=argparse.SUPPRESS,
                       help="train or fine-tune a change model on a dataset (one process or Ray Train workers)")
    t.add_argument("--model", help="registered model or model config file (default with --weights CKPT: the "
                                   "checkpoint's model)")
    t.add_argument("--data", help="training dataset: LEVIR-CD layout folder or CSV/JSONL manifest")
    t.add_argument("--out", required=True, help="run folder: best.pt, last.pt, metrics.csv, curve.png, config.json")
    t.add_argument("--weights", help="initial weights: known name (e.g. levir), checkpoint or URL (default: random)")
    t.add_argument("--split", help="training split (default: 'train' when the dataset has one, else all pairs)")
    t.add_argument("--val", help="validation dataset, or 'none' (default: the dataset's 'val' split, else a "
                                 "held-out fraction)")
    t.add_argument("--val-split", help="split of the validation dataset")
    t.add_argument("--val-fraction", type=float, help="pairs held out for validation without a val split (0.2)")
    t.add_argument("--epochs", type=int, help="epochs (default 10)")
    t.add_argument("--batch-size", type=int, help="crops per step and worker (default 8)")
    t.add_argument("--crop", type=int, help="random crop side in pixels (default 256)")
    t.add_argument("--crops-per-image", type=int, help="crops drawn from each pair per epoch (default 1)")
    t.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3; fine-tuning: try 1e-4)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    t.add_argument("--schedule", choices=("poly", "cosine"), help="decay after the warm-up (default poly)")
    t.add_argument("--warmup", type=float, help="linear warm-up, as a fraction of all steps (default 0.05)")
    t.add_argument("--loss", choices=("ce", "dice", "ce+dice"), help="cross-entropy (BCE for 1 output), Dice, or "
                                                                      "their sum (default)")
    t.add_argument("--change-weight", help="weight of change pixels in the cross-entropy: a number or auto "
                                           "(sqrt of the no-change/change ratio, default)")
    t.add_argument("--bands", type=_ints, help="1-based input bands (default: the weights', else all)")
    t.add_argument("--mean", type=_floats, help="normalisation mean per band of raw*scale (default: the weights', "
                                                "else computed from the training data)")
    t.add_argument("--std", type=_floats, help="normalisation std per band (with --mean)")
    t.add_argument("--label-values", help="NO_CHANGE,CHANGE[,NODATA] (default: recognised: 0/255, 0/1, 1/2)")
    t.add_argument("--num-classes", type=int, choices=(1, 2), help="outputs of a model trained from scratch")
    t.add_argument("--no-augment", dest="augment", action="store_false", help="random crops only")
    t.add_argument("--swap", type=float, help="temporal-swap probability (default 0.5 from scratch, 0 from weights)")
    t.add_argument("--seed", type=int, help="seed of initialisation, shuffling and augmentation (default 0)")
    t.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    t.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    t.add_argument("--num-workers", type=int, help="data-parallel workers (Ray Train); default 1 (in-process)")
    t.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default: 0 on Ray, the GPU if any "
                                                         "in-process)")
    t.add_argument("--cpus-per-worker", type=int, help="CPUs per Ray Train worker (default 1)")
    t.add_argument("--ray-address", help="train on this Ray cluster (default: a local runtime when --num-workers > 1)")
    t.add_argument("--loader-workers", type=int, help="data-loading processes per worker (default 0)")
    t.add_argument("--checkpoint-every", type=int, help="also save last.pt every N steps (default: each epoch)")
    t.add_argument("--val-tile", type=int, help="validate in tiles of this side (default 0: whole images)")
    t.add_argument("--val-halo", type=int, help="context margin of validation tiles (default 64)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")


def run_train(args: argparse.Namespace) -> int:
    """``changemap train``."""
    from models.weights import checkpoint_model
    from pipeline.errors import ChangemapError
    from pipeline.io.fs import download
    from pipeline.learn.training import TrainConfig, resume_config, train

    given = {k: v for k, v in vars(args).items() if k != "command"}
    if given.pop("resume", False):
        cfg = resume_config(given.pop("out"), given)
    else:
        if "model" not in given and given.get("weights"):
            given["model"] = checkpoint_model(given["weights"], fetch=download)
        missing = [f"--{k}" for k in ("model", "data") if not given.get(k)]
        if missing:
            raise ChangemapError(f"train needs {' and '.join(missing)} (or --resume to continue a run)")
        cfg = TrainConfig(**given)
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

    if not args.data:
        raise ChangemapError("evaluate --model/--weights needs --data DATASET (or give PRED LABEL rasters)")
    if args.prediction or args.label:
        raise ChangemapError("give either PRED LABEL or --data DATASET, not both")
    values = parse_label_values(args.label_values) if args.label_values else None

    def progress(done: int, total: int, name: str) -> None:
        print(f"\r{done}/{total} {name}", end="", file=sys.stderr, flush=True)

    scores = evaluate_dataset(args.model, args.weights, args.data, split=args.split, threshold=args.threshold,
                              label_values=values, bands=args.bands, tile=args.tile, halo=args.halo,
                              statistics=args.statistics, align=args.align,
                              progress=progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    width = max(len(n) for n, _ in scores.per_image)
    for name, c in scores.per_image:
        print(f"{name:<{width}}  F1 {c.f1:.4f}  IoU {c.iou:.4f}  precision {c.precision:.4f}  recall {c.recall:.4f}"
              f"  kappa {c.kappa:.4f}")
    c = scores.total
    print(f"{scores.model} ({scores.weights}, threshold {scores.threshold:.2f}) on {len(scores.per_image)} image(s) "
          f"of {args.data}: F1 {c.f1:.4f}  IoU {c.iou:.4f}  precision {c.precision:.4f}  recall {c.recall:.4f}  "
          f"OA {c.overall_accuracy:.4f}  kappa {c.kappa:.4f}  over {c.total:,} labelled pixels "
          f"[[TN {c.tn:,}, FP {c.fp:,}], [FN {c.fn:,}, TP {c.tp:,}]]")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, **scores.as_dict()}, indent=2))
    return 0
