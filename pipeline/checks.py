"""Everything checkable before Prefect's API and Ray start: options, inputs, output, model and weights.

:func:`preflight` runs in the calling process (the CLI calls it before the flow starts; the flow
calls it again, the model check answered from memory). A user error ends here in one paragraph.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from models import LoadedWeights, WeightsMeta
from pipeline import loader
from pipeline.archive import ManifestError
from pipeline.config import ArchiveOptions, MapSettings, MapSpec, RunOptions, check_destination
from pipeline.errors import OutputExistsError
from pipeline.grid import Alignment, plan_alignment
from pipeline.io import fs, raster


@dataclass(frozen=True)
class Preflight:
    """What the checks found out, so the run need not find it again."""

    spec: MapSpec  # with the model resolved
    alignment: Alignment
    loaded: LoadedWeights | None
    meta: WeightsMeta
    bands: tuple[int, ...]
    threshold: float


@functools.lru_cache(maxsize=4)
def check_model(model: str, weights: str | None, in_channels: int | None, statistics: str, tile: int,
                halo: int) -> tuple[LoadedWeights | None, WeightsMeta]:
    """Build the model once with its weights (they must fit) and check it can serve ``statistics``.

    Remembered for the process: the CLI's check, the flow's and an archive's pairs build it once.
    """
    net, meta, loaded = loader.build(model, weights, in_channels)
    if statistics == "scene":
        loader.check_scene_statistics(net, meta.model, tile, halo)
    return loaded, meta


def plan_grid(before: str, after: str) -> Alignment:
    """Read both rasters' metadata and decide the output grid (BEFORE's) and AFTER's warp."""
    b = raster.read_info(before, "BEFORE")
    a = raster.read_info(after, "AFTER")
    same = raster.same_crs(b.grid.crs_wkt, a.grid.crs_wkt)
    footprint = a.grid.bounds if same else raster.bounds_in_crs(a, b.grid.crs_wkt)
    dtype = str(np.result_type(b.dtype, a.dtype))
    return plan_alignment(b, a, same_crs=same, after_bounds_in_before_crs=footprint, dtype=dtype)


def check_output(output: str, overwrite: bool, role: str = "output") -> None:
    """The output's protocol is known, its place writable, and it is absent unless ``overwrite``."""
    fs.check_protocol(output, f"--{role}")
    fs.check_writable(output, f"--{role}")
    if not overwrite and fs.exists(output):
        raise OutputExistsError(f"{role} {output} already exists; pass --overwrite to replace it or choose another path")


def check_run(run: RunOptions) -> None:
    """The run's own places: work folder protocol and location."""
    if run.workdir:
        fs.check_protocol(run.workdir, "--workdir")


def preflight(spec: MapSpec, run: RunOptions) -> Preflight:
    """Check a run end to end without starting anything; raise a user error naming the fix."""
    check_destination(spec, run)
    check_output(run.output, run.overwrite)
    check_run(run)
    for role, url in (("BEFORE", spec.before), ("AFTER", spec.after)):
        fs.check_protocol(url, f"{role} raster")
    spec = spec.model_copy(update={"model": loader.choose_model(spec.model, spec.weights)})
    loaded, meta = check_model(spec.model, spec.weights, len(spec.bands) if spec.bands else None, spec.statistics,
                               spec.tile, spec.halo)
    alignment = plan_grid(spec.before, spec.after)
    bands = loader.select_bands(meta, alignment.before.count, spec.bands)
    threshold = spec.threshold if spec.threshold is not None else meta.threshold
    return Preflight(spec, alignment, loaded, meta, bands, threshold)


def check_archive(archive: ArchiveOptions, settings: MapSettings, run: RunOptions) -> None:
    """What an archive run can check before Prefect and Ray: the pair source, the places and the model."""
    if archive.manifest and (archive.before or archive.after):
        raise ManifestError("give either a MANIFEST or --before/--after globs, not both")
    if not archive.manifest and not (archive.before and archive.after):
        raise ManifestError("an archive needs a MANIFEST, or both --before and --after glob patterns")
    for role, url in (("MANIFEST", archive.manifest), ("--before", archive.before), ("--after", archive.after),
                      ("--output-prefix", archive.output_prefix)):
        if url:
            fs.check_protocol(url, role)
    check_run(run)
    model = loader.choose_model(settings.model, settings.weights)
    check_model(model, settings.weights, len(settings.bands) if settings.bands else None, settings.statistics,
                settings.tile, settings.halo)
