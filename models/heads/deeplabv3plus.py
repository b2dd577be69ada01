"""DeepLabV3+ head (Chen et al., DeepLabV3+, ECCV 2018): ASPP on the deep features, decoder with the low-level ones."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.conv import ConvModule
from models.layers.pooling import GlobalMean


class ASPP(nn.Module):
    """1x1, three dilated 3x3 (6, 12, 18 x rate) and image-pooling branches, concatenated and projected."""

    def __init__(self, cin: int, cout: int = 256, rate: int = 1) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvModule(cin, cout, 1)] +
                                      [ConvModule(cin, cout, 3, dilation=d * rate) for d in (6, 12, 18)])
        self.pool = ConvModule(cin, cout, 1)
        self.mean = GlobalMean()
        self.project = ConvModule(cout * 5, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        pooled = F.interpolate(self.pool(self.mean(x)), size=x.shape[2:], mode="bilinear",
                               align_corners=True)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP(deep) upsampled to the low level, concat with 1x1(low) -> two 3x3 convs -> classifier."""

    def __init__(self, low_channels: int, deep_channels: int, num_classes: int = 2, rate: int = 1,
                 channels: int = 256, low_proj: int = 48) -> None:
        super().__init__()
        self.aspp = ASPP(deep_channels, channels, rate)
        self.shortcut_conv = ConvModule(low_channels, low_proj, 1)
        self.cat_conv = nn.Sequential(ConvModule(channels + low_proj, channels, 3), nn.Dropout(0.5),
                                      ConvModule(channels, channels, 3), nn.Dropout(0.1))
        self.cls_conv = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:  # noqa: D102
        low, deep = feats
        x = F.interpolate(self.aspp(deep), size=low.shape[2:], mode="bilinear", align_corners=True)
        return self.cls_conv(self.cat_conv(torch.cat([x, self.shortcut_conv(low)], dim=1)))
