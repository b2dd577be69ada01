"""Writing and checking Cloud-Optimized GeoTIFFs, block by block and atomically."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window as RioWindow

from pipeline.grid import Grid, RasterInfo
from pipeline.io import fs
from pipeline.io.raster import _info, _open

# The codecs a map may be written with (the run option --compress offers these: pipeline.config.COMPRESSIONS).
CODECS = ("deflate", "zstd")


# Output blocks and overview settings of the COGs we write.
COG_BLOCKSIZE = 512


# GDAL's block cache defaults to 5 % of RAM: writing a map would fill it with finished blocks, so a
# map writer's memory would grow with the scene; 64 MiB hold a few rows of 512 px blocks. (rasterio
# passes an integer GDAL_CACHEMAX to GDAL as bytes: a bare 64 was a 64-byte cache, and the COG step
# decoded the temporary file's blocks again for every overview.)
_GDAL_ENV = {"GDAL_TIFF_INTERNAL_MASK": True, "GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_CACHEMAX": 64 * 2**20}


def _cog_options(dtype: str, compress: str = "deflate") -> dict[str, object]:
    if compress not in CODECS:
        raise ValueError(f"compress must be one of {', '.join(CODECS)}, got {compress!r}")
    return {
        "COMPRESS": compress.upper(), "PREDICTOR": "YES" if dtype != "uint8" else "NO", "BLOCKSIZE": COG_BLOCKSIZE,
        "OVERVIEWS": "AUTO", "RESAMPLING": "AVERAGE", "BIGTIFF": "IF_SAFER",
    }


def write_cog(path: str, grid: Grid, count: int, dtype: str,
              blocks: Iterable[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]],
              *, nodata: float | None = None, tags: dict[str, str] | None = None,
              descriptions: tuple[str, ...] = (), compress: str = "deflate") -> None:
    """Write a Cloud-Optimized GeoTIFF block by block, atomically, at a path or URL.

    Blocks are ``((y0, x0, h, w), data (count, h, w), valid (h, w))``, in any order. They go
    to a tiled temporary GeoTIFF (with an internal mask for nodata), which GDAL's COG driver
    turns into the final layout with overviews, compressed with ``compress`` (one of
    :data:`CODECS`); only the finished file is published at ``path``
    (:func:`pipeline.io.fs.publish`), so a failure never leaves a partial map there. Memory
    stays at a few blocks.
    """
    options = _cog_options(dtype, compress)  # a bad codec fails before anything is written
    fs.publish(path, lambda cog: _write_cog(cog, grid, count, dtype, blocks, nodata, tags, descriptions, options))


def _write_cog(cog: str, grid: Grid, count: int, dtype: str,
               blocks: Iterable[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]],
               nodata: float | None, tags: dict[str, str] | None, descriptions: tuple[str, ...],
               options: dict[str, object]) -> None:
    tmp_tif = cog + ".tiles.tif"  # beside the (temporary) COG: removed whatever happens
    profile = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": count, "dtype": dtype,
        "crs": CRS.from_wkt(grid.crs_wkt), "transform": Affine(*grid.transform), "nodata": nodata,
        "tiled": True, "blockxsize": COG_BLOCKSIZE, "blockysize": COG_BLOCKSIZE,
        # Read once by the COG driver: zstd level 1 instead of DEFLATE took publishing an 8192² map
        # from 2.9 to 2.1 CPU seconds, and keeps the temporary file compressed (scenes of gigapixels).
        "compress": "zstd", "zstd_level": 1,
        "BIGTIFF": "IF_SAFER",
    }
    try:
        with rasterio.Env(**_GDAL_ENV):
            with rasterio.open(tmp_tif, "w", **profile) as dst:
                for (y0, x0, h, w), data, valid in blocks:
                    window = RioWindow(x0, y0, w, h)
                    dst.write(data, window=window)
                    dst.write_mask(np.where(valid, 255, 0).astype("uint8"), window=window)
                for i, text in enumerate(descriptions, start=1):
                    dst.set_band_description(i, text)
                if tags:
                    dst.update_tags(**tags)
            rasterio.shutil.copy(tmp_tif, cog, driver="COG", **options)
    finally:
        if os.path.exists(tmp_tif):
            os.unlink(tmp_tif)


def cog_problems(path: str) -> list[str]:
    """Why ``path`` is not a valid Cloud-Optimized GeoTIFF (empty list: it is one)."""
    with _open(path, "output") as src:
        return _cog_problems(src)


def _cog_problems(src: rasterio.DatasetReader) -> list[str]:
    problems = []
    if src.driver != "GTiff":
        problems.append(f"driver is {src.driver}, not GTiff")
    if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
        problems.append("GDAL does not report LAYOUT=COG (IFDs/tiles not in COG order)")
    if not src.profile.get("tiled"):
        problems.append("not internally tiled")
    if max(src.width, src.height) > COG_BLOCKSIZE and not src.overviews(1):
        problems.append("no overviews although larger than one block")
    return problems


def inspect_cog(path: str, role: str = "output") -> tuple[RasterInfo, list[str], dict[str, str]]:
    """A map's info (read to its last block), COG problems and tags, in one open.

    One open means one set of requests for a URL. Returns the info, why it is not a valid COG
    (empty: it is one) and its dataset tags.
    """
    with _open(path, role) as src:
        return _info(src, path, role), _cog_problems(src), dict(src.tags())


def iter_blocks(height: int, width: int, size: int = COG_BLOCKSIZE) -> Iterator[tuple[int, int, int, int]]:
    """Row-major ``(y0, x0, h, w)`` blocks covering a grid."""
    for y0 in range(0, height, size):
        for x0 in range(0, width, size):
            yield y0, x0, min(size, height - y0), min(size, width - x0)



def read_map_blocks(path: str, role: str = "change map") -> Iterator[tuple[tuple[int, int, int, int], np.ndarray,
                                                                          np.ndarray, np.ndarray | None]]:
    """A change map's blocks as its products see them: ``(window, probability, valid, changed)``.

    ``probability`` is band 1 in 0..1 (a uint8 band divided by its ``CHANGEMAP_PROBABILITY_SCALE``),
    NaN where the map has no data; ``changed`` is its mask band (``change_mask``) where it has one,
    else None (the threshold decides). Read block by block, in bounded memory.
    """
    with _open(path, role) as src:
        scale = float(src.tags().get("CHANGEMAP_PROBABILITY_SCALE", 255 if src.dtypes[0] == "uint8" else 1))
        descriptions = [d or "" for d in src.descriptions]
        mask_band = descriptions.index("change_mask") + 1 if "change_mask" in descriptions else None
        for y0, x0, h, w in iter_blocks(src.height, src.width):
            window = RioWindow(x0, y0, w, h)
            valid = src.dataset_mask(window=window) > 0
            p = src.read(1, window=window).astype("float32") / scale
            valid &= ~np.isnan(p)
            p[~valid] = np.nan
            changed = src.read(mask_band, window=window) > 0 if mask_band else None
            yield (y0, x0, h, w), p, valid, changed
