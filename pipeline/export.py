"""Export: the output zarr store -> a Cloud-Optimized GeoTIFF on the input grid."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipeline import storage
from pipeline.grid import Grid
from pipeline.io import fs, store
from pipeline.io.raster import iter_blocks, write_cog

if TYPE_CHECKING:
    from pipeline.checks import Preflight
    from pipeline.workdir import RunPaths


def probability_to_uint8(p: np.ndarray) -> np.ndarray:
    """Scale probabilities in [0, 1] to 0..255 (NaN -> 0; nodata is carried by the mask)."""
    return np.round(np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0) * 255).astype("uint8")


def _blocks(prob, valid, grid: Grid, dtype: str, mask: bool, threshold: float, sinks: Sequence[BlockSink] = ()
            ) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]]:
    for y0, x0, h, w in iter_blocks(grid.height, grid.width):
        p = prob[y0:y0 + h, x0:x0 + w]
        v = valid[y0:y0 + h, x0:x0 + w]
        for sink in sinks:  # statistics and polygons from the same pass that writes the map
            sink.add((y0, x0, h, w), p, v)
        ok = v & ~np.isnan(p)
        band1 = probability_to_uint8(p) if dtype == "uint8" else np.where(ok, p, np.nan).astype("float32")
        bands = [band1]
        if mask:
            bands.append(((np.nan_to_num(p, nan=0.0) > threshold) & ok).astype(dtype))
        yield (y0, x0, h, w), np.stack(bands), ok


class BlockSink(Protocol):
    """Something fed every block of the map as it is written (statistics, polygons)."""

    def add(self, window: tuple[int, int, int, int], probability: np.ndarray, valid: np.ndarray) -> None:
        """Take one block: ``(y0, x0, h, w)``, probabilities (NaN: none) and where both dates have data."""


def export_cog(output_store: str, input_store: str, dest: str, *, probability: str = "uint8",
               mask: bool = False, threshold: float = 0.5, tags: dict[str, str] | None = None,
               sinks: Sequence[BlockSink] = ()) -> Grid:
    """Write band 1 = change probability (and band 2 = binary mask) to ``dest`` atomically.

    Pixels where either date had no data (or no prediction exists) are masked out
    (GDAL internal mask; NaN as well for float32). Every block is also handed to ``sinks``.
    """
    grid = store.read_grid(output_store)
    descriptions = ("change_probability",) + (("change_mask",) if mask else ())
    if storage.is_remote(dest):
        # Built locally, then published whole: the final key never holds a partial map.
        with tempfile.TemporaryDirectory(prefix="changemap-export-") as tmp:
            local = os.path.join(tmp, storage.basename(dest))
            _write(output_store, input_store, local, grid, probability, mask, threshold, tags, descriptions, sinks)
            fs.upload(local, dest)
    else:
        _write(output_store, input_store, storage.local_path(dest), grid, probability, mask, threshold, tags,
               descriptions, sinks)
    return grid


def _write(output_store: str, input_store: str, dest: str, grid: Grid, probability: str, mask: bool,
           threshold: float, tags: dict[str, str] | None, descriptions: tuple[str, ...],
           sinks: Sequence[BlockSink]) -> None:
    prob = store.open_array(output_store, store.PROBABILITY)
    valid = store.open_array(input_store, store.VALID)
    write_cog(
        dest, grid, len(descriptions), probability, _blocks(prob, valid, grid, probability, mask, threshold, sinks),
        nodata=float("nan") if probability == "float32" else None,
        tags={"CHANGEMAP_THRESHOLD": str(threshold), "CHANGEMAP_PROBABILITY_SCALE": "255" if probability == "uint8" else "1",
              **(tags or {})},
        descriptions=descriptions,
    )


def map_tags(pre: Preflight) -> dict[str, str]:
    """What a map says about itself: its map spec (only what defines it) and the model's provenance."""
    return {"CHANGEMAP_CONFIG": json.dumps(pre.spec.stamp(), sort_keys=True), "CHANGEMAP_MODEL": pre.meta.model,
            "CHANGEMAP_WEIGHTS_SHA256": pre.meta.sha256, "CHANGEMAP_WEIGHTS_LICENSE": pre.meta.license}


def export_map(paths: RunPaths, dest: str, pre: Preflight, sinks: Sequence[BlockSink] = ()) -> Grid:
    """The run's output store -> its change-map COG at ``dest``, stamped with the map spec."""
    return export_cog(paths.output_store, paths.input_store, dest, probability=pre.spec.probability,
                      mask=pre.spec.mask, threshold=pre.threshold, tags=map_tags(pre), sinks=sinks)
