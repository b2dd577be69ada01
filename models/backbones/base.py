"""What a backbone emits: one :class:`FeatureInfo` (channels, stride) per output level.

As timm's ``feature_info`` and segmentation_models_pytorch's ``out_channels`` /
``output_stride``: models size their necks and heads from it, and derive the size
their input must be a multiple of (:func:`size_divisor`) instead of hard-coding it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


class FeatureInfo(NamedTuple):
    """One output level: its channels and its stride (input pixels per feature pixel)."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """A feature extractor that declares its levels.

    Subclasses set ``feature_info`` (finest level first) and return exactly those levels,
    in that order, from :meth:`forward_features` (by default ``forward``). On an input whose
    height and width are multiples of :func:`size_divisor`, level ``i`` is
    ``(B, channels_i, H / stride_i, W / stride_i)``.
    """

    feature_info: list[FeatureInfo]

    @property
    def out_channels(self) -> list[int]:
        """Channels of each output level."""
        return [f.channels for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        """Stride of each output level."""
        return [f.stride for f in self.feature_info]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output levels of ``x``, as declared in ``feature_info``."""
        return self(x)


def size_divisor(levels: Sequence[FeatureInfo], extra: int = 1) -> int:
    """What input height and width must be multiples of so every level tiles the input exactly.

    Args:
        levels: The levels a model uses.
        extra: A further factor a head needs on top of the coarsest level (e.g. a patch size).
    """
    return math.lcm(*(f.stride for f in levels)) * extra
