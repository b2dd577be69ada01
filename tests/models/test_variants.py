"""Registered variants: the parameter counts, each checked against a count made from the papers' formulas.

The counts below are computed from the architectures' definitions (SegFormer's MiT and
all-MLP head, Xie et al., SegFormer, NeurIPS 2021; the Changer head, Fang et al., Changer,
TGRS 2023), not from our modules.
"""
from __future__ import annotations

import pytest
import torch

import models
from models.backbones.base import size_divisor
from models.registry import create_backbone

MIT = {"b0": (32, (2, 2, 2, 2)), "b1": (64, (2, 2, 2, 2)), "b2": (64, (3, 4, 6, 3))}
HEADS, PATCHES, STRIDES, SR = (1, 2, 5, 8), (7, 3, 3, 3), (4, 2, 2, 2), (8, 4, 2, 1)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mit_params(variant: str, in_channels: int = 3, mlp_ratio: int = 4) -> int:
    """MiT: overlapping patch embeddings (conv + LN), blocks (LN, attention with spatial-reduction conv + LN,
    LN, Mix-FFN: 1x1, 3x3 depthwise, 1x1), a LN per stage."""
    embed, layers = MIT[variant]
    total, cin = 0, in_channels
    for heads, n, k, r in zip(HEADS, layers, PATCHES, SR):
        c = embed * heads
        hidden = mlp_ratio * c
        block = 2 * c + 4 * (c * c + c) + 2 * c  # norm1, q/k/v/out projections, norm2
        block += (c * c * r * r + c + 2 * c) if r > 1 else 0  # spatial reduction conv + LN
        block += (c * hidden + hidden) + (9 * hidden + hidden) + (hidden * c + c)  # Mix-FFN
        total += (cin * c * k * k + c + 2 * c) + n * block + 2 * c
        cin = c
    return total


def conv_bn(cin: int, cout: int, k: int = 1) -> int:
    """Bias-free conv + BatchNorm (mmcv ConvModule)."""
    return cin * cout * k * k + 2 * cout


def segformer_head_params(levels: list[int], channels: int = 256, classes: int = 2) -> int:
    convs = sum(conv_bn(c, channels) for c in levels)
    return convs + conv_bn(len(levels) * channels, channels) + channels * classes + classes


def changer_head_params(levels: list[int], channels: int = 128, classes: int = 2) -> int:
    half, both = channels // 2, channels
    fdaf = (both * 25 + both) + both * 4  # depthwise 5x5 with bias, 1x1 to two flows without bias
    mixffn = (both * both + both) + (both * 9 + both) + (both * both + both)
    return (sum(conv_bn(c, channels) for c in levels) + conv_bn(len(levels) * channels, half) + fdaf + mixffn
            + channels * classes + classes)


def mit_widths(variant: str) -> list[int]:
    return [MIT[variant][0] * h for h in HEADS]


@pytest.mark.parametrize("variant,count,paper", [("b0", 3_319_392, None), ("b1", 13_151_424, 13.1),
                                                 ("b2", 24_196_288, 24.2)])
def test_mit_backbones_have_segformers_sizes(variant, count, paper):
    backbone = create_backbone("mit", variant=variant)
    assert _params(backbone) == mit_params(variant) == count
    if paper is not None:  # SegFormer, Table 1: encoder parameters in millions (rounded)
        assert abs(count / 1e6 - paper) < 0.1
    assert backbone.out_channels == mit_widths(variant)


@pytest.mark.parametrize("name,variant,count", [
    ("changeformer-mit-b0", "b0", 3_846_754),
    ("changeformer-mit-b1", "b1", 13_940_930),
    ("changeformer-mit-b2", "b2", 24_985_794),
])
def test_changeformer_variants(name, variant, count):
    model = models.create_model(name)
    fused = [2 * c for c in mit_widths(variant)]  # concat fusion
    assert _params(model) == mit_params(variant) + segformer_head_params(fused) == count
    assert _params(model.decode_head) == segformer_head_params(fused)
    assert model.size_divisor == 32
    assert model.backbone.feature_info == create_backbone("mit", variant=variant).feature_info


@pytest.mark.parametrize("name,variant,count", [("changer-mit-b0", "b0", 3_457_250),
                                                 ("changer-mit-b1", "b1", 13_354_818)])
def test_changer_mit_variants(name, variant, count):
    model = models.create_model(name)  # exchange layers have no parameters
    assert _params(model) == mit_params(variant) + changer_head_params(mit_widths(variant)) == count
    assert [c for c, _ in model.backbone.feature_info] == mit_widths(variant)


@pytest.mark.parametrize("name,divisor", [
    ("tinycd", 8), ("deeplabv3plus-mobilenetv2", 16), ("transunet-r50-vit-b16", 16), ("changeformer-mit-b0", 32),
    ("changeformer-mit-b1", 32), ("changeformer-mit-b2", 32), ("changer-mit-b0", 32), ("changer-mit-b1", 32),
    ("changer-r18", 32), ("changer-ghost", 32), ("siamese", 32),
])
def test_size_divisors_derive_from_the_backbones(name, divisor):
    """The values every registered model had as hard-coded class attributes."""
    assert models.create_model(name).size_divisor == divisor


def test_siamese_divisors_follow_the_backbone_options():
    assert models.create_model("siamese", backbone="mobilenetv2").size_divisor == 16
    dilated = {"type": "resnet", "strides": (1, 2, 1, 1), "dilations": (1, 1, 2, 4)}
    model = models.create_model("siamese", backbone=dilated).eval()
    assert model.size_divisor == 8 == size_divisor(model.backbone.feature_info)
    with torch.no_grad():
        assert model(torch.randn(1, 2, 3, 40, 56)).shape == (1, 2, 40, 56)
