"""The model contract every change-detection model in the zoo follows.

A model takes one tensor ``(B, 2, C, H, W)`` (before, after) and returns logits
``(B, K, H, W)`` at the input resolution: ``K == 1`` is a sigmoid change logit,
``K == 2`` are softmax classes (no change, change).
"""
from __future__ import annotations

from numbers import Integral
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class ChangeModel(nn.Module):
    """Base class: checks the input contract, resizes the logits to the input, names the output convention.

    Subclasses call ``super().__init__(num_classes)``, set ``size_divisor`` (derived from
    their backbone's strides: :func:`models.backbones.base.size_divisor`) and implement
    :meth:`forward_pair`, which may return logits at a coarser resolution: :meth:`forward`
    resizes them bilinearly to the input's height and width (``resize_align_corners``).
    """

    #: ``deep`` (trained weights) or ``scene-fitted`` (parameters fitted to each scene: :mod:`models.fitting`).
    kind: ClassVar[str] = "deep"
    #: Spatial size the input height and width must be a multiple of.
    size_divisor: int = 1
    num_classes: int = 1
    #: ``align_corners`` of the final bilinear resize of the logits.
    resize_align_corners: bool = False
    #: The model takes the raw pixel values (any dtype, on its device) and scales them itself; otherwise
    #: the pipeline feeds it ``(raw * scale - mean) / std`` of its weights' metadata as float32.
    takes_raw: bool = False

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer (1: sigmoid, 2: softmax), got {num_classes!r}")
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.ndim != 5 or x.shape[1] != 2:
            raise ValueError(
                f"expected a (B, 2, C, H, W) tensor of before/after images, got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(
                f"input height and width must be multiples of {self.size_divisor}, got {h}x{w}; "
                "pad the input (the pipeline does this for you)"
            )
        logits = self.forward_pair(x[:, 0], x[:, 1])
        if logits.shape[-2:] == (h, w):
            return logits
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=self.resize_align_corners)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, K, h, w)`` for one batch of image pairs, at the input resolution or coarser."""
        raise NotImplementedError

    def change_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Turn logits ``(B, K, H, W)`` into the probability of change ``(B, H, W)``."""
        return change_probability(logits)


def change_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` logits -> probability of change ``(B, H, W)``: sigmoid of one output, else softmax[1]."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]
