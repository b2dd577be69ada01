"""Attention plugins SE (Hu et al., SE, CVPR 2018) and ECA (Wang et al., ECA-Net, CVPR 2020): shapes,
composition, and build-time channel checks."""
from __future__ import annotations

import pytest
import torch

from models.layers.attention import (
    Cascade,
    ECAAttention,
    Parallel,
    PluginError,
    SEAttention,
    build_plugin,
)


def test_se_and_eca_rescale_per_channel():
    x = torch.randn(2, 512, 7, 7)
    se = SEAttention(512, reduction=16)
    assert se.fc[0].weight.shape == (32, 512)
    y = se(x)
    assert y.shape == x.shape
    ratio = (y / x)[:, :, 0, 0]
    assert torch.allclose(ratio, (y / x)[:, :, 3, 5], atol=1e-5)  # one factor per channel
    assert torch.allclose(ratio, torch.full_like(ratio, 0.5), atol=1e-2)  # std 0.001 init: sigmoid(~0)
    eca = ECAAttention(512, kernel_size=3)
    assert eca(x).shape == x.shape


def test_cascade_and_parallel_compositions():
    x = torch.randn(1, 63, 64, 64)
    assert Cascade(SEAttention(63, 7), ECAAttention(63))(x).shape == (1, 63, 64, 64)
    assert Parallel(SEAttention(63, 7), ECAAttention(63), merge="concat")(x).shape == (1, 126, 64, 64)
    for merge in ("add", "mul"):
        assert Parallel(SEAttention(63, 7), ECAAttention(63), merge=merge)(x).shape == (1, 63, 64, 64)
    mixed = build_plugin({"type": "cascade", "plugins": [
        {"type": "parallel", "plugins": ["eca", {"type": "se", "reduction": 7}], "merge": "concat"},
        {"type": "se", "reduction": 14}]}, 63)
    assert mixed(x).shape == (1, 126, 64, 64) and mixed.out_channels == 126


def test_degenerate_se_fails_at_build_time_naming_both_numbers():
    with pytest.raises(PluginError, match="SE plugin on 3 channels with reduction 16 would have 0 hidden"):
        SEAttention(3, reduction=16)


def test_a_plugin_built_for_other_channels_is_rejected():
    with pytest.raises(PluginError, match="expects 64 channels but is inserted on a feature with 128"):
        build_plugin(SEAttention(64), 128)
    with pytest.raises(PluginError, match="merge 'max' is not supported"):
        Parallel(SEAttention(64), ECAAttention(64), merge="max")
    with pytest.raises(PluginError, match="unknown plugin 'cbam'"):
        build_plugin("cbam", 64)
