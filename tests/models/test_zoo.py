"""Every registered model: the contract, gradients, learning on real LEVIR crops, configs from files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models.transunet import transunet_small
from tests.conftest import LEVIR_256, require

SMALL = {"transunet-r50-vit-b16": transunet_small}  # the full one is exercised at small inputs below
SIAMESE = {"backbone": {"type": "resnet", "depth": 18}, "fusion": "abs_diff",
           "head": {"type": "segformer", "channels": 64}, "plugins": [{"cfg": "se", "position": "after_conv2"}]}


def build(name: str, **kw) -> torch.nn.Module:
    if name == "siamese":
        return models.create_model(name, **SIAMESE, **kw)
    return SMALL[name](**kw) if name in SMALL else models.create_model(name, **kw)


def test_the_issue_models_are_registered():
    assert set(models.list_models()) >= {"tinycd", "changeformer-mit-b0", "changer-mit-b0", "changer-r18",
                                         "deeplabv3plus-mobilenetv2", "transunet-r50-vit-b16", "changer-ghost",
                                         "siamese"}


@pytest.mark.parametrize("name", [m for m in models.list_models(kind="deep") if m != "benchmark-null"])
@pytest.mark.parametrize("in_channels,num_classes", [(3, 2), (6, 1), (13, 2)])
def test_contract_for_any_bands_and_output_convention(name, in_channels, num_classes):
    model = build(name, in_channels=in_channels, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, in_channels, 64, 64))
    assert out.shape == (1, num_classes, 64, 64)
    p = model.change_probability(out)
    assert p.shape == (1, 64, 64) and float(p.min()) >= 0 and float(p.max()) <= 1


@pytest.mark.parametrize("name", [m for m in models.list_models(kind="deep") if m != "benchmark-null"])
def test_every_registered_model_runs_non_square_inputs(name):
    """(2, 2, 3, 64, 96) -> logits (2, K, 64, 96), each model as registered (full TransUNet included)."""
    torch.manual_seed(0)
    model = models.create_model(name).eval()
    x = torch.randn(2, 2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        alone = model(x[1:])
    assert out.shape == (2, model.num_classes, 64, 96) and torch.isfinite(out).all()
    torch.testing.assert_close(alone, out[1:], atol=1e-4, rtol=1e-4)  # no mixing across the batch


def test_full_transunet_runs_at_a_non_native_size():
    model = models.create_model("transunet-r50-vit-b16").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 3, 96, 96)).shape == (1, 2, 96, 96)  # position embeddings zoomed
        assert models.create_model("transunet-r50-vit-b16", in_channels=1)(torch.randn(1, 2, 1, 32, 32)).shape[1] == 2


def _levir_batch(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    root = require(LEVIR_256)
    xs, ys = [], []
    for n in ("test_2_0000_0000.png", "test_7_0256_0512.png"):
        pair = [np.array(Image.open(root / d / n).convert("RGB"))[:size, :size] for d in ("A", "B")]
        xs.append(torch.from_numpy(np.stack(pair)).permute(0, 3, 1, 2).float() / 255)
        ys.append(torch.from_numpy(np.array(Image.open(root / "label" / n).convert("L"))[:size, :size] > 127))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (torch.stack(xs) - mean) / std, torch.stack(ys)


# The larger MiT variants are the b0 architectures with wider stages (their builds, shapes and
# parameter counts are tested in test_variants.py): training steps on them would only add minutes.
TRAINED = [m for m in models.list_models(kind="deep") if not m.endswith(("-mit-b1", "-mit-b2")) and m != "benchmark-null"]


@pytest.mark.parametrize("name", TRAINED)
def test_a_few_steps_on_real_levir_crops_lower_the_loss(name):
    torch.manual_seed(0)
    x, y = _levir_batch()
    model = build(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_fn() -> torch.Tensor:
        logits = model(x)
        if logits.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
        return F.cross_entropy(logits, y.long())

    losses = []
    for _ in range(8):  # the same batch each step, in train mode throughout (BatchNorm on batch statistics)
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_model_config_files(tmp_path):
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps({"name": "siamese", **SIAMESE, "in_channels": 4}))
    name, args = models.model_spec(str(cfg))
    assert name == "siamese" and args["in_channels"] == 4
    yaml_cfg = tmp_path / "model.yaml"
    yaml_cfg.write_text("name: changer-r18\nin_channels: 6\n")
    assert models.model_spec(str(yaml_cfg)) == ("changer-r18", {"in_channels": 6})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: siamese\nbackbone: vgg\n")
    with pytest.raises(models.UnknownModelError, match="unknown backbone 'vgg'"):
        models.model_spec(str(bad))


def test_siamese_builder_errors():
    with pytest.raises(ValueError, match="unknown head 'unet'"):
        models.create_model("siamese", head="unet")
    with pytest.raises(ValueError, match="interaction layers need head 'changer'"):
        models.create_model("siamese", interaction=[None] * 4)
    with pytest.raises(ValueError, match="go inside ResNet blocks"):
        models.create_model("siamese", backbone="mit", plugins=[{"cfg": "se", "position": "after_conv1"}])


def test_the_readme_example_config_builds_what_it_says():
    from tests.conftest import REPO

    name, args = models.model_spec(str(REPO / "examples" / "siamese_resnet18.yaml"))
    model = models.create_model(name, **args).eval()
    block = model.backbone.layer1[0]
    assert len(block.after_conv2_plugins) == 1 and model.backbone.deep_stem
    assert len(model.level_plugins[0]) == 0 and len(model.level_plugins[1]) == 1
    assert model.neck.policy == "abs_diff"
    with torch.no_grad():
        assert model(torch.randn(1, 2, 3, 64, 64)).shape == (1, 2, 64, 64)
