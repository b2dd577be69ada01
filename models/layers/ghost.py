"""Ghost modules (Han et al., GhostNet, CVPR 2020): cheap depthwise "ghost" features next to a primary conv."""
from __future__ import annotations

import math

import torch
from torch import nn

from models.layers.attention import build_plugin


class GhostModule(nn.Module):
    """Primary conv to ceil(oup / ratio) channels, cheap depthwise conv for the rest, keep ``oup``."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True) -> None:
        super().__init__()
        if ratio < 2:
            raise ValueError(f"GhostModule ratio must be at least 2, got {ratio}")
        self.oup = oup
        init = math.ceil(oup / ratio)
        new = init * (ratio - 1)
        act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init, kernel_size, stride, kernel_size // 2, bias=False), nn.BatchNorm2d(init), act)
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init, new, dw_size, 1, dw_size // 2, groups=init, bias=False), nn.BatchNorm2d(new),
            nn.ReLU(inplace=True) if relu else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x1 = self.primary_conv(x)
        return torch.cat([x1, self.cheap_operation(x1)], dim=1)[:, : self.oup]


class GhostBottleneck(nn.Module):
    """Ghost expand, stride-2 depthwise conv when stride > 1, optional SE plugin, ghost project, shortcut."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0) -> None:
        super().__init__()
        self.ghost1 = GhostModule(in_chs, mid_chs, relu=True)
        self.stride = stride
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride, (dw_kernel_size - 1) // 2,
                                     groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        self.se = build_plugin({"type": "se", "reduction": round(1 / se_ratio)}, mid_chs) if se_ratio > 0 else nn.Identity()
        self.ghost2 = GhostModule(mid_chs, out_chs, relu=False)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride, (dw_kernel_size - 1) // 2, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs), nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.ghost1(x)
        if self.stride > 1:
            y = self.bn_dw(self.conv_dw(y))
        return self.ghost2(self.se(y)) + self.shortcut(x)
