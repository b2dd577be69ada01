"""changemap's model zoo: siamese change-detection models in plain PyTorch.

Every model follows one contract: ``forward(x)`` takes ``(B, 2, C, H, W)`` (before,
after) and returns logits ``(B, K, H, W)`` at the input resolution. Models are built from
registered backbones (:func:`create_backbone`, :func:`list_backbones`), each of which declares
the channels and stride of its levels (``feature_info``). Nothing here imports ``pipeline``:
downloading weights from a URL takes a ``fetch`` function from the caller.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from models import backbones as _backbones  # noqa: F401  (registers the backbones)
from models import changeformer as _changeformer  # noqa: F401  (registers the models)
from models import changer as _changer  # noqa: F401
from models import cva as _cva  # noqa: F401  (registers the scene-fitted models)
from models import deeplabv3plus as _deeplabv3plus  # noqa: F401
from models import irmad as _irmad  # noqa: F401
from models import siamese as _siamese  # noqa: F401
from models import tinycd as _tinycd  # noqa: F401
from models import transunet as _transunet  # noqa: F401
from models.backbones.base import FeatureInfo
from models.base import ChangeModel
from models.errors import ModelZooError
from models.registry import (
    UnknownBackboneError,
    UnknownModelError,
    create_backbone,
    get_entry,
    list_backbones,
    register_backbone,
    registered_names,
)
from models.weights import (
    Fetch,
    LoadedWeights,
    WeightsError,
    WeightsMeta,
    adapt_input_channels,
    default_meta,
    known_weight_names,
    load_into,
    resolve_weights,
)

__all__ = [
    "ChangeModel", "FeatureInfo", "Fetch", "LoadedWeights", "ModelZooError", "UnknownBackboneError", "UnknownModelError",
    "WeightsError", "WeightsMeta", "build_model", "create_backbone", "create_model", "list_backbones",
    "list_models", "model_info", "model_spec", "register_backbone",
]


def list_models(kind: str | None = None) -> list[str]:
    """Names of the registered models: all, or those of one ``kind`` (``deep``, ``scene-fitted``)."""
    return registered_names(kind)


def _create(name: str, in_channels: int | None, num_classes: int | None, weights: str | LoadedWeights | None,
            kwargs: dict[str, Any], fetch: Fetch | None = None) -> tuple[ChangeModel, LoadedWeights | None]:
    """Build a model and load weights into it; returns the weights as loaded (adapted to the bands)."""
    entry = get_entry(name)
    loaded = (weights if isinstance(weights, LoadedWeights) or weights is None
              else resolve_weights(name, weights, fetch=fetch))
    args: dict[str, Any] = dict(loaded.meta.model_args) if loaded else {"in_channels": in_channels or 3}
    if loaded is None and num_classes is not None:
        args["num_classes"] = num_classes
    if in_channels is not None:
        args["in_channels"] = in_channels
    args.update(kwargs)
    model = entry.factory(**args)
    if loaded is not None:
        if in_channels is not None and in_channels != loaded.meta.in_channels:
            loaded = adapt_input_channels(loaded, model.state_dict(), in_channels)
        load_into(model, loaded, name)
    return model, loaded


def create_model(name: str, *, in_channels: int | None = None, num_classes: int | None = None,
                 weights: str | LoadedWeights | None = None, fetch: Fetch | None = None,
                 **kwargs: Any) -> ChangeModel:
    """Build a registered model, optionally loading weights (known name, path, URL or loaded).

    With weights, ``in_channels``/``num_classes`` default to the checkpoint's; asking for
    another band count adapts the band-dependent tensors (see
    :func:`models.weights.adapt_input_channels`). ``fetch(url, path)`` downloads URL weights.
    """
    return _create(name, in_channels, num_classes, weights, kwargs, fetch)[0]


def build_model(name: str, weights: LoadedWeights | None,
                model_args: dict[str, Any] | None = None) -> tuple[ChangeModel, WeightsMeta]:
    """A model in eval mode and the metadata that says how to feed it.

    ``model_args`` (e.g. from a model config file) apply when there are no weights;
    weights carry their own, except ``in_channels``, which adapts them to more bands.
    """
    if weights is not None:
        model, loaded = _create(name, (model_args or {}).get("in_channels"), None, weights, {})
        return model.eval(), loaded.meta
    meta = default_meta(name, model_args)
    return create_model(name, **dict(meta.model_args)).eval(), replace(meta, model=name)


def model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``--model`` value -> (registered name, arguments): a name, or a YAML/JSON model config file.

    A config is a mapping with ``name`` (default ``siamese``) and the model's arguments.
    """
    if not spec.lower().endswith((".yaml", ".yml", ".json")):
        get_entry(spec)
        return spec, {}
    from pathlib import Path

    import yaml

    path = Path(spec)
    if not path.exists():
        raise UnknownModelError(f"model config {spec} does not exist; pass a registered name or a YAML/JSON file")
    try:
        cfg = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise UnknownModelError(f"model config {spec} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise UnknownModelError(f"model config {spec} must be a mapping of arguments, got {type(cfg).__name__}")
    cfg = dict(cfg)
    name = cfg.pop("name", "siamese")
    get_entry(name)
    try:
        get_entry(name).factory(**cfg)
    except (TypeError, ValueError) as exc:
        raise UnknownModelError(f"model config {spec} does not build model {name!r}: {exc}") from exc
    return name, cfg


def model_info(name: str) -> dict[str, Any]:
    """Name, kind, description, parameter count and known weights of a registered model."""
    entry = get_entry(name)
    model = entry.factory()
    return {
        "name": name,
        "kind": entry.kind,
        "description": entry.description,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights": known_weight_names(name),
    }
