"""GhostNet (Han et al., GhostNet, CVPR 2020) backbone: four output levels (strides 4, 8, 16, 32)."""
from __future__ import annotations

import torch
from torch import nn

from models.backbones.base import Backbone, FeatureInfo
from models.layers.ghost import GhostBottleneck
from models.layers.helpers import make_divisible
from models.registry import register_backbone

# Per level: (kernel, expansion, out channels, se_ratio, stride) of GhostNet 1.0x.
_LEVELS = (
    ((3, 16, 16, 0.0, 1), (3, 48, 24, 0.0, 2), (3, 72, 24, 0.0, 1)),
    ((5, 72, 40, 0.25, 2), (5, 120, 40, 0.25, 1)),
    ((3, 240, 80, 0.0, 2), (3, 200, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 184, 80, 0.0, 1),
     (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2), (5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1)),
)


@register_backbone("ghostnet")
class GhostNetBackbone(Backbone):
    """Stem (3x3 stride 2) and four stages of Ghost bottlenecks.

    Args:
        in_channels: Input bands.
        width: Multiplier of every layer's width (rounded to multiples of 4).
        se: Squeeze-excite (Hu et al., SE, CVPR 2018) in the bottlenecks that have it in GhostNet.
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, se: bool = True) -> None:
        super().__init__()
        stem = make_divisible(16 * width, 4)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))
        self.stages = nn.ModuleList()
        self.feature_info: list[FeatureInfo] = []
        cin, stride = stem, 2
        for level in _LEVELS:
            blocks = []
            for k, exp, c, se_ratio, s in level:
                cout = make_divisible(c * width, 4)
                blocks.append(GhostBottleneck(cin, make_divisible(exp * width, 4), cout, k, s, se_ratio if se else 0.0))
                cin, stride = cout, stride * s
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(cin, stride))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # noqa: D102
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
