"""The model contract every change-detection model in the zoo follows.

A model takes one tensor ``(B, 2, C, H, W)`` (before, after) and returns logits
``(B, K, H, W)`` at the input resolution: ``K == 1`` is a sigmoid change logit,
``K == 2`` are softmax classes (no change, change).
"""
from __future__ import annotations

import torch
from torch import nn


class ChangeModel(nn.Module):
    """Base class: checks the input contract and names the output convention.

    Subclasses implement :meth:`forward_pair` and set ``num_classes``.
    """

    #: Spatial size the input height and width must be a multiple of.
    size_divisor: int = 1
    num_classes: int = 1

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
        return self.forward_pair(x[:, 0], x[:, 1])

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, K, H, W)`` for one batch of image pairs."""
        raise NotImplementedError

    def change_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Turn logits ``(B, K, H, W)`` into the probability of change ``(B, H, W)``."""
        return change_probability(logits)


def change_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, H, W)`` logits -> probability of change ``(B, H, W)``: sigmoid of one output, else softmax[1]."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]
