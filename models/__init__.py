"""changemap's model zoo: siamese change-detection models in plain PyTorch.

Every model follows one contract: ``forward(x)`` takes ``(B, 2, C, H, W)`` (before,
after) and returns logits ``(B, K, H, W)`` at the input resolution.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from models import changeformer as _changeformer  # noqa: F401  (registers the models)
from models import changer as _changer  # noqa: F401
from models import tinycd as _tinycd  # noqa: F401
from models.base import ChangeModel
from models.registry import UnknownModelError, get_entry, registered_names
from models.weights import (
    LoadedWeights,
    WeightsError,
    WeightsMeta,
    default_meta,
    known_weight_names,
    load_into,
    resolve_weights,
)

__all__ = [
    "ChangeModel", "LoadedWeights", "UnknownModelError", "WeightsError", "WeightsMeta",
    "build_model", "create_model", "list_models", "model_info",
]


def list_models() -> list[str]:
    """Names of all registered models."""
    return registered_names()


def create_model(name: str, *, in_channels: int = 3, num_classes: int | None = None,
                 weights: str | LoadedWeights | None = None, **kwargs: Any) -> ChangeModel:
    """Build a registered model, optionally loading weights (known name, path, URL or loaded).

    With weights, ``in_channels``/``num_classes`` default to the checkpoint's.
    """
    entry = get_entry(name)
    loaded = weights if isinstance(weights, LoadedWeights) or weights is None else resolve_weights(name, weights)
    args: dict[str, Any] = dict(loaded.meta.model_args) if loaded else {"in_channels": in_channels}
    if loaded is None and num_classes is not None:
        args["num_classes"] = num_classes
    args.update(kwargs)
    model = entry.factory(**args)
    if loaded is not None:
        load_into(model, loaded, name)
    return model


def build_model(name: str, weights: LoadedWeights | None) -> tuple[ChangeModel, WeightsMeta]:
    """A model in eval mode and the metadata that says how to feed it."""
    model = create_model(name, weights=weights)
    meta = weights.meta if weights is not None else replace(default_meta(name), model=name)
    return model.eval(), meta


def model_info(name: str) -> dict[str, Any]:
    """Name, description, parameter count and known weights of a registered model."""
    entry = get_entry(name)
    model = entry.factory()
    return {
        "name": name,
        "description": entry.description,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights": known_weight_names(name),
    }
