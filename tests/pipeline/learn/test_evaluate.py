"""changemap evaluate: exact counts on a hand-made label, label conventions, nodata, grids."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from pipeline.cli import main
from pipeline.errors import ChangemapError
from pipeline.learn.evaluate import LabelValues, evaluate_pair, infer_label_values

T = from_origin(600000, 3340000, 1, 1)


def _write(path, data, nodata=None, transform=T, descriptions=None, tags=None, mask=None, crs=None):
    profile = {"driver": "GTiff", "width": data.shape[-1], "height": data.shape[-2],
               "count": 1 if data.ndim == 2 else data.shape[0], "dtype": data.dtype.name,
               "crs": crs or CRS.from_epsg(32614), "transform": transform, "nodata": nodata}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data if data.ndim == 3 else data[None])
        if mask is not None:
            dst.write_mask(mask.astype("uint8") * 255)
        for i, d in enumerate(descriptions or [], 1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
    return str(path)


@pytest.fixture
def hand_made(tmp_path):
    rng = np.random.default_rng(3)
    label = (rng.random((40, 50)) > 0.7).astype("uint8")
    prob = np.clip(label * 0.6 + rng.random((40, 50)) * 0.5, 0, 1)
    label_taizhou = label.copy()
    label_taizhou[:5] = 255  # unlabeled rows
    pred_valid = np.ones((40, 50), bool)
    pred_valid[:, -3:] = False  # prediction nodata
    pred = _write(tmp_path / "pred.tif", np.round(prob * 255).astype("uint8"), tags={"CHANGEMAP_THRESHOLD": "0.5"},
                  mask=pred_valid)
    lab = _write(tmp_path / "label.tif", label_taizhou)
    return pred, lab, prob, label, pred_valid


def test_counts_match_an_independent_count_to_the_pixel(hand_made):
    pred, lab, prob, label, pred_valid = hand_made
    c = evaluate_pair(pred, lab)
    p = np.round(prob * 255) / 255 > 0.5
    v = pred_valid.copy()
    v[:5] = False
    tp, fp = int(np.sum(p & (label == 1) & v)), int(np.sum(p & (label == 0) & v))
    fn, tn = int(np.sum(~p & (label == 1) & v)), int(np.sum(~p & (label == 0) & v))
    assert (c.tp, c.fp, c.fn, c.tn) == (tp, fp, fn, tn)
    oa = (tp + tn) / (tp + fp + fn + tn)
    pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (tp + fp + fn + tn) ** 2
    assert c.kappa == pytest.approx((oa - pe) / (1 - pe))


def test_label_conventions():
    assert infer_label_values(np.array([0, 255]), None) == LabelValues(0, 255, None)
    assert infer_label_values(np.array([0, 1, 255]), None) == LabelValues(0, 1, 255)
    assert infer_label_values(np.array([1, 2]), None) == LabelValues(1, 2, None)
    with pytest.raises(ChangemapError, match="--label-values"):
        infer_label_values(np.array([0, 3, 7]), None)


def test_cli_json_and_grid_mismatch(hand_made, tmp_path, capsys):
    pred, lab, *_ = hand_made
    out = tmp_path / "m.json"
    assert main(["evaluate", pred, lab, "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"f1", "iou", "precision", "recall", "overall_accuracy", "kappa", "confusion_matrix"}
    assert "F1" in capsys.readouterr().out
    shifted = _write(tmp_path / "shifted.tif", np.zeros((40, 50), "uint8"), transform=from_origin(600010, 3340000, 1, 1))
    assert main(["evaluate", pred, shifted]) == 2
    assert "pass --align" in capsys.readouterr().err
    assert main(["evaluate", pred, shifted, "--align", "--label-values", "0,1"]) == 0


def test_levir_map_scores_like_the_flow(levir_pair, tmp_path):
    """A changemap output evaluates through its mask band; OSCD-style 1/2 labels work the same."""
    _, _, label = levir_pair
    with rasterio.open(label) as src:
        lab, crs, transform = src.read(1), src.crs, src.transform
    pred = _write(tmp_path / "map.tif", np.stack([lab, (lab > 0).astype("uint8")]), transform=transform, crs=crs,
                  descriptions=["change_probability", "change_mask"])
    oscd = _write(tmp_path / "oscd.tif", np.where(lab > 0, 2, 1).astype("uint8"), transform=transform, crs=crs)
    assert evaluate_pair(pred, str(label)).f1 == 1.0
    assert evaluate_pair(pred, oscd).f1 == 1.0
