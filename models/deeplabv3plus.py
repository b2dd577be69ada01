"""Siamese DeepLabV3+ with a MobileNetV2 backbone (seed 002): shared encoder, fused features, DeepLabV3+ head."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.backbones.mobilenetv2 import MobileNetV2
from models.base import ChangeModel
from models.heads.deeplabv3plus import DeepLabV3PlusHead
from models.necks.fusion import FeatureFusionNeck
from models.registry import register_model


class SiameseDeepLabV3Plus(ChangeModel):
    """MobileNetV2 on both dates, (low, deep) features fused per level, DeepLabV3+ decoding."""

    size_divisor = 16

    def __init__(self, in_channels: int = 3, num_classes: int = 2, downsample_factor: int = 16,
                 fusion: str = "concat") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = MobileNetV2(in_channels, downsample_factor)
        self.neck = FeatureFusionNeck(fusion)
        low, deep = self.neck.out_channels(self.backbone.out_channels)
        self.decode_head = DeepLabV3PlusHead(low, deep, num_classes, rate=16 // downsample_factor)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # noqa: D102
        logits = self.decode_head(self.neck(self.backbone(before), self.backbone(after)))
        return F.interpolate(logits, size=before.shape[-2:], mode="bilinear", align_corners=True)


@register_model("deeplabv3plus-mobilenetv2", "Siamese DeepLabV3+ over MobileNetV2 (output stride 16, concat fusion)")
def deeplabv3plus_mobilenetv2(in_channels: int = 3, num_classes: int = 2, **kwargs) -> SiameseDeepLabV3Plus:
    """Siamese DeepLabV3+ / MobileNetV2."""
    return SiameseDeepLabV3Plus(in_channels, num_classes, **kwargs)
