"""A GhostNet backbone with four output levels (strides 4, 8, 16, 32), built from Ghost bottlenecks."""
from __future__ import annotations

import torch
from torch import nn

from models.backbones.efficientnet import StageInfo, _make_divisible
from models.layers.ghost import GhostBottleneck

# Per level: (kernel, expansion, out channels, se_ratio, stride) of GhostNet 1.0x.
_LEVELS = (
    ((3, 16, 16, 0.0, 1), (3, 48, 24, 0.0, 2), (3, 72, 24, 0.0, 1)),
    ((5, 72, 40, 0.25, 2), (5, 120, 40, 0.25, 1)),
    ((3, 240, 80, 0.0, 2), (3, 200, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 184, 80, 0.0, 1),
     (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2), (5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1)),
)


class GhostNetBackbone(nn.Module):
    """Stem (3x3 stride 2) and four stages of Ghost bottlenecks; ``width`` scales every layer."""

    def __init__(self, in_channels: int = 3, width: float = 1.0, se: bool = True) -> None:
        super().__init__()
        stem = _make_divisible(16 * width, 4)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))
        self.stages = nn.ModuleList()
        self.feature_info: list[StageInfo] = []
        cin, stride = stem, 2
        for level in _LEVELS:
            blocks = []
            for k, exp, c, se_ratio, s in level:
                cout = _make_divisible(c * width, 4)
                blocks.append(GhostBottleneck(cin, _make_divisible(exp * width, 4), cout, k, s, se_ratio if se else 0.0))
                cin, stride = cout, stride * s
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(StageInfo(cin, stride))

    @property
    def out_channels(self) -> list[int]:
        """Channels of each output level."""
        return [f.channels for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # noqa: D102
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
