"""EfficientNet B0-B7 (Tan & Le, EfficientNet, ICML 2019) feature stages in plain PyTorch.

The module layout mirrors torchvision's ``efficientnet_bN().features`` so that
checkpoints trained on top of it (TinyCD's backbone is ``efficientnet_b4`` stages
0-3) load with ``strict=True``: stage ``0`` is the stem, stages ``1..7`` are
lists of MBConv blocks whose ``block`` holds (expand, depthwise, squeeze-excite,
project) sub-modules.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from models.backbones.base import Backbone, FeatureInfo
from models.layers.drop import StochasticDepth
from models.layers.helpers import make_divisible
from models.layers.pooling import GlobalMean
from models.registry import register_backbone

# (expand_ratio, kernel, stride, in_channels, out_channels, num_layers) of EfficientNet-B0.
_B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# (width_mult, depth_mult) per variant.
_SCALING = {
    "b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4),
    "b4": (1.4, 1.8), "b5": (1.6, 2.2), "b6": (1.8, 2.6), "b7": (2.0, 3.1),
}


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + optional activation, indexed 0/1/2 like torchvision."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.SiLU, bn_eps: float = 1e-5) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., SE, CVPR 2018) with 1x1 convs named ``fc1``/``fc2`` (torchvision layout)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.act = nn.SiLU(inplace=True)
        self.pool = GlobalMean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        scale = self.pool(x)
        scale = torch.sigmoid(self.fc2(self.act(self.fc1(scale))))
        return x * scale


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al., MobileNetV2, CVPR 2018) with squeeze-excite: EfficientNet's block."""

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int,
                 drop_prob: float, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        hidden = make_divisible(cin * expand)
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvNormAct(cin, hidden, 1, bn_eps=bn_eps))
        layers.append(ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, bn_eps=bn_eps))
        layers.append(SqueezeExcitation(hidden, max(1, cin // 4)))
        layers.append(ConvNormAct(hidden, cout, 1, act=None, bn_eps=bn_eps))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.block(x)
        if self.use_residual:
            out = self.stochastic_depth(out) + x
        return out


@register_backbone("efficientnet")
class EfficientNet(Backbone, nn.ModuleList):
    """The first ``num_stages`` feature stages of EfficientNet-``variant`` (stage 0 = stem).

    A ``ModuleList`` of the stages, so the keys are torchvision's ``features.{i}`` without the
    prefix. Stochastic depth rises linearly over the blocks of the *whole* network, as in the
    reference implementation, so truncated and full backbones train alike.

    Args:
        variant: ``b0`` .. ``b7``.
        num_stages: How many of the 8 stages to build (1-8).
        in_channels: Input bands.
        stochastic_depth: Drop probability of the last block of the full network.
        out_indices: The stages whose outputs :meth:`forward` returns (default all built).
    """

    def __init__(self, variant: str = "b0", num_stages: int = 8, in_channels: int = 3,
                 stochastic_depth: float = 0.2, out_indices: Sequence[int] | None = None) -> None:
        if variant not in _SCALING:
            raise ValueError(f"unknown EfficientNet variant {variant!r}; choose one of {sorted(_SCALING)}")
        if not 1 <= num_stages <= 8:
            raise ValueError(f"num_stages must be between 1 and 8, got {num_stages}")
        out_indices = tuple(range(num_stages)) if out_indices is None else tuple(out_indices)
        if not out_indices or not all(0 <= i < num_stages for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must name stages 0..{num_stages - 1}")
        width, depth = _SCALING[variant]
        bn_eps = 1e-3 if variant in ("b5", "b6", "b7") else 1e-5
        stages_cfg = [
            (e, k, s, make_divisible(ci * width), make_divisible(co * width), int(math.ceil(n * depth)))
            for e, k, s, ci, co, n in _B0_STAGES
        ]
        total_blocks = sum(cfg[-1] for cfg in stages_cfg)
        stem_out = stages_cfg[0][3]
        stages: list[nn.Module] = [ConvNormAct(in_channels, stem_out, 3, 2, bn_eps=bn_eps)]
        info = [FeatureInfo(stem_out, 2)]
        block_id, stride = 0, 2
        for expand, kernel, s, cin, cout, n in stages_cfg[: num_stages - 1]:
            blocks = []
            for i in range(n):
                p = stochastic_depth * block_id / total_blocks
                blocks.append(MBConv(expand, kernel, s if i == 0 else 1, cin if i == 0 else cout, cout, p, bn_eps))
                block_id += 1
            stride *= s
            stages.append(nn.Sequential(*blocks))
            info.append(FeatureInfo(cout, stride))
        super().__init__(stages)
        self.out_indices = out_indices
        self.stage_info = info
        self.feature_info = [info[i] for i in out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # noqa: D102
        outs = []
        for i, stage in enumerate(self):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
