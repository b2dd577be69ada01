"""TinyCD: strict loading of the published checkpoints, the model contract, real accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from models.tinycd import TinyCD
from tests.conftest import LEVIR_256, require


def test_levir_weights_load_strictly_and_have_the_published_size():
    model = models.create_model("tinycd", weights="levir")
    state = model.state_dict()
    assert len(state) == 279
    # 285,128 parameters + 8,720 BatchNorm running statistics (num_batches_tracked aside)
    assert sum(t.numel() for t in state.values() if t.is_floating_point()) == 293_848
    assert sum(p.numel() for p in model.parameters()) == 285_128


def test_whu_weights_load_after_renaming_three_keys():
    loaded = models.resolve_weights("tinycd", "whu")
    assert "_mixing_mask.2._convmix.0.weight" in loaded.state_dict
    assert not any(k.startswith("_mixing_mask.2._mixing.") for k in loaded.state_dict)
    models.create_model("tinycd", weights=loaded)  # strict


@pytest.mark.parametrize("size", [64, 136])
def test_contract_shape_and_backward(size):
    model = TinyCD()
    x = torch.randn(2, 2, 3, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 1, size, size)
    out.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_any_band_count_and_two_class_output():
    model = models.create_model("tinycd", in_channels=6, num_classes=2)
    with torch.no_grad():
        out = model(torch.randn(1, 2, 6, 64, 64))
    assert out.shape == (1, 2, 64, 64)
    p = model.change_probability(out)
    assert p.shape == (1, 64, 64) and float(p.min()) >= 0 and float(p.max()) <= 1


def test_bad_input_shapes_are_rejected_with_the_reason():
    model = TinyCD()
    with pytest.raises(ValueError, match=r"\(B, 2, C, H, W\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 2, 3, 60, 64))


def test_regression_values_on_a_fixed_input():
    """A few output values of the LEVIR model, so an accidental change of the port shows up."""
    model = models.create_model("tinycd", weights="levir").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 3, 64, 64, generator=g)
    x[:, 1, :, 16:40, 16:40] = 1.0  # a bright new object in AFTER
    with torch.inference_mode():
        p = model.change_probability(model((x - 0.45) / 0.226))[0]
    assert float(p[28, 28]) > 0.5  # inside the new object
    assert float(p[2, 60]) < float(p[28, 28])
    np.testing.assert_allclose(
        [float(p[28, 28]), float(p[2, 60]), float(p.mean())], REGRESSION, rtol=1e-3, atol=1e-4)


REGRESSION = [0.999337, 0.004989, 0.163256]  # this port, align_corners=False, torch 2.13 CPU


@pytest.mark.parametrize("align_corners", [False, True])
def test_f1_on_real_levir_crops_matches_the_reference(align_corners):
    """The published LEVIR weights score F1 ~0.928 on the eight shared 256 crops (both upsampling modes)."""
    from PIL import Image

    root = require(LEVIR_256)
    loaded = models.resolve_weights("tinycd", "levir")
    meta = loaded.meta
    model = models.create_model("tinycd", weights=loaded, align_corners=align_corners).eval()
    mean = torch.tensor(meta.mean).view(3, 1, 1)
    std = torch.tensor(meta.std).view(3, 1, 1)
    tp = fp = fn = 0
    for a_path in sorted((root / "A").glob("*.png")):
        imgs = [torch.from_numpy(np.array(Image.open(root / d / a_path.name).convert("RGB"))).permute(2, 0, 1)
                for d in ("A", "B")]
        x = torch.stack([(i.float() * meta.scale - mean) / std for i in imgs])[None]
        label = np.array(Image.open(root / "label" / a_path.name).convert("L")) > 127
        with torch.inference_mode():
            pred = model.change_probability(model(x))[0].numpy() > meta.threshold
        tp += int((pred & label).sum())
        fp += int((pred & ~label).sum())
        fn += int((~pred & label).sum())
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert f1 >= 0.92, f1
