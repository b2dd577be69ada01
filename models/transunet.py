"""Siamese TransUNet (Chen et al., TransUNet, 2021).

A shared R50-ViT hybrid encoder, fused tokens and skips, and TransUNet's cascaded upsampler (CUP).
"""
from __future__ import annotations

from typing import Any

import torch

from models.backbones.base import size_divisor
from models.backbones.resnetv2_vit import HybridViTEncoder, ViTConfig
from models.base import ChangeModel
from models.heads.transunet import DecoderCup
from models.necks.fusion import FeatureFusionNeck
from models.registry import register_model


class SiameseTransUNet(ChangeModel):
    """Encoder on both dates; tokens and every skip fused by the neck; TransUNet decoder."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, block_units: tuple[int, int, int] = (3, 4, 9),
                 width_factor: float = 1.0, vit: ViTConfig = ViTConfig(), fusion: str = "concat",
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 16), head: int = 512) -> None:
        super().__init__(num_classes)
        self.encoder = HybridViTEncoder(in_channels, block_units, width_factor, vit)
        self.size_divisor = size_divisor(self.encoder.feature_info)
        self.neck = FeatureFusionNeck(fusion)
        hidden, *skips = self.neck.out_channels([vit.hidden, *self.encoder.hybrid.skip_channels])
        self.decoder = DecoderCup(hidden, tuple(skips), num_classes, decoder_channels, head=head)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (t1, s1), (t2, s2) = self.encoder(before), self.encoder(after)
        fused = self.neck([t1, *s1], [t2, *s2])
        return self.decoder(fused[0], fused[1:])


@register_model("transunet-r50-vit-b16", "Siamese TransUNet, R50-ViT-B/16 hybrid encoder + cascaded upsampler")
def transunet_r50_vit_b16(in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> SiameseTransUNet:
    """The full R50-ViT-B/16 configuration (hidden 768, 12 layers, 12 heads, MLP 3072)."""
    return SiameseTransUNet(in_channels, num_classes, **kwargs)


def transunet_small(in_channels: int = 3, num_classes: int = 2) -> SiameseTransUNet:
    """A small configuration for tests: (1, 1, 1) units, width 32, 2 layers of width 64."""
    return SiameseTransUNet(in_channels, num_classes, block_units=(1, 1, 1), width_factor=0.5,
                            vit=ViTConfig(hidden=64, layers=2, heads=4, mlp_dim=128, grid=4),
                            decoder_channels=(64, 32, 32, 16), head=64)
