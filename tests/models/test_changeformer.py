"""MiT backbone, fusion neck, SegFormer head and ChangeFormer against open-cd's and SegFormer's figures."""
from __future__ import annotations

import pytest
import torch

import models
from models.backbones.mit import MIT_VARIANTS, mit
from models.necks.fusion import FeatureFusionNeck


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mit_b0_size_and_feature_pyramid():
    backbone = mit("b0")
    assert _params(backbone) == 3_319_392
    feats = backbone(torch.randn(1, 3, 256, 256))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 64, 64), (1, 64, 32, 32), (1, 160, 16, 16), (1, 256, 8, 8)]
    assert [(f.channels, f.stride) for f in backbone.feature_info] == [(32, 4), (64, 8), (160, 16), (256, 32)]


@pytest.mark.parametrize("variant", sorted(MIT_VARIANTS))
def test_every_mit_variant_builds(variant):
    backbone = mit(variant)
    assert len(backbone.out_channels) == 4


def test_changeformer_mit_b0_matches_open_cd():
    model = models.create_model("changeformer-mit-b0")
    assert _params(model) == 3_846_754  # the shared backbone counted once
    head = model.decode_head
    assert [_params(c) for c in head.convs] == [16_896, 33_280, 82_432, 131_584]
    assert _params(head.fusion_conv) == 262_144 + 512 and _params(head.conv_seg) == 514
    x = torch.randn(1, 2, 3, 256, 256)
    feats = model.neck(model.backbone(x[:, 0]), model.backbone(x[:, 1]))
    assert tuple(model.decode_head(feats).shape) == (1, 2, 64, 64)  # 1/4 of the input
    assert tuple(model(x).shape) == (1, 2, 256, 256)  # the contract: input resolution


def test_changeformer_any_band_count_and_gradient_checkpointing():
    model = models.create_model("changeformer-mit-b0", in_channels=13, num_classes=1, with_cp=True)
    x = torch.randn(1, 2, 13, 64, 64)
    out = model(x)
    assert out.shape == (1, 1, 64, 64)
    out.sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize("policy,channels", [("concat", [64, 128]), ("sum", [32, 64]), ("diff", [32, 64]),
                                             ("abs_diff", [32, 64])])
def test_fusion_policies(policy, channels):
    neck = FeatureFusionNeck(policy)
    a, b = [torch.ones(1, 32, 4, 4), torch.ones(1, 64, 2, 2)], [torch.full((1, 32, 4, 4), 3.0), torch.zeros(1, 64, 2, 2)]
    out = neck(a, b)
    assert [o.shape[1] for o in out] == channels == neck.out_channels([32, 64])
    expected = {"sum": 4.0, "diff": 2.0, "abs_diff": 2.0}
    if policy in expected:
        assert float(out[0][0, 0, 0, 0]) == expected[policy]


def test_unknown_fusion_policy_names_the_allowed_ones():
    with pytest.raises(ValueError, match="choose one of concat, sum, diff, abs_diff"):
        FeatureFusionNeck("mean")
