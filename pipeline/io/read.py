"""Reading pixels: both dates of a pair on the output grid, window by window; small and decimated reads."""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from pipeline import storage
from pipeline.errors import InputRasterError
from pipeline.grid import Alignment, Grid
from pipeline.io.raster import _READ_ERRORS, _all_valid, _failure, _open, _rio, bounds_in_crs, read_info, same_crs

# GDAL's block cache defaults to 5 % of RAM per process. A decode worker reads each block of a scene
# once (a warp's neighbouring windows share a few), so a bigger cache only grew every worker's memory
# with the scene: 64 MiB hold the blocks a segment's windows touch (13 uint16 bands: 7 MiB a block). (In bytes:
# rasterio hands an integer to GDAL as bytes.)
READ_CACHE_BYTES = 64 * 2**20


class AlignedPairReader:
    """Reads windows of both dates on the output grid (AFTER through a WarpedVRT when needed).

    A date that is a STAC Item is read band file by band file onto the grid
    (:class:`pipeline.io.items.ItemReader`), as one multi-band image. GDAL's block cache is
    bounded to :data:`READ_CACHE_BYTES` while it is open.
    """

    def __init__(self, alignment: Alignment) -> None:
        self.alignment = alignment
        self._stack = ExitStack()
        self._sources: list = []

    def __enter__(self) -> AlignedPairReader:
        a = self.alignment
        try:
            self._stack.enter_context(rasterio.Env(GDAL_CACHEMAX=READ_CACHE_BYTES))
            for info, role in ((a.before, "BEFORE"), (a.after, "AFTER")):
                if info.item is not None:
                    from pipeline.io.items import ItemReader

                    self._sources.append(self._stack.enter_context(ItemReader(info.item, a.grid, role)))
                    continue
                try:
                    src = self._stack.enter_context(_rio(info.path))
                    if role == "AFTER" and a.warp_after:
                        g = a.grid
                        src = self._stack.enter_context(WarpedVRT(
                            src, crs=CRS.from_wkt(g.crs_wkt), transform=Affine(*g.transform), width=g.width,
                            height=g.height, resampling=Resampling.bilinear,
                            # Without a nodata value the VRT needs an alpha band to say where AFTER has no data.
                            add_alpha=src.nodata is None,
                        ))
                except _READ_ERRORS as exc:
                    raise _failure(exc, info.path, role) from None
                self._sources.append(src)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _date(self, i: int, window: RioWindow, data: bool, out: np.ndarray | None = None
              ) -> tuple[np.ndarray | None, np.ndarray]:
        """One date's bands (if ``data``; into ``out`` if given) and where it has data (nodata, GDAL mask/alpha, NaN)."""
        info, role = ((self.alignment.before, "BEFORE"), (self.alignment.after, "AFTER"))[i]
        src = self._sources[i]
        if info.item is not None:  # an Item's reader says where it has data itself
            rows, cols = window.toranges()
            image, mask = src.read(rows[0], rows[1], cols[0], cols[1])
            if out is not None:
                out[...] = image
            return (image if data else None), mask
        try:
            image = (src.read(list(range(1, info.count + 1)), window=window, out=out)
                     if data or info.dtype[0] == "f" else None)
            if _all_valid(src):  # no nodata, mask or alpha: GDAL would only fill 255s
                mask = np.ones((int(window.height), int(window.width)), bool)
            else:
                mask = src.dataset_mask(window=window) > 0
        except _READ_ERRORS as exc:
            rows, cols = window.toranges()
            raise _failure(exc, info.path, role, f"rows {rows[0]}-{rows[1]}, columns {cols[0]}-{cols[1]}") from None
        if image is not None and image.dtype.kind == "f":
            mask &= ~np.isnan(image).any(axis=0)
        return image, mask

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``image (2, bands, h, w)`` in the common dtype and ``valid (h, w)`` (both dates have data).

        A date already in the common dtype is read straight into its half of the result (no stack).
        """
        window = RioWindow(x0, y0, x1 - x0, y1 - y0)
        a = self.alignment
        image = np.empty((2, a.before.count, y1 - y0, x1 - x0), a.dtype)
        valid = None
        for i, info in enumerate((a.before, a.after)):
            direct = np.dtype(info.dtype) == image.dtype
            date, mask = self._date(i, window, data=True, out=image[i] if direct else None)
            if not direct:
                image[i] = date
            valid = mask if valid is None else valid & mask
        return image, valid

    def masks(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Where BEFORE and where AFTER have data in a window (bands are read only for float data's NaN)."""
        window = RioWindow(x0, y0, x1 - x0, y1 - y0)
        return self._date(0, window, data=False)[1], self._date(1, window, data=False)[1]


@dataclass(frozen=True)
class Coverage:
    """Whether BEFORE, AFTER, and both at one pixel, have data where their footprints overlap."""

    before: bool
    after: bool
    both: bool


_SAMPLES = 8  # the first look: an 8 x 8 grid of small windows spread over the overlap


_SAMPLE_SIDE = 64


_SCAN_SIDE = 1024  # the full scan's windows (a multiple of the usual 256/512 blocks)


def _overlap_window(a: Alignment) -> tuple[int, int, int, int]:
    """The output-grid pixels ``(y0, y1, x0, x1)`` AFTER's footprint covers (the whole grid when aligned)."""
    g = a.grid
    full = (0, g.height, 0, g.width)
    if not a.warp_after:
        return full
    left, bottom, right, top = bounds_in_crs(a.after, g.crs_wkt)
    inv = ~Affine(*g.transform)
    xs, ys = zip(*(inv * corner for corner in ((left, bottom), (left, top), (right, bottom), (right, top))))
    y0, y1 = max(0, int(np.floor(min(ys)))), min(g.height, int(np.ceil(max(ys))))
    x0, x1 = max(0, int(np.floor(min(xs)))), min(g.width, int(np.ceil(max(xs))))
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else full


def _sample_windows(y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int, int, int]]:
    def starts(lo: int, hi: int) -> list[int]:
        side = min(_SAMPLE_SIDE, hi - lo)
        return sorted({min(hi - side, max(lo, int(lo + (k + 0.5) * (hi - lo) / _SAMPLES) - side // 2))
                       for k in range(_SAMPLES)})

    hy, hx = min(_SAMPLE_SIDE, y1 - y0), min(_SAMPLE_SIDE, x1 - x0)
    return [(y, y + hy, x, x + hx) for y in starts(y0, y1) for x in starts(x0, x1)]


def overlap_coverage(alignment: Alignment) -> Coverage:
    """Find out whether the pair has a pixel where both dates have data (what a map needs), cheaply.

    First look: 64 windows of 64 x 64 pixels spread evenly over the overlap, a few dozen block reads
    whatever the scene size. If they hold a pixel valid in both dates, that settles it. Otherwise a
    full scan of the overlap's masks in 1024-pixel windows decides (stopping at the first pixel valid
    in both), so a pair is never judged empty for valid pixels the sample missed; that costs one read
    of the masks, less than the ingest it saves.
    """
    y0, y1, x0, x1 = _overlap_window(alignment)
    seen_before = seen_after = False
    scan = [(wy, min(wy + _SCAN_SIDE, y1), wx, min(wx + _SCAN_SIDE, x1))
            for wy in range(y0, y1, _SCAN_SIDE) for wx in range(x0, x1, _SCAN_SIDE)]
    with AlignedPairReader(alignment) as reader:
        for window in [*_sample_windows(y0, y1, x0, x1), *scan]:
            before, after = reader.masks(*window)
            seen_before, seen_after = seen_before or bool(before.any()), seen_after or bool(after.any())
            if (before & after).any():
                return Coverage(True, True, True)
    return Coverage(seen_before, seen_after, False)


def read_raster(path: str, band: int = 1) -> tuple[np.ndarray, Grid, np.ndarray]:
    """Read one band whole (small rasters: labels, test outputs): data, grid and valid mask."""
    info = read_info(path, "raster")
    with _rio(path) as src:
        data = src.read(band)
        valid = src.read_masks(band) > 0
    return data, info.grid, valid


def read_metadata(path: str, role: str = "raster") -> tuple[dict[str, str], list[str]]:
    """Dataset-level tags and band descriptions ('' where a band has none) of a raster."""
    with _open(path, role) as src:
        return dict(src.tags()), [d or "" for d in src.descriptions]


def read_on_grid(path: str, grid: Grid, band: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One band warped onto ``grid`` with nearest neighbour (labels), and where it has data."""
    with _rio(path) as src, WarpedVRT(
            src, crs=CRS.from_wkt(grid.crs_wkt), transform=Affine(*grid.transform), width=grid.width,
            height=grid.height, resampling=Resampling.nearest, add_alpha=src.nodata is None) as vrt:
        return vrt.read(band), vrt.dataset_mask() > 0


def read_image(path: str, role: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Read every band of a raster whole (dataset tiles: GeoTIFF, PNG, ...): ``(C, H, W)`` and valid ``(H, W)``.

    Unlike :func:`read_info` it does not require a CRS (training crops are often plain PNGs).
    """
    with _open(path, role) as src:
        try:
            return src.read(), src.dataset_mask() > 0
        except RasterioError as exc:
            raise InputRasterError(f"{role} {storage.redact_url(path)} cannot be read ({storage.scrub(str(exc).strip()[:200])}); "
                                   "the file is corrupt or truncated") from exc


def _decimated_grid(grid: Grid, max_side: int) -> Grid:
    """``grid`` resampled so that its longer side is at most ``max_side`` pixels (never upsampled)."""
    scale = max(grid.width, grid.height) / max_side
    if scale <= 1:
        return grid
    width, height = max(1, min(max_side, round(grid.width / scale))), max(1, min(max_side, round(grid.height / scale)))
    sx, sy = grid.width / width, grid.height / height
    a, b, c, d, e, f = grid.transform
    return Grid(grid.crs_wkt, (a * sx, b * sy, c, d * sx, e * sy, f), width, height)


def read_decimated(path: str, bands: tuple[int, ...] | list[int], max_side: int, *, grid: Grid | None = None,
                   resampling: str = "average", role: str = "raster", item: Any = None
                   ) -> tuple[np.ndarray, np.ndarray, Grid]:
    """A reduced view of a raster, at most ``max_side`` pixels on its longer side, for quicklooks.

    Reads go through GDAL's decimated ``RasterIO`` (``out_shape``), which takes the nearest
    overview when the file has them, so the full-resolution scene is never held in memory.
    With ``grid`` the raster is warped onto that grid's reduced version (a ``WarpedVRT``, as
    :class:`AlignedPairReader` does at full resolution), which is how AFTER (or a mask) is put
    on BEFORE's grid.

    Args:
        path: local path or URL of the raster.
        bands: 1-based band indexes to read.
        max_side: the longest side of the result in pixels.
        grid: the full-resolution grid to put the raster on (default: its own).
        resampling: a rasterio ``Resampling`` name (``average`` for images, ``nearest`` for masks).
        role: how error messages name the raster (``BEFORE``, ``AFTER``, ...).
        item: the STAC Item date ``path`` stands for (:class:`pipeline.io.items.ItemDate`): its band
            files are warped onto the reduced grid (GDAL's warper reads their overviews).

    Returns:
        ``data (len(bands), h, w)``, ``valid (h, w)`` and the reduced grid the pixels lie on.
    """
    method = Resampling[resampling]
    bands = [int(b) for b in bands]
    if item is not None:
        from pipeline.io.items import ItemReader

        small = _decimated_grid(grid or item.grid, max_side)
        with ItemReader(item, small, role) as reader:
            data, valid = reader.read(0, small.height, 0, small.width)
        return data[np.asarray(bands) - 1], valid, small
    with _open(path, role) as src:
        own = Grid(src.crs.to_wkt() if src.crs else "", tuple(src.transform)[:6], src.width, src.height)
        target = grid or own
        small = _decimated_grid(target, max_side)
        shape = (len(bands), small.height, small.width)
        on_grid = grid is None or (
            (own.width, own.height) == (grid.width, grid.height) and src.crs is not None
            and same_crs(own.crs_wkt, grid.crs_wkt)
            and all(abs(p - q) <= 1e-6 * max(grid.resolution) for p, q in zip(own.transform, grid.transform)))
        if on_grid:
            data = src.read(bands, out_shape=shape, resampling=method)
            valid = src.dataset_mask(out_shape=shape[1:], resampling=Resampling.nearest) > 0
        else:
            with WarpedVRT(src, crs=CRS.from_wkt(small.crs_wkt), transform=Affine(*small.transform),
                           width=small.width, height=small.height, resampling=method,
                           add_alpha=src.nodata is None) as vrt:
                data = vrt.read(bands)
                valid = vrt.dataset_mask() > 0
    if data.dtype.kind == "f":
        valid &= ~np.isnan(data).any(axis=0)
    return data, valid, small

