"""What a training run learns before its first step, decided once on the driver and saved with the run.

The plan fixes the training and validation pairs, the input bands, the normalisation
(the initial weights', given, or computed from the training images), the label
convention and the class weight, and the model's full arguments, so every worker and a
resumed run use exactly the same.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from pydantic import field_serializer, field_validator

import models
from models import WeightsMeta
from pipeline.config import Frozen
from pipeline.io.fs import download
from pipeline.learn.datasets import (
    Sample,
    available_splits,
    default_scale,
    infer_dataset_label_values,
    load_dataset,
    read_pair,
    scan_dataset,
    split_samples,
)
from pipeline.learn.labels import LabelValues, parse_label_values
from pipeline.learn.losses import auto_change_weight
from pipeline.learn.training.config import TrainConfig, TrainConfigError


class TrainPlan(Frozen):
    """The data and the model description a run trains with (see the module docstring).

    Saved in RUN_DIR/config.json (:meth:`to_dict`) and read back with :meth:`from_dict`.
    """

    what: ClassVar[str] = "training plan fields"

    model: str
    meta: WeightsMeta  # the checkpoint metadata best.pt gets (its threshold is set by validation)
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    label_values: LabelValues
    change_fraction: float
    change_weight: float
    normalization: str  # where mean/std come from

    @field_validator("meta", mode="before")
    @classmethod
    def _meta(cls, v: Any) -> Any:
        return WeightsMeta.from_dict(v) if isinstance(v, Mapping) else v

    @field_serializer("meta")
    def _meta_dict(self, meta: WeightsMeta) -> dict[str, Any]:
        return meta.to_dict()


def _datasets(cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    splits = available_splits(cfg.data)
    split = cfg.split if cfg.split is not None else ("train" if "train" in splits else None)
    train = load_dataset(cfg.data, split)
    if cfg.val == "none":
        return train, []
    if cfg.val:
        return train, load_dataset(cfg.val, cfg.val_split)
    if cfg.val_split or "val" in splits:
        return train, load_dataset(cfg.data, cfg.val_split or "val")
    return split_samples(train, cfg.val_fraction, cfg.seed)


def make_plan(cfg: TrainConfig) -> TrainPlan:
    """Resolve the model, initial weights, data, bands, normalisation and class weight of a new run."""
    name, spec_args = models.model_spec(cfg.model)
    loaded = (models.resolve_weights(name, cfg.weights, fetch=download)
              if cfg.weights not in (None, "none", "random") else None)
    train, val = _datasets(cfg)
    bands = cfg.bands or (loaded.meta.bands if loaded else None) or tuple(range(1, read_pair(train[0])[0].shape[1] + 1))
    values = parse_label_values(cfg.label_values) if cfg.label_values else infer_dataset_label_values(train)
    stats = scan_dataset(train, bands, values, seed=cfg.seed)
    n = len(bands)
    if loaded is not None:
        if cfg.num_classes is not None and cfg.num_classes != loaded.meta.model_args.get("num_classes", cfg.num_classes):
            raise TrainConfigError(f"--num-classes {cfg.num_classes} differs from the initial weights' "
                                   f"{loaded.meta.model_args.get('num_classes')}; fine-tuning keeps the output layer")
        model, meta = models.build_model(name, loaded, {"in_channels": n})
        args = dict(meta.model_args)
        normalization = f"initial weights {cfg.weights}"
    else:
        args = {**spec_args, "in_channels": n}
        if cfg.num_classes is not None:
            args["num_classes"] = cfg.num_classes
        model = models.create_model(name, **args)
        meta = WeightsMeta(model=name, model_args=args, mean=(0.0,) * n, std=(1.0,) * n)
        normalization = f"computed from {stats.samples_scanned} training pair(s)"
    args["num_classes"] = int(getattr(model, "num_classes", 1))
    if cfg.mean is not None:
        if len(cfg.mean) != n:
            raise TrainConfigError(f"--mean/--std give {len(cfg.mean)} values for {n} band(s)")
        mean, std, scale, normalization = cfg.mean, cfg.std, default_scale(stats.dtype), "given"
    elif loaded is not None:
        mean, std, scale = meta.mean, meta.std, meta.scale
    else:
        mean, std, scale = stats.mean, stats.std, stats.scale
    license_ = loaded.meta.license if loaded else "unknown (trained by changemap; the training data's terms apply)"
    meta = WeightsMeta(model=name, model_args=args, bands=tuple(bands), scale=scale, mean=tuple(mean),
                       std=tuple(std), threshold=meta.threshold, classes=meta.classes, license=license_)
    weight = auto_change_weight(stats.change_fraction) if cfg.change_weight == "auto" else float(cfg.change_weight)
    return TrainPlan(model=name, meta=meta, train=tuple(train), val=tuple(val), label_values=values,
                     change_fraction=stats.change_fraction, change_weight=weight, normalization=normalization)


def with_threshold(meta: WeightsMeta, threshold: float) -> WeightsMeta:
    """The plan's metadata with the threshold chosen on validation."""
    return replace(meta, threshold=threshold)
