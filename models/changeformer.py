"""ChangeFormer (Bandara & Patel, ChangeFormer, IGARSS 2022) as open-cd builds ``changeformer-mitb*``.

A MiT encoder (Xie et al., SegFormer, NeurIPS 2021) shared by both dates, the two feature
pyramids fused level by level, and SegFormer's all-MLP decode head. (The paper's own
decoder computes difference modules; open-cd's configuration, whose checkpoints load
here, concatenates instead.)
"""
from __future__ import annotations

from typing import Any

import torch

from models.backbones.base import size_divisor
from models.base import ChangeModel
from models.heads.segformer import SegformerHead
from models.necks.fusion import FeatureFusionNeck
from models.registry import create_backbone, register_model


class ChangeFormer(ChangeModel):
    """One MiT shared by both dates, a fusion neck, a SegFormer head (logits at 1/4 of the input)."""

    def __init__(self, variant: str = "b0", in_channels: int = 3, num_classes: int = 2, fusion: str = "concat",
                 channels: int = 256, drop_path_rate: float = 0.1, with_cp: bool = False) -> None:
        super().__init__(num_classes)
        self.backbone = create_backbone("mit", variant=variant, in_channels=in_channels,
                                        drop_path_rate=drop_path_rate, with_cp=with_cp)
        self.size_divisor = size_divisor(self.backbone.feature_info)
        self.neck = FeatureFusionNeck(fusion)
        self.decode_head = SegformerHead(self.neck.out_channels(self.backbone.out_channels), channels, num_classes)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.decode_head(self.neck(self.backbone(before), self.backbone(after)))


@register_model("changeformer-mit-b0", "ChangeFormer: siamese MiT-b0 + concat fusion + SegFormer head (open-cd)")
def changeformer_mit_b0(**kwargs: Any) -> ChangeFormer:
    """ChangeFormer with a MiT-b0 encoder (embed 32, layers 2-2-2-2)."""
    return ChangeFormer("b0", **kwargs)


@register_model("changeformer-mit-b1", "ChangeFormer: siamese MiT-b1 + concat fusion + SegFormer head (open-cd)")
def changeformer_mit_b1(**kwargs: Any) -> ChangeFormer:
    """ChangeFormer with a MiT-b1 encoder (embed 64, layers 2-2-2-2)."""
    return ChangeFormer("b1", **kwargs)


@register_model("changeformer-mit-b2", "ChangeFormer: siamese MiT-b2 + concat fusion + SegFormer head (open-cd)")
def changeformer_mit_b2(**kwargs: Any) -> ChangeFormer:
    """ChangeFormer with a MiT-b2 encoder (embed 64, layers 3-4-6-3)."""
    return ChangeFormer("b2", **kwargs)
