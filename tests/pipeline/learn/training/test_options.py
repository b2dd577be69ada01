"""The training and dataset-evaluation options: derived from the pydantic fields, parsed and refused as before."""
from __future__ import annotations

import argparse
import json

import pytest

from models import WeightsMeta
from pipeline.cli import main, options
from pipeline.cli.learn import EvaluateOptions, add_dataset_evaluate_options, add_train_parser
from pipeline.config import ConfigError
from pipeline.learn.datasets import Sample
from pipeline.learn.labels import LabelValues
from pipeline.learn.training import TrainConfig, TrainConfigError, resume_config
from pipeline.learn.training.config import LOSS_NAMES, RUNTIME_FIELDS
from pipeline.learn.training.plan import TrainPlan

# The options `changemap train --help` listed when they were declared by hand.
TRAIN_OPTIONS = [
    "--model", "--data", "--out", "--weights", "--split", "--val", "--val-split", "--val-fraction", "--epochs",
    "--batch-size", "--crop", "--crops-per-image", "--lr", "--weight-decay", "--schedule", "--warmup", "--loss",
    "--change-weight", "--bands", "--mean", "--std", "--label-values", "--num-classes", "--no-augment", "--swap",
    "--seed", "--no-amp", "--clip-grad", "--num-workers", "--gpus-per-worker", "--cpus-per-worker", "--ray-address",
    "--loader-workers", "--checkpoint-every", "--val-tile", "--val-halo", "--resume"]

# RUN_DIR/config.json's "config" as the dataclass TrainConfig wrote it (tuples as lists, change weight as text).
OLD_SAVED = {
    "model": "tinycd", "data": "/data/ds", "out": "/runs/old", "weights": None, "split": None, "val": None,
    "val_split": None, "val_fraction": 0.2, "epochs": 2, "batch_size": 4, "crop": 48, "crops_per_image": 2,
    "lr": 0.003, "weight_decay": 0.01, "schedule": "poly", "warmup": 0.1, "loss": "ce+dice", "change_weight": "2.5",
    "bands": [1, 2, 3], "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2], "label_values": None, "num_classes": None,
    "augment": True, "swap": None, "seed": 0, "amp": True, "clip_grad": None, "num_workers": 1,
    "gpus_per_worker": None, "cpus_per_worker": 1, "ray_address": None, "loader_workers": 0, "checkpoint_every": 1,
    "val_tile": 0, "val_halo": 64, "resume": False}


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="changemap")
    add_train_parser(p.add_subparsers(dest="command"))
    return p


def _run_dir(tmp_path, config: dict):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": config, "plan": {}}))
    return run


def test_train_lists_the_same_options_as_before():
    sub = _train_parser()._subparsers._group_actions[0].choices["train"]
    assert [o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")] == TRAIN_OPTIONS
    required = [a.option_strings[0] for a in sub._actions if a.required]
    assert required == ["--out"]  # --model and --data may come from a checkpoint or a saved run


def test_derived_train_options_parse_like_before():
    args = _train_parser().parse_args([
        "train", "--out", "runs/a", "--model", "tinycd", "--data", "ds", "--no-augment", "--mean", "0.5,0.4,0.3",
        "--std", "0.2,0.2,0.25", "--bands", "3,2,1", "--change-weight", "auto", "--schedule", "cosine",
        "--num-classes", "2", "--epochs", "3", "--lr", "1e-4", "--gpus-per-worker", "0.5"])
    given = options.given(args, TrainConfig)
    # Only the options given: the others stay unset (a resumed run keeps its saved ones).
    assert given == {"out": "runs/a", "model": "tinycd", "data": "ds", "augment": False, "mean": (0.5, 0.4, 0.3),
                     "std": (0.2, 0.2, 0.25), "bands": (3, 2, 1), "change_weight": "auto", "schedule": "cosine",
                     "num_classes": 2, "epochs": 3, "lr": 1e-4, "gpus_per_worker": 0.5}
    cfg = options.take(args, TrainConfig)
    assert (cfg.augment, cfg.amp, cfg.mean, cfg.change_weight, cfg.num_classes) == (
        False, True, (0.5, 0.4, 0.3), "auto", 2)
    assert cfg.seed == 0 and cfg.loss == "ce+dice"  # defaults
    args = _train_parser().parse_args(["train", "--out", "r", "--model", "m", "--data", "d", "--change-weight", "2.5",
                                       "--no-amp", "--resume", "--label-values", "0,255"])
    cfg = options.take(args, TrainConfig)
    assert (cfg.change_weight, cfg.amp, cfg.augment, cfg.resume, cfg.label_values) == (2.5, False, True, True, "0,255")
    assert "num_workers" not in vars(args) and "augment" not in vars(args)


@pytest.mark.parametrize(("argv", "message"), [
    (["--lr", "-1"], "--lr must be positive"),
    (["--change-weight", "0"], "--change-weight takes a positive number or auto, got '0'"),
    (["--change-weight", "lots"], "--change-weight takes a positive number or auto, got 'lots'"),
    (["--crop", "40"], "--crop must be a multiple of 16"),
    (["--mean", "0.5,0.5"], "give --mean and --std together"),
    (["--schedule", "bogus"], "argument --schedule: invalid choice: 'bogus'"),
    (["--num-classes", "3"], "argument --num-classes: invalid choice: 3"),
    (["--mean", "a,b", "--std", "1,1"], "--mean takes comma-separated numbers like 0.5,0.4,0.3, got 'a,b'"),
])
def test_a_bad_training_option_is_refused_naming_it(argv, message, tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--model", "tinycd", "--data", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("kw", "message"), [
    ({"schedule": "bogus"}, "--schedule must be one of poly, cosine, got 'bogus'"),
    ({"loss": "l1"}, "--loss must be one of ce, dice, ce+dice, got 'l1'"),
    ({"lr": -1}, "--lr must be positive and --weight-decay non-negative, got -1.0 and 0.01"),
    ({"num_classes": 3}, "--num-classes must be 1 (sigmoid) or 2 (softmax), got 3"),
    ({"warmup": 1}, "--warmup is a fraction of all steps in [0, 1), got 1"),
    ({"bands": (0, 1)}, "--bands are 1-based band numbers, got (0, 1)"),
    ({"mean": (0.5,), "std": (0.1, 0.2)}, "--mean has 1 values but --std 2"),
    ({"epochs": "ten"}, "--epochs: input should be a valid integer"),
    ({"data": ""}, "--data is required"),
])
def test_a_bad_training_value_is_a_training_error_naming_the_option(kw, message):
    with pytest.raises(TrainConfigError) as err:
        TrainConfig(**{"model": "tinycd", "data": "ds", "out": "run", **kw})
    assert message in str(err.value) and isinstance(err.value, ConfigError)


def test_an_old_saved_config_loads_and_saves_in_the_same_form(tmp_path):
    cfg = TrainConfig.from_dict(OLD_SAVED)
    assert cfg.bands == (1, 2, 3) and cfg.mean == (0.4, 0.4, 0.4) and cfg.change_weight == 2.5
    saved = cfg.to_dict()
    assert set(saved) == set(OLD_SAVED) and saved["bands"] == [1, 2, 3] and saved["std"] == [0.2, 0.2, 0.2]
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))) == cfg
    run = _run_dir(tmp_path, OLD_SAVED)
    resumed = resume_config(str(run), {"num_workers": 1, "bands": (1, 2, 3), "change_weight": "2.5"})
    assert resumed.resume and resumed.out == str(run.resolve()) and resumed.lr == 0.003
    with pytest.raises(TrainConfigError, match="--change-weight auto differs from the saved 2.5"):
        resume_config(str(run), {"change_weight": "auto"})


def test_an_unknown_key_in_a_saved_config_is_refused_in_one_line_naming_it(tmp_path, capsys):
    run = _run_dir(tmp_path, {**OLD_SAVED, "bogus_option": 1})
    with pytest.raises(TrainConfigError) as err:
        resume_config(str(run), {})
    assert "unknown training options ['bogus_option']" in str(err.value) and "\n" not in str(err.value)
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "unknown training options ['bogus_option']" in err and err.count("\n") == 1


def test_runtime_options_may_change_on_resume_and_others_may_not(tmp_path):
    run = _run_dir(tmp_path, OLD_SAVED)
    cfg = resume_config(str(run), {"num_workers": 2, "checkpoint_every": 5, "loader_workers": 1})
    assert (cfg.num_workers, cfg.checkpoint_every, cfg.loader_workers, cfg.distributed) == (2, 5, 1, True)
    assert set(RUNTIME_FIELDS) <= set(TrainConfig.model_fields)
    with pytest.raises(TrainConfigError, match="--mean"):
        resume_config(str(run), {"mean": (0.5, 0.5, 0.5)})


def test_train_config_is_frozen_and_its_loss_names_are_the_losses():
    from pipeline.learn.losses import LOSSES

    cfg = TrainConfig(model="tinycd", data="ds", out="run")
    with pytest.raises(Exception):
        cfg.lr = 1.0  # type: ignore[misc]
    assert cfg.replace(lr=0.5).lr == 0.5 and cfg.lr == 1e-3
    assert LOSS_NAMES == LOSSES


def test_the_plan_round_trips_through_its_saved_form():
    meta = WeightsMeta(model="tinycd", model_args={"in_channels": 3, "num_classes": 1}, bands=(1, 2, 3),
                       mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2), threshold=0.4)
    plan = TrainPlan(model="tinycd", meta=meta, train=(Sample("a", "a1.tif", "a2.tif", "a.png"),),
                     val=(Sample("b", "b1.tif", "b2.tif", None),), label_values=LabelValues(0, 255),
                     change_fraction=0.1, change_weight=2.0, normalization="given")
    saved = json.loads(json.dumps(plan.to_dict()))
    assert saved["meta"] == json.loads(json.dumps(meta.to_dict()))
    assert saved["train"] == [{"name": "a", "before": "a1.tif", "after": "a2.tif", "label": "a.png"}]
    assert TrainPlan.from_dict(saved) == plan
    with pytest.raises(ConfigError, match="unknown training plan fields"):
        TrainPlan.from_dict({**saved, "extra": 1})


def test_dataset_evaluate_options_keep_their_defaults():
    p = argparse.ArgumentParser()
    add_dataset_evaluate_options(p)
    args = p.parse_args([])
    assert (args.model, args.weights, args.data, args.split, args.bands, args.tile, args.halo, args.statistics) == (
        None, None, None, None, None, 0, 64, "window")
    opts = options.take(p.parse_args(["--data", "ds", "--bands", "3,2,1", "--tile", "256", "--statistics", "scene"]),
                        EvaluateOptions)
    assert (opts.data, opts.bands, opts.tile, opts.halo, opts.statistics) == ("ds", (3, 2, 1), 256, 64, "scene")
    with pytest.raises(ConfigError, match="--halo must be 0 or more"):
        EvaluateOptions(halo=-1)


def test_cli_training_run_resumes_with_its_saved_options(tmp_path, capsys):
    from tests.data.make_change_dataset import make_dataset

    data = make_dataset(tmp_path / "ds", n=4, size=64, seed=0, splits={"train": [0, 1, 2], "val": [3]})
    run = tmp_path / "run"
    assert main(["train", "--model", "tinycd", "--data", str(data), "--out", str(run), "--epochs", "1",
                 "--batch-size", "2", "--crop", "48", "--change-weight", "2", "--mean", "0.4,0.4,0.4",
                 "--std", "0.2,0.2,0.2", "--no-augment"]) == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    assert (saved["change_weight"], saved["mean"], saved["augment"], saved["epochs"]) == (2.0, [0.4] * 3, False, 1)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 2
    assert "--epochs 2 differs from the saved 1" in capsys.readouterr().err
    # Options not given stay unset; a runtime option may change; a value equal to the saved one is no conflict.
    assert main(["train", "--out", str(run), "--resume", "--loader-workers", "0", "--change-weight", "2.0"]) == 0
    assert "best epoch 1" in capsys.readouterr().out
