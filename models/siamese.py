"""A generic siamese model stitched from registered parts, in config form.

    create_model("siamese", backbone={"type": "resnet", "depth": 18}, fusion="abs_diff",
                 head={"type": "segformer", "channels": 128},
                 plugins=[{"cfg": "se", "position": "after_conv2"},          # inside ResNet blocks
                          {"cfg": {"type": "eca"}, "levels": [0, 1, 1, 1]}])  # on backbone outputs

Backbones: any name of :func:`models.registry.list_backbones` (``resnet`` with every ResNet
option, ``mit`` with ``variant`` b0-b5, ``mobilenetv2``, ``ghostnet``, ``efficientnet``,
``resnetv2``), with its options. Heads: ``segformer`` (Xie et al., SegFormer, NeurIPS 2021;
all levels), ``deeplabv3plus`` (Chen et al., DeepLabV3+, ECCV 2018; first and last level),
``changer`` (Fang et al., Changer, TGRS 2023: the backbone's interaction form then runs both
dates with per-stage ``interaction`` layers instead of a fusion neck). Plugins are SE (Hu et
al., SE, CVPR 2018) and ECA (Wang et al., ECA-Net, CVPR 2020) and their compositions. The
same dictionary, with ``name: siamese``, can be written to a YAML or JSON file and passed to
``changemap run --model FILE``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from models.backbones.base import size_divisor
from models.base import ChangeModel
from models.heads.changer import ChangerHead
from models.heads.deeplabv3plus import DeepLabV3PlusHead
from models.heads.segformer import SegformerHead
from models.layers.attention import build_plugin
from models.necks.fusion import FeatureFusionNeck
from models.registry import backbone_entry, create_backbone, list_backbones, register_model

HEADS = ("segformer", "deeplabv3plus", "changer")


def _spec(cfg: str | Mapping[str, Any], kinds: Sequence[str], what: str) -> tuple[str, dict[str, Any]]:
    spec = {"type": cfg} if isinstance(cfg, str) else dict(cfg)
    kind = spec.pop("type", None)
    if kind not in kinds:
        raise ValueError(f"unknown {what} {kind!r}; choose one of {', '.join(kinds)}")
    return kind, spec


def _backbone(kind: str, args: dict[str, Any], in_channels: int, block_plugins: list,
              interaction: Sequence[Any] | None) -> nn.Module:
    """The registered backbone ``kind`` (its interaction form when ``interaction`` is given)."""
    if block_plugins:
        if not backbone_entry(kind).accepts("plugins"):
            raise ValueError(f"plugins with a 'position' go inside ResNet blocks; backbone {kind!r} takes "
                             "plugins on its output levels ('levels') only")
        args = {"plugins": block_plugins, **args}
    return create_backbone(kind, interaction=interaction, in_channels=in_channels, **args)


class SiameseModel(ChangeModel):
    """Shared backbone -> optional per-level plugins -> fusion neck -> head (or interaction backbone -> Changer)."""

    def __init__(self, backbone: str | Mapping[str, Any] = "resnet", head: str | Mapping[str, Any] = "segformer",
                 fusion: str = "concat", plugins: Sequence[Mapping[str, Any]] = (), in_channels: int = 3,
                 num_classes: int = 2, interaction: Sequence[Any] | None = None) -> None:
        super().__init__(num_classes)
        b_kind, b_args = _spec(backbone, list_backbones(), "backbone")
        h_kind, h_args = _spec(head, HEADS, "head")
        block_plugins = [p for p in plugins if "position" in p]
        level_plugins = [p for p in plugins if "position" not in p]
        self.changer = h_kind == "changer"
        if not self.changer and interaction is not None:
            raise ValueError("interaction layers need head 'changer'; other heads fuse the dates in a neck")
        if self.changer:
            interaction = interaction or (None,) * 4
        self.backbone = _backbone(b_kind, b_args, in_channels, block_plugins, interaction)
        self.size_divisor = size_divisor(self.backbone.feature_info)
        per_date = [f.channels for f in self.backbone.feature_info]
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
            return self.decode_head([torch.cat([a, b], 1) for a, b in zip(f1, f2)])
        b = self.backbone.forward_features
        feats = self.neck(self._plug(b(before)), self._plug(b(after)))
        if hasattr(self, "_levels"):
            feats = [feats[i] for i in self._levels]
        return self.decode_head(feats)


@register_model("siamese", "Generic siamese model from parts: backbone + plugins + fusion + head (config/YAML)")
def siamese(**kwargs: Any) -> SiameseModel:
    """Build a :class:`SiameseModel` from keyword arguments (see the module docstring)."""
    return SiameseModel(**kwargs)
