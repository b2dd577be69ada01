"""ChangeFormer as open-cd builds ``changeformer-mitb0``: siamese MiT, per-level fusion, SegFormer head."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.backbones.mit import mit
from models.base import ChangeModel
from models.heads.segformer import SegformerHead
from models.necks.fusion import FeatureFusionNeck
from models.registry import register_model


class ChangeFormer(ChangeModel):
    """One MiT shared by both dates, a fusion neck, a SegFormer head; logits upsampled to the input."""

    size_divisor = 32

    def __init__(self, variant: str = "b0", in_channels: int = 3, num_classes: int = 2, fusion: str = "concat",
                 channels: int = 256, drop_path_rate: float = 0.1, with_cp: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = mit(variant, in_channels, drop_path_rate=drop_path_rate, with_cp=with_cp)
        self.neck = FeatureFusionNeck(fusion)
        self.decode_head = SegformerHead(self.neck.out_channels(self.backbone.out_channels), channels, num_classes)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # noqa: D102
        feats = self.neck(self.backbone(before), self.backbone(after))
        return F.interpolate(self.decode_head(feats), size=before.shape[-2:], mode="bilinear", align_corners=False)


@register_model("changeformer-mit-b0", "ChangeFormer: siamese MiT-b0 + concat fusion + SegFormer head (open-cd)")
def changeformer_mit_b0(in_channels: int = 3, num_classes: int = 2, **kwargs) -> ChangeFormer:
    """ChangeFormer with a MiT-b0 encoder."""
    return ChangeFormer("b0", in_channels, num_classes, **kwargs)
