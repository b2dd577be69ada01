"""Choosing the model of a run: --model, else what a changemap checkpoint names, else TinyCD."""
from __future__ import annotations

import models
from models.weights import save_checkpoint
from pipeline.checks import check_model
from pipeline.loader import DEFAULT_MODEL, choose_model


def test_a_changemap_checkpoint_names_its_model(tmp_path):
    model, meta = models.build_model("changer-ghost", None, {})
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, meta)
    assert choose_model(None, str(path)) == "changer-ghost"
    loaded, run_meta = check_model(choose_model(None, str(path)), str(path), None, "window", 512, 64)
    assert run_meta.model == "changer-ghost" and loaded.meta.sha256
    assert choose_model("tinycd", str(path)) == "tinycd"  # an explicit --model wins (and load reports the clash)


def test_without_a_checkpoint_the_default_is_tinycd(tmp_path):
    assert choose_model(None, None) == DEFAULT_MODEL == "tinycd"
    assert choose_model(None, "levir") == "tinycd"
    assert choose_model(None, str(tmp_path / "missing.pt")) == "tinycd"
