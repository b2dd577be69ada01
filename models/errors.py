"""The model zoo's user errors: a name, a config or a checkpoint that does not fit (no torch import here)."""
from __future__ import annotations


class ModelZooError(ValueError):
    """A model, backbone or weights problem the user can fix; every error of the zoo derives from it."""


class UnknownModelError(ModelZooError):
    """The model name is not in the registry."""


class UnknownBackboneError(ModelZooError):
    """The backbone name is not in the registry."""


class WeightsError(ModelZooError):
    """Weights that cannot be found, verified or loaded."""
