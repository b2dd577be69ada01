"""A generic siamese model stitched from registered parts (seed 001's "stitching" in config form).

    create_model("siamese", backbone={"type": "resnet", "depth": 18}, fusion="abs_diff",
                 head={"type": "segformer", "channels": 128},
                 plugins=[{"cfg": "se", "position": "after_conv2"},          # inside ResNet blocks
                          {"cfg": {"type": "eca"}, "levels": [0, 1, 1, 1]}])  # on backbone outputs

Backbones: ``resnet`` (every ResNet option), ``mit`` (``variant`` b0-b5), ``mobilenetv2``,
``ghostnet``. Heads: ``segformer`` (all levels), ``deeplabv3plus`` (first and last level),
``changer`` (the backbone then runs both dates with per-stage ``interaction`` layers instead
of a fusion neck). The same dictionary, with ``name: siamese``, can be written to a YAML or
JSON file and passed to ``changemap run --model FILE``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.ghostnet import GhostNetBackbone
from models.backbones.interaction import IAMixVisionTransformer, IAResNet, StagedInteraction
from models.backbones.mit import mit
from models.backbones.mobilenetv2 import MobileNetV2
from models.backbones.resnet import ResNet
from models.base import ChangeModel
from models.heads.changer import ChangerHead
from models.heads.deeplabv3plus import DeepLabV3PlusHead
from models.heads.segformer import SegformerHead
from models.layers.attention import build_plugin
from models.necks.fusion import FeatureFusionNeck
from models.registry import register_model

BACKBONES = ("resnet", "mit", "mobilenetv2", "ghostnet")
HEADS = ("segformer", "deeplabv3plus", "changer")
_DIVISORS = {"resnet": 32, "mit": 32, "mobilenetv2": 16, "ghostnet": 32}


def _spec(cfg: str | Mapping[str, Any], kinds: Sequence[str], what: str) -> tuple[str, dict[str, Any]]:
    spec = {"type": cfg} if isinstance(cfg, str) else dict(cfg)
    kind = spec.pop("type", None)
    if kind not in kinds:
        raise ValueError(f"unknown {what} {kind!r}; choose one of {', '.join(kinds)}")
    return kind, spec


def _backbone(kind: str, args: dict[str, Any], in_channels: int, block_plugins: list, interaction: Sequence | None):
    if block_plugins and kind != "resnet":
        raise ValueError(f"plugins with a 'position' go inside ResNet blocks; backbone {kind!r} takes "
                         "plugins on its output levels ('levels') only")
    if kind == "resnet":
        args = {"in_channels": in_channels, "plugins": block_plugins, **args}
        return IAResNet(interaction_cfg=interaction, **args) if interaction is not None else ResNet(**args)
    if kind == "mit":
        variant = args.pop("variant", "b0")
        if interaction is not None:
            return IAMixVisionTransformer(variant, in_channels, interaction_cfg=interaction, **args)
        return mit(variant, in_channels, **args)
    if kind == "mobilenetv2":
        if interaction is not None:
            raise ValueError("the changer head needs a backbone with four stages; mobilenetv2 has two outputs")
        return MobileNetV2(in_channels, **args)
    net = GhostNetBackbone(in_channels, **args)
    return StagedInteraction(net, interaction) if interaction is not None else net


class SiameseModel(ChangeModel):
    """Shared backbone -> optional per-level plugins -> fusion neck -> head (or interaction backbone -> Changer)."""

    def __init__(self, backbone: str | Mapping[str, Any] = "resnet", head: str | Mapping[str, Any] = "segformer",
                 fusion: str = "concat", plugins: Sequence[Mapping[str, Any]] = (), in_channels: int = 3,
                 num_classes: int = 2, interaction: Sequence[Any] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        b_kind, b_args = _spec(backbone, BACKBONES, "backbone")
        h_kind, h_args = _spec(head, HEADS, "head")
        self.size_divisor = _DIVISORS[b_kind]
        block_plugins = [p for p in plugins if "position" in p]
        level_plugins = [p for p in plugins if "position" not in p]
        self.changer = h_kind == "changer"
        if self.changer:
            self.backbone = _backbone(b_kind, b_args, in_channels, block_plugins, interaction or (None,) * 4)
            per_date = [c // 2 for c in self.backbone.out_channels]
        else:
            if interaction is not None:
                raise ValueError("interaction layers need head 'changer'; other heads fuse the dates in a neck")
            self.backbone = _backbone(b_kind, b_args, in_channels, block_plugins, None)
            per_date = list(self.backbone.out_channels)
        self.level_plugins = nn.ModuleList([
            nn.Sequential(*[build_plugin(p["cfg"], c) for p in level_plugins if p.get("levels") is None or p["levels"][i]])
            for i, c in enumerate(per_date)
        ])
        if self.changer:
            self.decode_head = ChangerHead(per_date, num_classes=num_classes, **h_args)
            return
        self.neck = FeatureFusionNeck(fusion)
        fused = self.neck.out_channels(per_date)
        if h_kind == "segformer":
            self.decode_head = SegformerHead(fused, num_classes=num_classes, **h_args)
        else:
            self.decode_head = DeepLabV3PlusHead(fused[0], fused[-1], num_classes, **h_args)
            self._levels = (0, len(fused) - 1)

    def _plug(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(f) for p, f in zip(self.level_plugins, feats)]

    def forward_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.changer:
            halves = [f.chunk(2, dim=1) for f in self.backbone.forward_pair(before, after)]
            f1, f2 = self._plug([a for a, _ in halves]), self._plug([b for _, b in halves])
            logits = self.decode_head([torch.cat([a, b], 1) for a, b in zip(f1, f2)])
        else:
            feats = self.neck(self._plug(self.backbone(before)), self._plug(self.backbone(after)))
            if hasattr(self, "_levels"):
                feats = [feats[i] for i in self._levels]
            logits = self.decode_head(feats)
        return F.interpolate(logits, size=before.shape[-2:], mode="bilinear", align_corners=False)


@register_model("siamese", "Generic siamese model from parts: backbone + plugins + fusion + head (config/YAML)")
def siamese(**kwargs: Any) -> SiameseModel:
    """Build a :class:`SiameseModel` from keyword arguments (see the module docstring)."""
    return SiameseModel(**kwargs)
