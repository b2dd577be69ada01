"""Interaction layers, IA backbones and the Changer models."""
from __future__ import annotations

import pytest
import torch

import models
from models.backbones.interaction import IAMixVisionTransformer, ia_resnet_v1c, ia_resnet_v1d
from models.heads.changer import FDAF
from models.layers.interaction import AggregationDistribution, ChannelExchange, SpatialExchange, build_interaction


def test_channel_and_spatial_exchange_swap_every_second_index():
    a, b = torch.zeros(1, 4, 2, 6), torch.ones(1, 4, 2, 6)
    c1, c2 = ChannelExchange(0.5)(a, b)
    assert c1[0, :, 0, 0].tolist() == [1, 0, 1, 0] and c2[0, :, 0, 0].tolist() == [0, 1, 0, 1]
    s1, s2 = SpatialExchange(0.5)(a, b)
    assert s1[0, 0, 0].tolist() == [1, 0, 1, 0, 1, 0] and (s1 + s2 == 1).all()
    t1, _ = ChannelExchange(1 / 3)(torch.zeros(1, 6, 1, 1), torch.ones(1, 6, 1, 1))
    assert t1.flatten().tolist() == [1, 0, 0, 1, 0, 0]


def test_aggregation_distribution_gates_each_date():
    layer = AggregationDistribution(64)
    assert layer.squeeze[0].out_channels == 8  # max(64 // 16, 8)
    x1, x2 = torch.randn(2, 64, 4, 4), torch.randn(2, 64, 4, 4)
    y1, y2 = layer(x1, x2)
    assert y1.shape == x1.shape and ((y1 / x1) <= 1).all() and ((y1 / x1) >= 0).all()
    with pytest.raises(ValueError, match="unknown interaction 'swap'"):
        build_interaction("swap", 8)


@pytest.mark.parametrize("size,shapes", [
    (256, [(1, 128, 64, 64), (1, 256, 32, 32), (1, 512, 16, 16), (1, 1024, 8, 8)]),
    (32, [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2), (1, 1024, 1, 1)]),
])
def test_ia_resnet_v1c_18_shapes(size, shapes):
    net = ia_resnet_v1c(18).eval()
    x = torch.randn(1, 3, size, size)
    assert [tuple(o.shape) for o in net.forward_pair(x, x)] == shapes


def test_identity_interaction_equals_two_independent_passes():
    net = ia_resnet_v1d(18).eval()
    x1, x2 = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    pair = net.forward_pair(x1, x2)
    single1, single2 = net(x1), net(x2)
    for p, a, b in zip(pair, single1, single2):
        assert torch.allclose(p, torch.cat([a, b], 1), atol=1e-6)


def test_ia_mit_outputs_both_dates():
    net = IAMixVisionTransformer("b0", interaction_cfg=(None, "spatial_exchange", "channel_exchange", None)).eval()
    outs = net.forward_pair(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128, 320, 512]


def test_fdaf_with_zero_flow_is_a_plain_difference():
    x1 = torch.randn(1, 8, 5, 7)
    assert torch.allclose(FDAF.warp(x1, torch.zeros(1, 2, 5, 7)), x1, atol=1e-5)


@pytest.mark.parametrize("name", ["changer-r18", "changer-mit-b0"])
def test_changer_models_follow_the_contract(name):
    model = models.create_model(name, in_channels=6, num_classes=1)
    x = torch.randn(2, 2, 6, 64, 64)
    out = model(x)
    assert out.shape == (2, 1, 64, 64)
    out.mean().backward()
