"""Binary change metrics from a confusion matrix (summed over images, never averaged)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """Pixel counts of the change class."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def precision(self) -> float:  # noqa: D102
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:  # noqa: D102
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:  # noqa: D102
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    @property
    def iou(self) -> float:  # noqa: D102
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else 1.0

    @property
    def total(self) -> int:  # noqa: D102
        return self.tp + self.fp + self.fn + self.tn

    @property
    def overall_accuracy(self) -> float:  # noqa: D102
        return (self.tp + self.tn) / self.total if self.total else 1.0

    @property
    def kappa(self) -> float:
        """Cohen's kappa: agreement beyond chance."""
        n = self.total
        if not n:
            return 1.0
        expected = ((self.tp + self.fp) * (self.tp + self.fn) + (self.tn + self.fn) * (self.tn + self.fp)) / (n * n)
        return (self.overall_accuracy - expected) / (1 - expected) if expected < 1 else 1.0

    def as_dict(self) -> dict[str, float | int | list[list[int]]]:
        """Scores and the confusion matrix ``[[tn, fp], [fn, tp]]`` (rows: label, columns: prediction)."""
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "iou": self.iou,
                "overall_accuracy": self.overall_accuracy, "kappa": self.kappa, "pixels": self.total,
                "confusion_matrix": [[self.tn, self.fp], [self.fn, self.tp]]}


def confusion(pred: np.ndarray, label: np.ndarray, valid: np.ndarray | None = None) -> Confusion:
    """Confusion counts of boolean ``pred`` against boolean ``label`` over ``valid`` pixels."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    p, t = pred.astype(bool), label.astype(bool)
    v = np.ones_like(p) if valid is None else valid.astype(bool)
    return Confusion(
        tp=int((p & t & v).sum()), fp=int((p & ~t & v).sum()),
        fn=int((~p & t & v).sum()), tn=int((~p & ~t & v).sum()),
    )
