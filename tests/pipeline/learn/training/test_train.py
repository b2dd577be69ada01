"""Training runs in-process: loss decreases, the run folder is complete, best.pt alone runs, resume is exact."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models.weights import resolve_weights
from pipeline.learn.datasets import load_dataset, read_pair
from pipeline.learn.training import TrainConfig, TrainConfigError, resume_config, train
from pipeline.learn.training.loop import HIST_BINS, StopTraining, best_threshold
from tests.conftest import LEVIR_256, require
from tests.data.make_change_dataset import make_dataset

SMALL = dict(model="tinycd", epochs=2, batch_size=4, crop=48, crops_per_image=2, lr=3e-3, warmup=0.1,
             checkpoint_every=1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny") / "ds", n=8, size=64, seed=0, splits={
        "train": list(range(6)), "val": [6, 7]})


@pytest.fixture(scope="module")
def scratch_run(tiny_data, tmp_path_factory):
    """TinyCD from scratch on the tiny set, 2 epochs of 3 steps (train/val from the list files)."""
    out = tmp_path_factory.mktemp("runs") / "scratch"
    steps = []
    result = train(TrainConfig(data=str(tiny_data), out=str(out), **SMALL), callback=steps.append)
    return out, result, steps


def test_loss_decreases_and_run_folder_is_complete(scratch_run):
    out, result, steps = scratch_run
    history = result["history"]
    assert [r["epoch"] for r in history] == [1, 2] and [r["steps"] for r in history] == [3, 6]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {p.name for p in out.iterdir()} >= {"best.pt", "best.json", "last.pt", "metrics.csv", "curve.png",
                                               "config.json"}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([r["train_loss"] for r in history], rel=1e-5)
    assert all(0 <= float(r["val_f1"]) <= 1 for r in rows)
    assert Image.open(out / "curve.png").size[0] > 300
    best = json.loads((out / "best.json").read_text())
    assert best["metrics"]["val_f1"] == max(r["val_f1"] for r in history)
    assert sum(1 for e in steps if e["event"] == "step") == 6


def test_best_checkpoint_carries_everything_run_needs(scratch_run, tiny_data):
    out, result, _ = scratch_run
    loaded = resolve_weights("tinycd", str(out / "best.pt"))
    meta = loaded.meta
    assert meta.model == "tinycd" and meta.model_args == {"in_channels": 3, "num_classes": 1}
    assert meta.bands == (1, 2, 3) and meta.scale == pytest.approx(1 / 255)
    assert meta.threshold == result["best"]["threshold"]
    # Normalisation statistics come from the training pairs only (train split: pairs 0-5).
    train = load_dataset(str(tiny_data), "train")
    px = np.concatenate([read_pair(s)[0].transpose(1, 0, 2, 3).reshape(3, -1) for s in train], 1) / 255
    np.testing.assert_allclose(meta.mean, px.mean(1), rtol=1e-6)
    np.testing.assert_allclose(meta.std, px.std(1), rtol=1e-5)
    model, run_meta = models.build_model("tinycd", loaded)
    assert run_meta.threshold == meta.threshold
    x = torch.from_numpy(((read_pair(train[0])[0] / 255 - np.array(meta.mean).reshape(3, 1, 1))
                          / np.array(meta.std).reshape(3, 1, 1)).astype("float32"))[None]
    with torch.no_grad():
        assert model(x).shape == (1, 1, 64, 64)


def test_resume_after_an_interruption_gives_the_same_run(scratch_run, tiny_data, tmp_path):
    out, result, _ = scratch_run
    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), **SMALL)

    def kill_at_step_5(event):  # mid-epoch 2; last.pt was written after step 4
        if event["event"] == "step" and event["global_step"] == 5:
            raise StopTraining

    with pytest.raises(StopTraining):
        train(cfg, callback=kill_at_step_5)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 1, 4)
    with pytest.raises(TrainConfigError, match="already holds a training run"):
        train(cfg)
    with pytest.raises(TrainConfigError, match="--lr 0.1 differs"):
        resume_config(str(tmp_path / "run"), {"lr": 0.1})
    resumed = train(resume_config(str(tmp_path / "run"), {}))
    for a, b in zip(resumed["history"], result["history"]):
        assert {k: v for k, v in a.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in b.items() if k != "seconds"}, rel=1e-5, abs=1e-6)
    final = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    reference = torch.load(out / "last.pt", weights_only=True)["model"]
    for key in reference:
        torch.testing.assert_close(final[key], reference[key], rtol=1e-5, atol=1e-6)


def test_best_threshold_maximises_f1_on_the_histogram():
    rng = np.random.default_rng(0)
    pos = np.clip(rng.normal(0.7, 0.15, 4000), 0, 1)
    neg = np.clip(rng.normal(0.3, 0.15, 20000), 0, 1)
    hp = np.histogram(pos, HIST_BINS, (0, 1))[0]
    hn = np.histogram(neg, HIST_BINS, (0, 1))[0]
    threshold, c = best_threshold(hp, hn)
    assert (c.tp, c.fp) == (int((pos >= threshold).sum()), int((neg >= threshold).sum()))
    brute = max(np.arange(5, 96) / 100, key=lambda t: 2 * (pos >= t).sum() / ((pos >= t).sum() + (neg >= t).sum()
                                                                            + len(pos)))
    assert threshold == pytest.approx(brute, abs=0.011)
    assert c.fn + c.tp == len(pos) and c.tn + c.fp == len(neg)


def test_fine_tuning_tinycd_on_levir_keeps_its_accuracy(tmp_path):
    root = require(LEVIR_256)
    result = train(TrainConfig(model="tinycd", weights="levir", data=str(root), out=str(tmp_path / "ft"), epochs=1,
                               batch_size=4, crop=128, crops_per_image=1, lr=1e-4, val_fraction=0.25))
    best = result["best"]
    assert best["metrics"]["val_f1"] >= 0.9
    meta = resolve_weights("tinycd", str(tmp_path / "ft" / "best.pt")).meta
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406)) and meta.std == pytest.approx((0.229, 0.224, 0.225))
    assert meta.license.startswith("non-commercial")  # inherited from the initial weights
    assert 0.05 <= meta.threshold <= 0.95
