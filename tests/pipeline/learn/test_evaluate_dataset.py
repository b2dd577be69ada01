"""changemap evaluate --model/--weights/--data: exact counts, nodata exclusion, summed totals, LEVIR F1."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

import models
from models.weights import WeightsMeta, save_checkpoint
from pipeline.cli import main
from pipeline.learn.evaluate import evaluate_dataset
from pipeline.learn.metrics import Confusion
from tests.conftest import LEVIR_256, require


def _tif(path, data, nodata=None):
    profile = {"driver": "GTiff", "width": data.shape[-1], "height": data.shape[-2], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": CRS.from_epsg(32614), "transform": from_origin(6e5, 3.3e6, 1, 1),
               "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.fixture
def hand_made(tmp_path):
    """Two 3-band pairs with image nodata (0) and 0/1 labels with 255 = unlabeled; a seeded checkpoint."""
    rng = np.random.default_rng(5)
    root = tmp_path / "ds"
    for d in ("A", "B", "label"):
        (root / d).mkdir(parents=True)
    pairs = []
    for i in range(2):
        a = rng.integers(1, 255, (3, 32, 40), dtype="uint8")
        b = a.copy()
        b[:, 8:20, 10:30] = 250
        b[:, :, :3] = 0  # AFTER nodata stripe
        label = np.zeros((1, 32, 40), "uint8")
        label[0, 8:20, 10:30] = 1
        label[0, 28:] = 255  # unlabeled rows
        for d, arr in zip(("A", "B", "label"), (a, b, label)):
            _tif(root / d / f"p{i}.tif", arr, nodata=0 if d != "label" else None)
        pairs.append((a, b, label[0]))
    torch.manual_seed(0)
    model = models.create_model("tinycd")
    meta = WeightsMeta(model="tinycd", model_args={"in_channels": 3, "num_classes": 1}, bands=(1, 2, 3),
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), threshold=0.5)
    save_checkpoint(tmp_path / "ckpt.pt", model, meta)
    return root, tmp_path / "ckpt.pt", model.eval(), pairs


def test_counts_agree_with_an_independent_count_to_the_pixel(hand_made):
    root, ckpt, model, pairs = hand_made
    scores = evaluate_dataset(None, str(ckpt), str(root))  # the checkpoint names its model
    assert scores.model == "tinycd" and [n for n, _ in scores.per_image] == ["p0", "p1"]
    total = Confusion(0, 0, 0, 0)
    for (name, c), (a, b, label) in zip(scores.per_image, pairs):
        x = (np.stack([a, b]).astype("float32") / 255 - 0.5) / 0.25
        with torch.no_grad():
            p = torch.sigmoid(model(torch.from_numpy(x)[None]))[0, 0].numpy() > 0.5
        keep = (label != 255) & (b != 0).any(0) & (a != 0).any(0)
        t = label == 1
        expected = Confusion(int((p & t & keep).sum()), int((p & ~t & keep).sum()), int((~p & t & keep).sum()),
                             int((~p & ~t & keep).sum()))
        assert c == expected, name
        assert c.total == 37 * 28  # 40 - 3 nodata columns, 32 - 4 unlabeled rows
        total = total + expected
    assert scores.total == total
    assert scores.as_dict()["confusion_matrix"] == [[total.tn, total.fp], [total.fn, total.tp]]


def test_cli_dataset_form_writes_per_image_and_total_json(hand_made, tmp_path, capsys):
    root, ckpt, _, _ = hand_made
    assert main(["evaluate", "--weights", str(ckpt), "--data", str(root), "--threshold", "0.3",
                 "--json", str(tmp_path / "m.json")]) == 0
    out = json.loads((tmp_path / "m.json").read_text())
    assert out["threshold"] == 0.3 and len(out["images"]) == 2
    assert out["pixels"] == sum(i["pixels"] for i in out["images"])
    assert "on 2 image(s)" in capsys.readouterr().out
    assert main(["evaluate", "--data", str(root)]) == 2  # no model, no checkpoint
    assert "pass --model" in capsys.readouterr().err
    assert main(["evaluate"]) == 2
    assert "PRED LABEL" in capsys.readouterr().err


def test_tinycd_levir_weights_reproduce_f1_on_the_levir_crops():
    root = require(LEVIR_256)
    scores = evaluate_dataset("tinycd", "levir", str(root))
    assert len(scores.per_image) == 8 and scores.total.total == 8 * 256 * 256
    assert scores.total.f1 == pytest.approx(0.927, abs=0.005)  # reference re-implementation: 0.928
    assert dict(scores.per_image)["train_386_0512_0768"].tp == 0  # its label is empty


def test_tiled_evaluation_with_scene_statistics_scores_like_whole_images(hand_made, tmp_path, capsys):
    root, ckpt, _, _ = hand_made
    whole = evaluate_dataset(None, str(ckpt), str(root))
    scene = evaluate_dataset(None, str(ckpt), str(root), tile=16, halo=32, statistics="scene")
    assert scene.per_image == whole.per_image and scene.total == whole.total
    code = main(["evaluate", "--model", "changeformer-mit-b0", "--weights", "none", "--data", str(root),
                 "--tile", "32", "--statistics", "scene"])
    assert code == 2 and "MultiheadAttention" in capsys.readouterr().err
