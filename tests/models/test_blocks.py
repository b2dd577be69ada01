"""Building blocks: Ghost modules (Han et al., GhostNet, CVPR 2020), MobileNetV2 (Sandler et al., CVPR 2018)
and TransUNet's hybrid encoder (Chen et al., TransUNet, 2021)."""
from __future__ import annotations

import pytest
import torch

from models.backbones.ghostnet import GhostNetBackbone
from models.backbones.mobilenetv2 import DOWN_INDICES, InvertedResidual, MobileNetV2
from models.backbones.resnetv2_vit import HybridViTEncoder, ResNetV2, StdConv2d, ViTConfig
from models.layers.ghost import GhostBottleneck, GhostModule


def test_ghost_module_keeps_exactly_oup_channels():
    m = GhostModule(16, 33, ratio=3)
    assert m.primary_conv[0].out_channels == 11 and m.cheap_operation[0].groups == 11
    assert m(torch.randn(1, 16, 8, 8)).shape == (1, 33, 8, 8)


def test_ghost_bottleneck_stride_se_and_shortcut():
    same = GhostBottleneck(24, 72, 24).eval()
    assert isinstance(same.shortcut, torch.nn.Identity) and isinstance(same.se, torch.nn.Identity)
    down = GhostBottleneck(24, 72, 40, dw_kernel_size=5, stride=2, se_ratio=0.25).eval()
    assert down.conv_dw.stride == (2, 2) and down.se.fc[0].out_features == 18
    assert down(torch.randn(1, 24, 16, 16)).shape == (1, 40, 8, 8)


def test_ghostnet_backbone_levels():
    net = GhostNetBackbone().eval()
    outs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(24, 16, 16), (40, 8, 8), (112, 4, 4), (160, 2, 2)]


def test_inverted_residual():
    assert len(InvertedResidual(32, 32, 1, 1).conv) == 5  # no expansion conv when t = 1
    block = InvertedResidual(24, 24, 1, 6)
    assert block.use_res_connect and block.conv[0].out_channels == 144
    assert not InvertedResidual(24, 32, 2, 6).use_res_connect


@pytest.mark.parametrize("factor,deep", [(16, (320, 16, 16)), (8, (320, 32, 32))])
def test_mobilenetv2_dilation(factor, deep):
    net = MobileNetV2(downsample_factor=factor).eval()
    assert len(net.features) == 18 and DOWN_INDICES == (2, 4, 7, 14)
    low, out = net(torch.randn(1, 3, 256, 256))
    assert tuple(low.shape[1:]) == (24, 64, 64) and tuple(out.shape[1:]) == deep
    conv = net.features[14].conv[3]  # the depthwise 3x3 of the first 160-channel block
    assert conv.stride == (1, 1) and conv.dilation == ((1, 1) if factor == 16 else (2, 2))
    later = net.features[15].conv[3]
    assert later.dilation == ((2, 2) if factor == 16 else (4, 4))
    with pytest.raises(ValueError, match="downsample_factor must be 8 or 16"):
        MobileNetV2(downsample_factor=32)


def test_std_conv_standardises_weights():
    conv = StdConv2d(3, 4, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(10).add_(5)
    x = torch.randn(1, 3, 8, 8)
    w = conv.weight
    ws = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, ws))


def test_resnetv2_skips_and_odd_sizes():
    net = ResNetV2((1, 1, 1), 0.5).eval()
    feat, skips = net(torch.randn(1, 3, 64, 64))
    assert tuple(feat.shape) == (1, 512, 4, 4)
    assert [tuple(s.shape[1:]) for s in skips] == [(256, 8, 8), (128, 16, 16), (32, 32, 32)]
    _, odd = net(torch.randn(1, 3, 72, 72))
    assert odd[0].shape[-1] == 72 // 8  # the 1/8 skip zero-padded to its expected size


def test_resnetv2_pads_each_skip_to_its_own_height_and_width():
    net = ResNetV2((1, 1, 1), 0.5).eval()
    with torch.no_grad():
        feat, skips = net(torch.randn(1, 3, 48, 80))  # the 1/4 map comes out 11 x 19
    assert tuple(feat.shape[1:]) == (512, 3, 5)
    assert [tuple(s.shape[1:]) for s in skips] == [(256, 6, 10), (128, 12, 20), (32, 24, 40)]
    assert not skips[1][..., -1, :].any() and not skips[1][..., -1].any()  # zero-padded bottom row, right column
    assert skips[1][..., :-1, :-1].any()
    assert [tuple(f.shape[1:]) for f in net.forward_features(torch.randn(1, 3, 48, 80))] == [
        (c, 48 // s, 80 // s) for c, s in net.feature_info]


def test_vit_position_embeddings_zoom_to_other_grids():
    enc = HybridViTEncoder(3, (1, 1, 1), 0.5, ViTConfig(hidden=64, layers=1, heads=4, mlp_dim=64, grid=4)).eval()
    tokens, _ = enc(torch.randn(1, 3, 96, 96))
    assert tuple(tokens.shape) == (1, 64, 6, 6)
    assert enc.position_embedding(4, 4) is enc.position_embeddings
    assert enc(torch.randn(1, 1, 64, 64))[0].shape == (1, 64, 4, 4)  # one band repeated to three
