"""Changer head (Fang et al., Changer, TGRS 2023).

Per-date MLP decoding, flow dual-alignment fusion (FDAF), MixFFN, classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.conv import ConvModule


class FDAF(nn.Module):
    """Predict two 2-D flows from both dates, warp each date by its flow and subtract the other."""

    def __init__(self, channels: int, kernel: int = 5) -> None:
        super().__init__()
        c2 = 2 * channels
        self.flow_make = nn.Sequential(
            nn.Conv2d(c2, c2, kernel, padding=kernel // 2, groups=c2, bias=True), nn.InstanceNorm2d(c2), nn.GELU(),
            nn.Conv2d(c2, 4, 1, bias=False))

    @staticmethod
    def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Sample ``x`` at positions shifted by ``flow`` (pixels, (dx, dy))."""
        n, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).expand(n, h, w, 2)
        norm = torch.tensor([w, h], device=x.device, dtype=x.dtype)
        return F.grid_sample(x, grid + flow.permute(0, 2, 3, 1) / norm, align_corners=True)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:  # noqa: D102
        f1, f2 = self.flow_make(torch.cat([x1, x2], dim=1)).chunk(2, dim=1)
        return torch.cat([self.warp(x1, f1) - x2, self.warp(x2, f2) - x1], dim=1)


class MixFFN2d(nn.Module):
    """x + (1x1 conv, 3x3 depthwise conv, GELU, 1x1 conv)(x), on NCHW maps."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
                                    nn.GELU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x + self.layers(x)


class ChangerHead(nn.Module):
    """Decode each date (shared 1x1 ConvModules, upsample to 1/4, concat, fuse to channels/2), FDAF, MixFFN."""

    def __init__(self, in_channels: list[int], channels: int = 128, num_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ConvModule(c, channels, 1) for c in in_channels])
        self.fusion_conv = ConvModule(channels * len(in_channels), channels // 2, 1)
        self.neck_layer = FDAF(channels // 2)
        self.discriminator = MixFFN2d(channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def _decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[2:]
        outs = [F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
                for conv, f in zip(self.convs, feats)]
        return self.fusion_conv(torch.cat(outs, dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``feats``: levels holding both dates concatenated on channels."""
        halves = [f.chunk(2, dim=1) for f in feats]
        out = self.neck_layer(self._decode([a for a, _ in halves]), self._decode([b for _, b in halves]))
        return self.conv_seg(self.dropout(self.discriminator(out)))
