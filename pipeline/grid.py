"""Pure grid logic: the target grid of a run and how AFTER is aligned onto it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import GridError

Bounds = tuple[float, float, float, float]  # left, bottom, right, top


@dataclass(frozen=True)
class Grid:
    """A georeferenced pixel grid: CRS (WKT), affine transform (GDAL order a..f), shape."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel width and height in CRS units (positive)."""
        a, b, _, d, e, _ = self.transform
        return (abs(a) if b == 0 else (a * a + d * d) ** 0.5, abs(e) if d == 0 else (b * b + e * e) ** 0.5)

    @property
    def bounds(self) -> Bounds:
        """Outer bounds (left, bottom, right, top) for a north-up grid."""
        a, _, c, _, e, f = self.transform
        xs = (c, c + a * self.width)
        ys = (f, f + e * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def megapixels(self) -> float:
        """Size of the grid in millions of pixels."""
        return self.width * self.height / 1e6


@dataclass(frozen=True)
class RasterInfo:
    """What a run needs to know about one input raster (or STAC Item: ``item`` is its chosen bands, read as one)."""

    path: str
    grid: Grid
    count: int
    dtype: str
    nodata: float | None
    item: Any = None  # a STAC Item date (pipeline.io.items.ItemDate), read band file by band file


@dataclass(frozen=True)
class Alignment:
    """How a pair is put on one grid: BEFORE's grid, AFTER warped when it differs."""

    grid: Grid
    before: RasterInfo
    after: RasterInfo
    warp_after: bool
    dtype: str


def _intersection(a: Bounds, b: Bounds) -> Bounds | None:
    left, bottom = max(a[0], b[0]), max(a[1], b[1])
    right, top = min(a[2], b[2]), min(a[3], b[3])
    if right <= left or top <= bottom:
        return None
    return left, bottom, right, top


def _close(x: tuple[float, ...], y: tuple[float, ...], tol: float) -> bool:
    return all(abs(p - q) <= tol for p, q in zip(x, y))


def plan_alignment(before: RasterInfo, after: RasterInfo, *, same_crs: bool,
                   after_bounds_in_before_crs: Bounds, dtype: str) -> Alignment:
    """Decide the output grid (BEFORE's) and whether AFTER must be warped onto it.

    Args:
        before: the reference raster; its grid is the output grid.
        after: the raster to compare.
        same_crs: whether both CRSs are equivalent (decided by the raster I/O module).
        after_bounds_in_before_crs: AFTER's footprint expressed in BEFORE's CRS.
        dtype: the common data type both dates are stored in.

    Raises:
        GridError: different band counts or footprints that do not overlap.
    """
    if before.count != after.count:
        raise GridError(
            f"band count mismatch: BEFORE {before.path} has {before.count} bands but AFTER {after.path} has "
            f"{after.count}; both dates must hold the same bands in the same order (select bands with "
            "gdal_translate -b or pass matching files)"
        )
    if _intersection(before.grid.bounds, after_bounds_in_before_crs) is None:
        raise GridError(
            f"the footprints do not overlap: BEFORE {before.path} covers {_fmt(before.grid.bounds)} and AFTER "
            f"{after.path} covers {_fmt(after_bounds_in_before_crs)} (in BEFORE's CRS); pass two images of "
            "the same place"
        )
    tol = 1e-6 * max(before.grid.resolution)
    aligned = (
        same_crs
        and (before.grid.width, before.grid.height) == (after.grid.width, after.grid.height)
        and _close(before.grid.transform, after.grid.transform, tol)
    )
    return Alignment(grid=before.grid, before=before, after=after, warp_after=not aligned, dtype=dtype)


def _fmt(b: Bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"
