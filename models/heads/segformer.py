"""SegFormer's all-MLP decode head (Xie et al., SegFormer, NeurIPS 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.conv import ConvModule


class SegformerHead(nn.Module):
    """Per level a 1x1 ConvModule to ``channels``, upsample to the finest level, concat, fuse, classify."""

    def __init__(self, in_channels: list[int], channels: int = 256, num_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ConvModule(c, channels, 1) for c in in_channels])
        self.fusion_conv = ConvModule(channels * len(in_channels), channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:  # noqa: D102
        size = feats[0].shape[2:]
        outs = [F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
                for conv, f in zip(self.convs, feats)]
        return self.conv_seg(self.dropout(self.fusion_conv(torch.cat(outs, dim=1))))
