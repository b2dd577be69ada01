"""Scene statistics: tiles predicted with them reproduce one pass over the whole image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.statistics import Moments, SceneStatistics, StatisticsUnsupported, _moments
from pipeline.io.read import read_image
from pipeline.learn.predict import predict_image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def normalize(raw: np.ndarray, meta: models.WeightsMeta) -> np.ndarray:
    """``(..., C, H, W)`` raw values -> float32 model input ``(raw * scale - mean) / std``."""
    c = raw.shape[-3]
    mean = np.asarray(meta.mean, "float32").reshape(c, 1, 1)
    std = np.asarray(meta.std, "float32").reshape(c, 1, 1)
    return ((raw.astype("float32") * np.float32(meta.scale)) - mean) / std


@pytest.fixture(scope="module")
def tinycd_levir():
    loaded = models.resolve_weights("tinycd", "levir")
    return models.create_model("tinycd", weights=loaded).eval(), loaded.meta


@pytest.fixture(scope="module")
def levir_crop(tinycd_levir):
    """A 256 x 256 crop of the shipped LEVIR-CD test_1 pair with many new buildings, normalised."""
    _, meta = tinycd_levir
    a, _ = read_image(str(EXAMPLES / "levir_test_1_A.tif"))
    b, _ = read_image(str(EXAMPLES / "levir_test_1_B.tif"))
    return normalize(np.stack([a, b])[..., 0:256, 768:1024], meta)


@pytest.mark.slow
def test_tinycd_tiles_with_scene_statistics_equal_one_pass(tinycd_levir, levir_crop):
    torch.set_num_threads(2)
    net, meta = tinycd_levir
    whole = predict_image(net, levir_crop)
    window = predict_image(net, levir_crop, tile=128, halo=96)
    scene = predict_image(net, levir_crop, tile=128, halo=96, statistics="scene")
    # Window statistics move probabilities by a lot somewhere; scene statistics reproduce the pass.
    assert np.abs(window - whole).max() > 0.05
    assert np.abs(scene - whole).max() < 1e-4  # a halo of 96 px covers TinyCD's receptive field
    changed = whole > meta.threshold
    assert changed.mean() > 0.02  # the crop has buildings to find
    assert ((scene > meta.threshold) == changed).mean() > 0.9995


def test_tinycd_statistics_levels(tinycd_levir):
    net, _ = tinycd_levir
    levels = SceneStatistics(net).levels(3, net.size_divisor)
    calls = [k for level in levels for k in level]
    # 1 + 3 mixing InstanceNorms, 2 per up block (3 blocks), 10 squeeze-excite gates per date.
    assert len(calls) == len(set(calls)) == 30
    # Both dates' first squeeze-excite gates depend on nothing; then the encoder chains its ten
    # gates, the last mixing block needs all of them and the decoder chains its six norms.
    assert levels[0] == ["_first_mix._mixing._convmix.2#0", "_backbone.1.0.block.1.pool#0",
                         "_backbone.1.0.block.1.pool#1"]
    assert levels[9] == ["_backbone.3.3.block.2.pool#0", "_backbone.3.3.block.2.pool#1"]
    assert levels[10] == ["_mixing_mask.2._convmix.2#0"]
    assert levels[11:] == [[f"_up.{i}._convolution.{j}#0"] for i in range(3) for j in (2, 5)]
    assert len(levels) == 17


# Zoo models that attend over the whole window; every other one must reproduce one pass.
ATTENTION = {"changeformer-mit-b0", "changeformer-mit-b1", "changeformer-mit-b2", "changer-mit-b0", "changer-mit-b1",
             "transunet-r50-vit-b16"}


# The throughput benchmark's 1x1 null model (registered once pipeline.throughput is imported) has
# no window-dependent layer, so window and scene statistics cannot be told apart on it.
@pytest.mark.parametrize("name", [m for m in models.list_models(kind="deep") if m != "benchmark-null"])
def test_every_zoo_model_either_reproduces_one_pass_or_is_refused(name):
    """Squeeze-excite (EfficientNet, GhostNet), ASPP image pooling, Changer's gates and InstanceNorm
    must all be found; a window-wide layer the statistics miss would make the maps differ."""
    torch.manual_seed(0)
    net = models.create_model(name).eval()
    if name in ATTENTION:
        with pytest.raises(StatisticsUnsupported, match=r"(MultiheadAttention|GroupNorm) x\d+ .*--statistics window"):
            SceneStatistics(net)
        return
    div = net.size_divisor
    # Clipped windows of tile + halo cover the whole image, so this isolates the statistics:
    # each tile's core contributes its part and the parts must sum to the image's.
    x = np.random.default_rng(1).normal(size=(2, 3, 4 * div, 3 * div)).astype("float32")
    whole = predict_image(net, x)
    window = predict_image(net, x, tile=2 * div, halo=2 * div)
    scene = predict_image(net, x, tile=2 * div, halo=2 * div, statistics="scene")
    scene_error, window_error = np.abs(scene - whole).max(), np.abs(window - whole).max()
    assert scene_error < 2e-4
    assert scene_error * 20 < window_error  # the comparison can tell the two apart


def test_fixed_statistics_must_cover_every_layer(tinycd_levir, levir_crop):
    net, _ = tinycd_levir
    with pytest.raises(KeyError, match="no scene statistics for layer call"):
        with SceneStatistics(net).fixed({}), torch.inference_mode():
            net(torch.from_numpy(levir_crop[None, ..., :64, :64]))


def test_moments_combine_windows_like_one_weighted_sum():
    """Per-window moments (weights at a coarser level too) combine to the statistics of all pixels at once."""
    rng = np.random.default_rng(3)
    x = rng.normal(1000.0, 0.5, size=(3, 4, 8, 8)).astype("float32")  # large mean, small spread
    weights = (rng.random((3, 16, 16)) > 0.3).astype("float32")  # input resolution: 2x the feature map
    total = Moments(0.0, np.zeros(4), np.zeros(4))
    for i in range(3):
        total = total + _moments(torch.from_numpy(x[i:i + 1]), torch.from_numpy(weights[i:i + 1]))
    wf = weights.reshape(3, 8, 2, 8, 2).mean((2, 4))[:, None]
    mean = (x * wf).sum((0, 2, 3)) / wf.sum()
    var = (wf * (x.astype("float64") - mean[None, :, None, None]) ** 2).sum((0, 2, 3)) / wf.sum()
    got_mean, got_var = total.finalize()
    assert total.n == pytest.approx(wf.sum())
    np.testing.assert_allclose(got_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(got_var, var, rtol=1e-3)
    assert (Moments(0.0, np.zeros(4), np.zeros(4)) + total).n == total.n
