"""Changer (Fang et al., 2023) as open-cd configures ChangerEx: interaction backbone + Changer head."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.ghostnet import GhostNetBackbone
from models.backbones.interaction import IAMixVisionTransformer, StagedInteraction, ia_resnet_v1c
from models.base import ChangeModel
from models.heads.changer import ChangerHead
from models.layers.interaction import CHANGER_EX
from models.registry import register_model


class Changer(ChangeModel):
    """Any interaction backbone with ``forward_pair``/``out_channels`` + the Changer head."""

    size_divisor = 32

    def __init__(self, backbone: nn.Module, num_classes: int = 2, channels: int = 128) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.decode_head = ChangerHead([c // 2 for c in backbone.out_channels], channels, num_classes)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # noqa: D102
        logits = self.decode_head(self.backbone.forward_pair(before, after))
        return F.interpolate(logits, size=before.shape[-2:], mode="bilinear", align_corners=False)


@register_model("changer-r18", "ChangerEx: IA-ResNetV1c-18 (spatial/channel exchange) + Changer head (open-cd)")
def changer_r18(in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> Changer:
    """ChangerEx with an IA-ResNetV1c-18 backbone (contract_dilation as in open-cd)."""
    backbone = ia_resnet_v1c(18, in_channels=in_channels, interaction_cfg=CHANGER_EX, contract_dilation=True, **kwargs)
    return Changer(backbone, num_classes)


@register_model("changer-mit-b0", "ChangerEx: IA-MiT-b0 (spatial/channel exchange) + Changer head (open-cd)")
def changer_mit_b0(in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> Changer:
    """ChangerEx with an IA-MiT-b0 backbone."""
    return Changer(IAMixVisionTransformer("b0", in_channels, interaction_cfg=CHANGER_EX, **kwargs), num_classes)


@register_model("changer-ghost", "Changer head over a GhostNet backbone with SE plugins and ChangerEx interactions")
def changer_ghost(in_channels: int = 3, num_classes: int = 2, width: float = 1.0) -> Changer:
    """ChangerEx interactions over a GhostNet 1.0x backbone (SE in the bottlenecks that have it)."""
    return Changer(StagedInteraction(GhostNetBackbone(in_channels, width), CHANGER_EX), num_classes)
