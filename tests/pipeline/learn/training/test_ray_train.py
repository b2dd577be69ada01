"""Ray Train: two data-parallel CPU workers (gloo, 127.0.0.1) behave like one worker and write a loadable best.pt."""
from __future__ import annotations

import pytest

import models
from models.weights import resolve_weights
from pipeline.learn.training import TrainConfig, train
from tests.data.make_change_dataset import make_dataset


@pytest.mark.slow
def test_two_ray_workers_learn_and_save_a_loadable_checkpoint(ray_local, tmp_path):
    data = make_dataset(tmp_path / "ds", n=8, size=64, seed=0, splits={"train": list(range(6)), "val": [6, 7]})
    cfg = TrainConfig(model="tinycd", data=str(data), out=str(tmp_path / "run"), epochs=2, batch_size=2, crop=48,
                      crops_per_image=2, lr=3e-3, warmup=0.1, num_workers=2)
    assert cfg.distributed
    result = train(cfg)
    history = result["history"]
    # 12 crops per epoch dealt to 2 workers x 2 crops a step: 3 steps an epoch, as 1 worker with batch 4.
    assert [r["steps"] for r in history] == [3, 6]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0 <= history[-1]["val_f1"] <= 1
    loaded = resolve_weights("tinycd", str(tmp_path / "run" / "best.pt"))
    model, meta = models.build_model("tinycd", loaded)
    assert meta.threshold == pytest.approx(result["best"]["threshold"])
    assert (tmp_path / "run" / "metrics.csv").exists() and (tmp_path / "run" / "curve.png").exists()
