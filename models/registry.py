"""Registries: the model names the CLI accepts, and the backbones models are built from.

Models: :func:`register_model` / :func:`get_entry` / :func:`registered_names`.
Backbones: :func:`register_backbone` / :func:`create_backbone` / :func:`list_backbones`. A
backbone has an optional *interaction form* (Changer's: one module runs both dates and
exchanges information between them after every stage, ``forward_pair(x1, x2)``), registered
under the same name with ``interaction=True`` and built with ``create_backbone(name,
interaction=cfg)``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from models.errors import UnknownBackboneError, UnknownModelError

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and what the CLI says about it.

    ``kind`` is ``deep`` (trained weights, tiles predicted as they come) or ``scene-fitted``
    (parameters fitted to each scene before its tiles are predicted: :mod:`models.fitting`).
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str
    default_weights: str | None = None
    kind: str = "deep"


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str = "", default_weights: str | None = None, kind: str | None = None):
    """Decorator registering ``factory`` under ``name``; ``kind`` defaults to the factory class's own (``deep``)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, factory, description or (factory.__doc__ or "").strip(), default_weights,
                                     kind or getattr(factory, "kind", "deep"))
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


def registered_names(kind: str | None = None) -> list[str]:
    """The registered model names (of one ``kind`` if given), sorted."""
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)




@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: its factory and, if it has one, the factory of its interaction form."""

    name: str
    factory: Factory
    pair_factory: Factory | None = None

    def accepts(self, argument: str) -> bool:
        """Whether the (single-date) factory takes a keyword ``argument``."""
        return argument in inspect.signature(self.factory).parameters


_BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, interaction: bool = False) -> Callable[[Factory], Factory]:
    """Decorator registering a backbone class or factory (keyword arguments, ``in_channels`` among them).

    With ``interaction=True`` it registers the interaction form of the backbone ``name``
    (registered before): a factory taking ``interaction_cfg`` (one entry per stage) whose
    module has ``forward_pair(x1, x2)`` and ``feature_info`` per date.
    """

    def wrap(factory: Factory) -> Factory:
        if interaction:
            entry = backbone_entry(name)
            if entry.pair_factory is not None:
                raise ValueError(f"backbone {name!r} has its interaction form registered twice")
            _BACKBONES[name] = replace(entry, pair_factory=factory)
        elif name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        else:
            _BACKBONES[name] = BackboneEntry(name, factory)
        return factory

    return wrap


def backbone_entry(name: str) -> BackboneEntry:
    """Look a backbone up by name, with an error that lists the known names."""
    try:
        return _BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}") from None


def create_backbone(name: str, *, interaction: Sequence[Any] | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered backbone ``name``; with ``interaction``, its interaction form.

    Args:
        name: A name from :func:`list_backbones`.
        interaction: Per-stage interaction layer configs (see
            :func:`models.layers.interaction.build_interaction`); None builds the plain backbone.
        **kwargs: The backbone's own options (``in_channels``, depth, variant, dilation, ...).
    """
    entry = backbone_entry(name)
    if interaction is None:
        return entry.factory(**kwargs)
    if entry.pair_factory is None:
        raise ValueError(
            f"backbone {name!r} has no interaction form (one module running both dates, as the changer head "
            f"needs); backbones with one: {', '.join(list_backbones(interaction=True))}")
    return entry.pair_factory(interaction_cfg=interaction, **kwargs)


def list_backbones(interaction: bool = False) -> list[str]:
    """Names of the registered backbones (with ``interaction=True``: those with an interaction form)."""
    return sorted(n for n, e in _BACKBONES.items() if not interaction or e.pair_factory is not None)
