"""The one model loader: ``--model``/``--weights`` -> a model, its weights and the metadata to feed it.

Every entry point (run, archive, evaluate, the Ray predictors, training, the benchmark) loads
models through here, so a weights rule fixed here is fixed everywhere.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import models
from models import ChangeModel, LoadedWeights, WeightsMeta
from models.registry import get_entry
from models.statistics import SceneStatistics, StatisticsUnsupported
from pipeline.errors import ChangemapError
from pipeline.io.fs import download
from pipeline.tiling import check_scene_tiling

DEFAULT_MODEL = "tinycd"


def model_kind(model: str) -> str:
    """``deep`` or ``scene-fitted``: the kind of a registered model or of a model config file's model."""
    return get_entry(models.model_spec(model)[0]).kind


def check_fitted(net: ChangeModel, model: str, weights: str | None, statistics: str, halo: int) -> None:
    """A scene-fitted model takes no weights and no scene statistics, and its smoothing must fit in the halo."""
    if weights not in (None, "none", "random"):
        raise ChangemapError(f"model {model} is fitted to each scene and takes no weights; leave out --weights {weights}")
    if statistics == "scene":
        raise ChangemapError(f"--statistics scene is for deep models; {model} is fitted to the whole scene already")
    radius = int(getattr(net, "smooth_radius", 0))
    if radius > halo:
        raise ChangemapError(f"model {model} averages its change statistic over {radius} pixels around each pixel, "
                             f"more than --halo {halo}: tiles would differ at their edges; use --halo {radius} or more")


def choose_model(model: str | None, weights: str | None) -> str:
    """``--model`` as given, else the model a changemap checkpoint names, else TinyCD."""
    if model:
        return model
    return models.weights.checkpoint_model(weights, fetch=download) or DEFAULT_MODEL


def resolve(model: str, weights: str | None, in_channels: int | None = None
            ) -> tuple[str, dict[str, Any], LoadedWeights | None]:
    """Resolve ``--model`` and ``--weights`` to (registered name, model arguments, loaded weights or None).

    ``model`` is a registered name or a model config file; ``weights`` None means the model's
    default weights, ``none`` random initialisation.
    """
    name, args = models.model_spec(model)
    if in_channels is not None:
        args["in_channels"] = in_channels
    spec = weights if weights is not None else get_entry(name).default_weights
    if spec in ("none", "random"):
        spec = None
    return name, args, models.resolve_weights(name, spec, fetch=download)


def build(model: str, weights: str | None, in_channels: int | None = None
          ) -> tuple[ChangeModel, WeightsMeta, LoadedWeights | None]:
    """A model in eval mode with its weights, its metadata and the loaded weights (None: random)."""
    name, args, loaded = resolve(model, weights, in_channels)
    net, meta = models.build_model(name, loaded, args)
    return net, meta, loaded


def build_loaded(name: str, loaded: LoadedWeights | None, model_args: dict | None = None
                 ) -> tuple[ChangeModel, WeightsMeta]:
    """A model from weights already resolved (what a Ray predictor receives)."""
    return models.build_model(name, loaded, model_args)


def check_scene_statistics(net: ChangeModel, name: str, tile: int, halo: int) -> None:
    """``--statistics scene`` needs a model whose window dependence is statistics only, on its stride grid."""
    try:
        SceneStatistics(net)
        check_scene_tiling(tile, halo, net.size_divisor)
    except (StatisticsUnsupported, ValueError) as exc:
        raise ChangemapError(f"model {name}: {exc}") from None


def select_bands(meta: WeightsMeta, raster_bands: int, override: Sequence[int] | None) -> tuple[int, ...]:
    """The 1-based bands fed to the model, checked against the raster and the model."""
    bands = tuple(override) if override else (meta.bands or tuple(range(1, meta.in_channels + 1)))
    if len(bands) != meta.in_channels:
        raise ChangemapError(
            f"model {meta.model} takes {meta.in_channels} bands but --bands selects {len(bands)} ({bands}); "
            f"select exactly {meta.in_channels}"
        )
    if max(bands) > raster_bands:
        raise ChangemapError(
            f"model {meta.model} reads bands {bands} but the rasters have only {raster_bands} band(s); "
            "pass rasters with those bands or choose others with --bands"
        )
    return bands
