"""Registered backbones: what they declare (channels, stride per level) is what they emit."""
from __future__ import annotations

from typing import Any

import pytest
import torch

import models
from models.backbones.base import FeatureInfo, size_divisor
from models.layers.interaction import CHANGER_EX
from models.registry import UnknownBackboneError, create_backbone, list_backbones, register_backbone

# Small non-square inputs (H != W, both multiples of 32) and options that move channels or strides.
SIZES = ((64, 96), (96, 32))
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("resnet", {"depth": 50, "strides": (1, 2, 1, 1), "dilations": (1, 1, 2, 4), "out_indices": (1, 3)}),
    ("resnet", {"depth": 18, "deep_stem": True, "avg_down": True, "contract_dilation": True,
                "strides": (1, 2, 2, 1), "dilations": (1, 1, 1, 2)}),
    ("resnet", {"num_stages": 3, "out_indices": (0, 2), "base_channels": 32, "in_channels": 6}),
    ("mit", {"variant": "b1"}),
    ("mobilenetv2", {"downsample_factor": 8}),
    ("ghostnet", {"width": 0.5, "se": False}),
    ("efficientnet", {"variant": "b4", "num_stages": 4}),
    ("efficientnet", {"variant": "b0", "out_indices": (2, 3, 5, 7)}),
    ("resnetv2", {"block_units": (1, 1, 1), "width_factor": 0.5}),
]


def _check_levels(info: list[FeatureInfo], feats: list[torch.Tensor], h: int, w: int, per_date: int = 1) -> None:
    assert len(feats) == len(info)
    got = [tuple(f.shape[1:]) for f in feats]
    assert got == [(per_date * c, h // s, w // s) for c, s in info], (got, info)


def test_the_registry_lists_every_backbone():
    assert list_backbones() == ["efficientnet", "ghostnet", "mit", "mobilenetv2", "resnet", "resnetv2"]
    assert list_backbones(interaction=True) == ["ghostnet", "mit", "resnet"]
    assert models.list_backbones() == list_backbones()


@pytest.mark.parametrize("name,kwargs", [(n, {}) for n in list_backbones()] + OPTIONS,
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v) or "default")
def test_declared_levels_are_the_emitted_ones(name, kwargs):
    net = create_backbone(name, **kwargs).eval()
    assert all(isinstance(f, FeatureInfo) for f in net.feature_info)
    assert net.out_channels == [c for c, _ in net.feature_info]
    for h, w in SIZES:
        if h % size_divisor(net.feature_info) or w % size_divisor(net.feature_info):
            continue
        with torch.no_grad():
            feats = net.forward_features(torch.randn(1, kwargs.get("in_channels", 3), h, w))
        _check_levels(net.feature_info, feats, h, w)


@pytest.mark.parametrize("name", list_backbones(interaction=True))
def test_interaction_forms_declare_one_date_and_emit_both(name):
    net = create_backbone(name, interaction=CHANGER_EX).eval()
    plain = create_backbone(name)
    assert net.feature_info == plain.feature_info
    assert net.out_channels == [2 * c for c, _ in net.feature_info]
    with torch.no_grad():
        feats = net.forward_pair(torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96))
    _check_levels(net.feature_info, feats, 64, 96, per_date=2)


def test_feature_info_follows_the_options():
    dilated = create_backbone("resnet", depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), out_indices=(1, 3))
    assert dilated.feature_info == [(512, 8), (2048, 8)] and size_divisor(dilated.feature_info) == 8
    assert create_backbone("resnet", deep_stem=True).feature_info == [(64, 4), (128, 8), (256, 16), (512, 32)]
    assert len(create_backbone("resnet", out_indices=(3,)).stage_info) == 4
    assert create_backbone("mobilenetv2", downsample_factor=8).feature_info == [(24, 4), (320, 8)]
    assert create_backbone("mit", variant="b2").feature_info == [(64, 4), (128, 8), (320, 16), (512, 32)]
    assert create_backbone("efficientnet", variant="b4", num_stages=4).feature_info == [(48, 2), (24, 2), (32, 4),
                                                                                         (56, 8)]
    assert create_backbone("ghostnet", width=0.5).feature_info == [(12, 4), (20, 8), (56, 16), (80, 32)]


def test_registry_errors_name_the_choices():
    with pytest.raises(UnknownBackboneError, match="unknown backbone 'vgg'; choose one of efficientnet, ghostnet"):
        create_backbone("vgg")
    with pytest.raises(ValueError, match="'mobilenetv2' has no interaction form .* one: ghostnet, mit, resnet"):
        create_backbone("mobilenetv2", interaction=CHANGER_EX)
    with pytest.raises(ValueError, match="backbone 'resnet' is registered twice"):
        register_backbone("resnet")(lambda **kw: None)
    with pytest.raises(ValueError, match="interaction_cfg needs one entry per stage \\(4\\), got 2"):
        create_backbone("mit", interaction=(None, None))


def test_size_divisor_is_the_lcm_of_the_strides_times_the_extra():
    assert size_divisor([FeatureInfo(8, 4), FeatureInfo(16, 32)]) == 32
    assert size_divisor([FeatureInfo(8, 2), FeatureInfo(16, 16)], extra=2) == 32
    assert size_divisor([FeatureInfo(8, 4), FeatureInfo(16, 6)]) == 12
