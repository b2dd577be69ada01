"""Small shape helpers shared by backbones and heads."""
from __future__ import annotations

import torch


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never more than 10 % below ``value``.

    The rounding of MobileNetV2 (Sandler et al., CVPR 2018), used by EfficientNet and GhostNet
    to scale widths.
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def nlc_to_nchw(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Tokens ``(B, H*W, C)`` -> map ``(B, C, H, W)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)
