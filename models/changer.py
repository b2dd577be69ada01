"""Changer (Fang et al., Changer, TGRS 2023) as open-cd configures ChangerEx.

An interaction backbone (one backbone runs both dates and exchanges features between
them after every stage) and the Changer head (per-date MLP decoding, flow dual-alignment
fusion). Any registered backbone with an interaction form fits
(``models.registry.list_backbones(interaction=True)``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.backbones.base import size_divisor
from models.base import ChangeModel
from models.heads.changer import ChangerHead
from models.layers.interaction import CHANGER_EX
from models.registry import create_backbone, register_model


class Changer(ChangeModel):
    """Any interaction backbone (``forward_pair`` and per-date ``feature_info``) + the Changer head."""

    def __init__(self, backbone: nn.Module, num_classes: int = 2, channels: int = 128) -> None:
        super().__init__(num_classes)
        self.backbone = backbone
        self.size_divisor = size_divisor(backbone.feature_info)
        self.decode_head = ChangerHead([f.channels for f in backbone.feature_info], channels, num_classes)

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.decode_head(self.backbone.forward_pair(before, after))


def changer(backbone: str, in_channels: int = 3, num_classes: int = 2,
            interaction: Sequence[Any] = CHANGER_EX, **kwargs: Any) -> Changer:
    """A Changer over the interaction form of the registered ``backbone`` (``kwargs`` go to it)."""
    net = create_backbone(backbone, interaction=interaction, in_channels=in_channels, **kwargs)
    return Changer(net, num_classes)


@register_model("changer-r18", "ChangerEx: IA-ResNetV1c-18 (spatial/channel exchange) + Changer head (open-cd)")
def changer_r18(in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> Changer:
    """ChangerEx with an IA-ResNetV1c-18 backbone (deep stem; contract_dilation as in open-cd)."""
    return changer("resnet", in_channels, num_classes, depth=18, deep_stem=True, contract_dilation=True, **kwargs)


@register_model("changer-mit-b0", "ChangerEx: IA-MiT-b0 (spatial/channel exchange) + Changer head (open-cd)")
def changer_mit_b0(in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> Changer:
    """ChangerEx with an IA-MiT-b0 backbone."""
    return changer("mit", in_channels, num_classes, variant="b0", **kwargs)


@register_model("changer-mit-b1", "ChangerEx: IA-MiT-b1 (spatial/channel exchange) + Changer head (open-cd)")
def changer_mit_b1(in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> Changer:
    """ChangerEx with an IA-MiT-b1 backbone (embed 64, layers 2-2-2-2)."""
    return changer("mit", in_channels, num_classes, variant="b1", **kwargs)


@register_model("changer-ghost", "Changer head over a GhostNet backbone with SE plugins and ChangerEx interactions")
def changer_ghost(in_channels: int = 3, num_classes: int = 2, width: float = 1.0) -> Changer:
    """ChangerEx interactions over a GhostNet 1.0x backbone (Han et al., GhostNet, CVPR 2020; SE where it has it)."""
    return changer("ghostnet", in_channels, num_classes, width=width)
