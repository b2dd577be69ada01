"""MobileNetV2 (Sandler et al., MobileNetV2, CVPR 2018) with an output stride of 8 or 16.

Past the output stride the strided convs become dilated ones, as DeepLabV3+ (Chen et al.,
DeepLabV3+, ECCV 2018) runs its encoders.
"""
from __future__ import annotations

import torch
from torch import nn

from models.backbones.base import Backbone, FeatureInfo
from models.registry import register_backbone

# (expand t, channels c, repeats n, stride s)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
DOWN_INDICES = (2, 4, 7, 14)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1,
             act: bool = True) -> list[nn.Module]:
    pad = (kernel // 2) * dilation
    layers = [nn.Conv2d(cin, cout, kernel, stride, pad, dilation, groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + ([nn.ReLU6(inplace=True)] if act else [])


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1), 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers = [] if expand_ratio == 1 else _conv_bn(inp, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, oup, 1, act=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _dilate(block: nn.Module, dilate: int) -> None:
    """Turn a block's stride-2 3x3 conv into stride 1 with dilation dilate // 2; dilate other 3x3 convs."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            if m.stride == (2, 2):
                m.stride, m.dilation, m.padding = (1, 1), (dilate // 2,) * 2, (dilate // 2,) * 2
            else:
                m.dilation, m.padding = (dilate, dilate), (dilate, dilate)


@register_backbone("mobilenetv2")
class MobileNetV2(Backbone):
    """The 18 feature layers (the final 1x1 conv to 1280 is dropped); returns (low-level, deep) features.

    Low level = ``features[:4]`` (24 channels, 1/4); deep = ``features[4:]`` (320 channels,
    1/16 with ``downsample_factor=16``, 1/8 with 8).

    Args:
        in_channels: Input bands.
        downsample_factor: Output stride of the deep features, 8 or 16.
    """

    def __init__(self, in_channels: int = 3, downsample_factor: int = 16) -> None:
        super().__init__()
        if downsample_factor not in (8, 16):
            raise ValueError(f"downsample_factor must be 8 or 16, got {downsample_factor}")
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(in_channels, 32, 3, 2))]
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)
        if downsample_factor == 8:
            for i in range(DOWN_INDICES[-2], DOWN_INDICES[-1]):
                _dilate(self.features[i], 2)
            for i in range(DOWN_INDICES[-1], len(self.features)):
                _dilate(self.features[i], 4)
        else:
            for i in range(DOWN_INDICES[-1], len(self.features)):
                _dilate(self.features[i], 2)
        self.feature_info = [FeatureInfo(SETTINGS[1][1], 4), FeatureInfo(cin, downsample_factor)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # noqa: D102
        low = self.features[:4](x)
        return [low, self.features[4:](low)]
