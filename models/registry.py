"""Model registry: names the CLI accepts, mapped to factory functions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and what the CLI says about it."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    default_weights: str | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str = "", default_weights: str | None = None):
    """Decorator registering ``factory`` under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, factory, description or (factory.__doc__ or "").strip(), default_weights)
        return factory

    return wrap


def get_entry(name: str) -> ModelEntry:
    """Look a model up by name, with an error that lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}: known models are {', '.join(sorted(_REGISTRY))} "
            "(`changemap models` lists them)"
        ) from None


def registered_names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


class UnknownModelError(ValueError):
    """The model name is not in the registry."""
