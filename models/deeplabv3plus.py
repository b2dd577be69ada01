"""Siamese DeepLabV3+ (Chen et al., DeepLabV3+, ECCV 2018) over MobileNetV2 (Sandler et al., CVPR 2018).

A shared encoder on both dates, the (low-level, deep) features fused per level, and the
DeepLabV3+ decoder: ASPP on the deep features joined with the low-level ones.
"""
from __future__ import annotations

from typing import Any

import torch

from models.backbones.base import size_divisor
from models.base import ChangeModel
from models.heads.deeplabv3plus import DeepLabV3PlusHead
from models.necks.fusion import FeatureFusionNeck
from models.registry import create_backbone, register_model


class SiameseDeepLabV3Plus(ChangeModel):
    """MobileNetV2 on both dates, (low, deep) features fused per level, DeepLabV3+ decoding.

    Args:
        in_channels: Input bands.
        num_classes: Output classes.
        downsample_factor: Output stride of the encoder, 8 or 16 (the ASPP rates scale with it).
        fusion: How the dates' features are fused (:class:`~models.necks.fusion.FeatureFusionNeck`).
    """

    resize_align_corners = True

    def __init__(self, in_channels: int = 3, num_classes: int = 2, downsample_factor: int = 16,
                 fusion: str = "concat") -> None:
        super().__init__(num_classes)
        self.backbone = create_backbone("mobilenetv2", in_channels=in_channels, downsample_factor=downsample_factor)
        self.size_divisor = size_divisor(self.backbone.feature_info)
        self.neck = FeatureFusionNeck(fusion)
        low, deep = self.neck.out_channels(self.backbone.out_channels)
        self.decode_head = DeepLabV3PlusHead(low, deep, num_classes, rate=16 // downsample_factor)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.decode_head(self.neck(self.backbone(before), self.backbone(after)))


@register_model("deeplabv3plus-mobilenetv2", "Siamese DeepLabV3+ over MobileNetV2 (output stride 16, concat fusion)")
def deeplabv3plus_mobilenetv2(in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> SiameseDeepLabV3Plus:
    """Siamese DeepLabV3+ / MobileNetV2."""
    return SiameseDeepLabV3Plus(in_channels, num_classes, **kwargs)
