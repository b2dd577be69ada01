"""Interaction backbones of Changer (Fang et al., Changer, TGRS 2023).

One backbone runs both dates; after every stage an interaction layer exchanges
information between them (spatial/channel exchange, aggregation-distribution), and
each output level is ``cat([x1, x2], 1)``. Their ``feature_info`` describes one date's
levels; ``forward_pair`` emits twice those channels (``out_channels``). Each is registered
as the interaction form of its plain backbone: ``create_backbone(name, interaction=cfg)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.backbones.base import FeatureInfo
from models.backbones.ghostnet import GhostNetBackbone
from models.backbones.mit import mit
from models.backbones.resnet import ResNet
from models.layers.helpers import nlc_to_nchw
from models.layers.interaction import build_interaction
from models.registry import register_backbone

_NONE4 = (None, None, None, None)


def _interactions(cfgs: Sequence[Any], stages: Sequence[FeatureInfo]) -> nn.ModuleList:
    if len(cfgs) != len(stages):
        raise ValueError(f"interaction_cfg needs one entry per stage ({len(stages)}), got {len(cfgs)}")
    return nn.ModuleList([build_interaction(cfg, info.channels) for cfg, info in zip(cfgs, stages)])


@register_backbone("resnet", interaction=True)
class IAResNet(ResNet):
    """Interaction ResNet; ``deep_stem=True`` gives IA_ResNetV1c, plus ``avg_down=True`` IA_ResNetV1d."""

    def __init__(self, interaction_cfg: Sequence[Any] = _NONE4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ccs = _interactions(interaction_cfg, self.stage_info)

    @property
    def out_channels(self) -> list[int]:
        """Channels of each (concatenated) output level of :meth:`forward_pair`."""
        return [2 * f.channels for f in self.feature_info]

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
        """Feature pyramid of the pair, each level the two dates concatenated."""
        x1, x2 = self.stem_forward(x1), self.stem_forward(x2)
        outs = []
        for i, name in enumerate(self.res_layers):
            layer = getattr(self, name)
            x1, x2 = self.ccs[i](layer(x1), layer(x2))
            if i in self.out_indices:
                outs.append(torch.cat([x1, x2], dim=1))
        return outs


def ia_resnet_v1c(depth: int = 18, **kwargs: Any) -> IAResNet:
    """IA_ResNetV1c: deep stem."""
    return IAResNet(depth=depth, deep_stem=True, avg_down=False, **kwargs)


def ia_resnet_v1d(depth: int = 18, **kwargs: Any) -> IAResNet:
    """IA_ResNetV1d: deep stem and average-pool downsampling."""
    return IAResNet(depth=depth, deep_stem=True, avg_down=True, **kwargs)


class StagedInteraction(nn.Module):
    """Any backbone with ``stem``, ``stages`` and ``feature_info`` run on both dates with interactions."""

    def __init__(self, backbone: nn.Module, interaction_cfg: Sequence[Any] = _NONE4) -> None:
        super().__init__()
        self.backbone = backbone
        self.ccs = _interactions(interaction_cfg, backbone.feature_info)

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """One date's levels."""
        return self.backbone.feature_info

    @property
    def out_channels(self) -> list[int]:
        """Channels of each (concatenated) output level."""
        return [2 * f.channels for f in self.feature_info]

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
        """Feature pyramid of the pair, each level the two dates concatenated."""
        x1, x2 = self.backbone.stem(x1), self.backbone.stem(x2)
        outs = []
        for stage, cc in zip(self.backbone.stages, self.ccs):
            x1, x2 = cc(stage(x1), stage(x2))
            outs.append(torch.cat([x1, x2], dim=1))
        return outs


@register_backbone("ghostnet", interaction=True)
def ia_ghostnet(interaction_cfg: Sequence[Any] = _NONE4, **kwargs: Any) -> StagedInteraction:
    """GhostNet with an interaction layer after each of its four stages; ``kwargs`` go to GhostNet."""
    return StagedInteraction(GhostNetBackbone(**kwargs), interaction_cfg)


@register_backbone("mit", interaction=True)
class IAMixVisionTransformer(nn.Module):
    """MiT whose stages run on both dates, followed by that stage's interaction layer."""

    def __init__(self, variant: str = "b0", in_channels: int = 3, interaction_cfg: Sequence[Any] = _NONE4,
                 **kwargs: Any) -> None:
        super().__init__()
        self.mit = mit(variant, in_channels, **kwargs)
        self.ccs = _interactions(interaction_cfg, self.mit.feature_info)

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """One date's levels."""
        return self.mit.feature_info

    @property
    def out_channels(self) -> list[int]:
        """Channels of each (concatenated) output level."""
        return [2 * f.channels for f in self.feature_info]

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
        """Feature pyramid of the pair, each level the two dates concatenated."""
        outs = []
        for (embed, blocks, norm), cc in zip(self.mit.layers, self.ccs):
            (x1, hw), (x2, _) = embed(x1), embed(x2)
            for block in blocks:
                x1, x2 = block(x1, hw), block(x2, hw)
            x1, x2 = cc(nlc_to_nchw(norm(x1), hw), nlc_to_nchw(norm(x2), hw))
            outs.append(torch.cat([x1, x2], dim=1))
        return outs
