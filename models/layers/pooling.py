"""Global average pooling as a module of its own.

Every squeeze-excite gate and image-pooling branch of the zoo pools through
:class:`GlobalMean`, so that :mod:`models.statistics` can find the layers whose output
depends on the whole input window and replace their window mean by a scene mean.
"""
from __future__ import annotations

import torch
from torch import nn


class GlobalMean(nn.Module):
    """``(B, C, H, W)`` -> ``(B, C, 1, 1)``: the mean over the spatial dimensions (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.mean((2, 3), keepdim=True)
