"""Training losses for change logits ``(B, K, H, W)``: cross-entropy (BCE for K = 1), Dice, their sum.

Pixels outside ``valid`` (image nodata, unlabeled label pixels, crop padding) count nowhere.
Class imbalance: the change class can be weighted (``change_weight``) in the cross-entropy,
and the Dice term is insensitive to how rare change is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.base import change_probability

LOSSES = ("ce", "dice", "ce+dice")


def auto_change_weight(change_fraction: float, cap: float = 10.0) -> float:
    """Weight of change pixels in the cross-entropy: sqrt(no-change / change), within [1, cap].

    The square root (rather than the full ratio) keeps probabilities near calibrated;
    the threshold that maximises validation F1 is chosen after training anyway.
    """
    if change_fraction <= 0 or change_fraction >= 1:
        return 1.0
    return float(min(cap, max(1.0, ((1 - change_fraction) / change_fraction) ** 0.5)))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                  change_weight: float = 1.0) -> torch.Tensor:
    """Mean (weighted) BCE / CE over valid pixels; ``target`` holds 0/1."""
    t = target.float()
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], t, reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
    weight = valid.float() * (1 + (change_weight - 1) * t)
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


def dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss of the change class over the valid pixels of the whole batch."""
    p = change_probability(logits.float()) * valid
    t = target.float() * valid
    inter = (p * t).sum()
    return 1 - (2 * inter + eps) / (p.sum() + t.sum() + eps)


class ChangeLoss(torch.nn.Module):
    """``ce``, ``dice`` or ``ce+dice`` (their sum)."""

    def __init__(self, kind: str = "ce+dice", change_weight: float = 1.0) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
        self.kind = kind
        self.change_weight = change_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # noqa: D102
        logits = logits.float()  # losses in float32 under autocast
        loss = logits.new_zeros(())
        if "ce" in self.kind.split("+"):
            loss = loss + cross_entropy(logits, target, valid, self.change_weight)
        if "dice" in self.kind.split("+"):
            loss = loss + dice(logits, target, valid)
        return loss
