"""Training records in the run folder: metrics.csv (one row per epoch) and curve.png."""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from pipeline.io import fs

COLUMNS = ("epoch", "steps", "lr", "seconds", "train_loss", "train_f1", "val_f1", "val_precision", "val_recall",
           "val_iou", "val_overall_accuracy", "val_kappa", "val_threshold", "val_f1_at_0.5")


def write_metrics(path: str | os.PathLike, history: Sequence[dict]) -> None:
    """Rewrite the whole CSV from the history (so a resumed run's file has each epoch once)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float)
                                                                else row[k])) for k in COLUMNS})

    fs.publish(str(path), write)


def read_metrics(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """The rows of a metrics.csv as numbers (None for empty cells)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(path: str | os.PathLike, history: Sequence[dict], title: str = "") -> None:
    """Training loss and F1 (training, validation) per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_f1.plot(epochs, [r["train_f1"] for r in history], "o-", label="training F1 (threshold 0.5)")
    if any(r.get("val_f1") is not None for r in history):
        ax_f1.plot(epochs, [r.get("val_f1") for r in history], "s-", label="validation F1 (best threshold)")
    ax_f1.set_xlabel("epoch")
    ax_f1.set_ylabel("F1 of the change class")
    ax_f1.set_ylim(0, 1)
    ax_f1.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fs.publish(str(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    finally:
        plt.close(fig)
