"""TransUNet's cascaded upsampler (DecoderCup) and segmentation head (Chen et al., TransUNet, 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.conv import ConvModule


class DecoderBlock(nn.Module):
    """Bilinear x2 upsample, concat the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, skip: int) -> None:
        super().__init__()
        self.conv1 = ConvModule(cin + skip, cout, 3)
        self.conv2 = ConvModule(cout, cout, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """3x3 conv to 512 then four decoder blocks using ``n_skip`` skips; a 3x3 conv to the classes."""

    def __init__(self, hidden: int, skip_channels: tuple[int, ...], num_classes: int,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 16), n_skip: int = 3, head: int = 512) -> None:
        super().__init__()
        self.conv_more = ConvModule(hidden, head, 3)
        ins = (head,) + tuple(decoder_channels[:-1])
        skips = list(skip_channels[:n_skip]) + [0] * (len(decoder_channels) - n_skip)
        self.n_skip = n_skip
        self.blocks = nn.ModuleList([DecoderBlock(i, o, s) for i, o, s in zip(ins, decoder_channels, skips)])
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:  # noqa: D102
        x = self.conv_more(x)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < self.n_skip else None)
        return self.segmentation_head(x)
