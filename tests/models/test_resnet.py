"""ResNet (He et al., ResNet, CVPR 2016): shapes, options, and plugins that really chain."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.backbones.resnet import ResNet
from models.layers.attention import ECAAttention, PluginError, SEAttention


def test_resnet18_feature_shapes():
    outs = ResNet(18).eval()(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2), (1, 512, 1, 1)]


@pytest.mark.parametrize("depth,channels", [(34, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048]),
                                            (101, [256, 512, 1024, 2048])])
def test_depths(depth, channels):
    net = ResNet(depth)
    assert net.out_channels == channels


def test_options_change_the_structure():
    caffe = ResNet(50, style="caffe")
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    torch_style = ResNet(50)
    assert torch_style.layer2[0].conv1.stride == (1, 1) and torch_style.layer2[0].conv2.stride == (2, 2)
    v1d = ResNet(18, deep_stem=True, avg_down=True, stem_channels=64)
    assert len(v1d.stem) == 9 and isinstance(v1d.layer2[0].downsample[0], nn.AvgPool2d)
    dilated = ResNet(18, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), out_indices=(3,)).eval()
    (out,) = dilated(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 512, 8, 8) and dilated.feature_info[-1].stride == 8
    three = ResNet(18, num_stages=3, out_indices=(0, 2), base_channels=32, in_channels=6).eval()
    assert [o.shape[1] for o in three(torch.randn(1, 6, 64, 64))] == [32, 128]
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in ResNet(18).layer1)  # zero_init_residual


def test_frozen_stages_and_norm_eval():
    net = ResNet(18, frozen_stages=2, norm_eval=True).train()
    assert not any(p.requires_grad for p in net.layer2.parameters())
    assert all(p.requires_grad for p in net.layer3.parameters())
    assert not any(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_plugins_chain_each_on_the_previous_output():
    seen = []
    net = ResNet(50, plugins=[
        {"cfg": {"type": "se", "reduction": 16}, "position": "after_conv2", "stages": (False, True, False, False)},
        {"cfg": "eca", "position": "after_conv2", "stages": (False, True, False, False)},
    ]).eval()
    block = net.layer2[0]
    se, eca = block.after_conv2_plugins
    assert isinstance(se, SEAttention) and isinstance(eca, ECAAttention) and len(net.layer1[0].after_conv2_plugins) == 0
    se.register_forward_hook(lambda m, i, o: seen.append(("se_out", o)))
    eca.register_forward_hook(lambda m, i, o: seen.append(("eca_in", i[0])))
    net(torch.randn(1, 3, 64, 64))
    (_, se_out), (_, eca_in) = seen[:2]
    assert torch.equal(se_out, eca_in)  # plugins applied to the block's input would both see the conv output


def test_plugin_errors_at_build_time():
    with pytest.raises(ValueError, match="position must be one of"):
        ResNet(18, plugins=[{"cfg": "se", "position": "after_conv9"}])
    with pytest.raises(ValueError, match="BasicBlock has no after_conv3 position"):
        ResNet(18, plugins=[{"cfg": "se", "position": "after_conv3"}])
    with pytest.raises(PluginError, match="expects 64 channels but is inserted on a feature with 128"):
        ResNet(18, plugins=[{"cfg": SEAttention(64), "position": "after_conv1", "stages": (False, True, False, False)}])
    with pytest.raises(ValueError, match="invalid ResNet depth 20"):
        ResNet(20)
