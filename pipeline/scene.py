"""The steps of one scene-pair run as plain functions (the Prefect flow only orders them)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

import models
from models import LoadedWeights, WeightsMeta
from models.registry import get_entry
from models.statistics import SceneStatistics, StatisticsUnsupported
from pipeline import storage
from pipeline.config import RunConfig
from pipeline.errors import ChangemapError, OutputExistsError
from pipeline.grid import Alignment, plan_alignment
from pipeline.io import fs, raster
from pipeline.tiling import check_scene_tiling, make_tiles


@dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its intermediate stores."""

    run_dir: str
    input_store: str
    output_store: str
    temporary: bool  # created in the system temp folder (no --workdir)


def check_output(cfg: RunConfig) -> None:
    """Refuse to replace an existing output unless ``overwrite`` is set."""
    if not cfg.overwrite and fs.exists(cfg.output):
        raise OutputExistsError(f"output {cfg.output} already exists; pass --overwrite to replace it or choose another path")


DEFAULT_MODEL = "tinycd"


def choose_model(model: str | None, weights: str | None) -> str:
    """``--model`` as given, else the model a changemap checkpoint names, else TinyCD."""
    if model:
        return model
    return models.weights.checkpoint_model(weights) or DEFAULT_MODEL


def load_weights(model: str, weights: str | None, in_channels: int | None = None, *,
                 statistics: str = "window", tile: int = 512, halo: int = 64
                 ) -> tuple[LoadedWeights | None, WeightsMeta]:
    """Resolve ``--model`` (name or config file) and ``--weights`` (default: the model's default).

    ``in_channels`` (the number of ``--bands``) builds the model for that many bands,
    adapting weights trained on fewer (see :func:`models.weights.adapt_input_channels`).
    The model is built once here so that weights that do not fit, and ``statistics="scene"``
    with a model or tiling it cannot work with, fail before any work.
    Returns the loaded weights (None: random initialisation) and the metadata to run with.
    """
    net, meta, loaded = build_model(model, weights, in_channels)
    if statistics == "scene":
        check_scene_statistics(net, meta.model, tile, halo)
    return loaded, meta


def check_scene_statistics(net, name: str, tile: int, halo: int) -> None:
    """``--statistics scene`` needs a model whose window dependence is statistics only, on its stride grid."""
    try:
        SceneStatistics(net)
        check_scene_tiling(tile, halo, net.size_divisor)
    except (StatisticsUnsupported, ValueError) as exc:
        raise ChangemapError(f"model {name}: {exc}") from None


def build_model(model: str, weights: str | None, in_channels: int | None = None):
    """``--model`` (name or config file) and ``--weights`` -> (model, metadata, loaded weights or None)."""
    name, args = models.model_spec(model)
    if in_channels is not None:
        args["in_channels"] = in_channels
    spec = weights if weights is not None else get_entry(name).default_weights
    if spec in ("none", "random"):
        spec = None
    loaded = models.resolve_weights(name, spec)
    net, meta = models.build_model(name, loaded, args)
    return net, meta, loaded


def plan_grid(before: str, after: str) -> Alignment:
    """Read both rasters' metadata and decide the output grid (BEFORE's) and AFTER's warp."""
    b = raster.read_info(before, "BEFORE")
    a = raster.read_info(after, "AFTER")
    same = raster.same_crs(b.grid.crs_wkt, a.grid.crs_wkt)
    footprint = a.grid.bounds if same else raster.bounds_in_crs(a, b.grid.crs_wkt)
    dtype = str(np.result_type(b.dtype, a.dtype))
    return plan_alignment(b, a, same_crs=same, after_bounds_in_before_crs=footprint, dtype=dtype)


def make_paths(cfg: RunConfig) -> RunPaths:
    """Create the run folder for intermediate stores and save the run config in it."""
    run_dir = fs.make_run_dir(cfg.workdir)
    fs.write_text(storage.join(run_dir, "config.json"), cfg.to_json())
    return RunPaths(run_dir, storage.join(run_dir, "input.zarr"), storage.join(run_dir, "output.zarr"),
                    temporary=cfg.workdir is None)


def cleanup(paths: RunPaths, cfg: RunConfig, succeeded: bool) -> str | None:
    """Remove the run folder after success (or a failed temporary one); return it if kept."""
    if cfg.keep_workdir or (not succeeded and not paths.temporary):
        return paths.run_dir
    fs.remove_tree(paths.run_dir)
    return None


def tiles_for(alignment: Alignment, tile: int):
    """The core tiles of the output grid."""
    return make_tiles(alignment.grid.height, alignment.grid.width, tile)


class Progress:
    """Prints ``infer: done/total tiles`` lines: every 5 % or 10 s (every update on a terminal)."""

    def __init__(self, label: str = "infer", stream=None) -> None:
        self.label, self.stream = label, stream or sys.stderr
        self._last_pct, self._last_t = -100.0, 0.0

    def __call__(self, done: int, total: int) -> None:  # noqa: D102
        pct = 100.0 * done / max(total, 1)
        now = time.monotonic()
        if done == total or pct - self._last_pct >= 5 or now - self._last_t >= 10 or self.stream.isatty():
            self.stream.write(f"{self.label}: {done}/{total} tiles ({pct:.0f}%)\n")
            self.stream.flush()
            self._last_pct, self._last_t = pct, now


def report_level(level: int, levels: int, stream=None) -> None:
    """Print ``statistics: pass k/n`` as each scene-statistics pass over the tiles starts."""
    stream = stream or sys.stderr
    stream.write(f"statistics: pass {level}/{levels} over the tiles\n")
    stream.flush()


def summary_line(summary: dict) -> str:
    """The one-line summary a run ends with."""
    return (f"changemap: {summary['tiles']} tiles, {summary['megapixels']:.2f} MP in {summary['seconds']:.1f} s "
            f"({summary['megapixels_per_second']:.3f} MP/s) -> {summary['output']}")
