"""Scene statistics of a change map, accumulated block by block, and ground measures of a grid.

Areas are true ground areas. On a geographic CRS a pixel's area shrinks with the cosine of its
latitude, so every row gets its own area: the exact area of the cell between two meridians and
two parallels on the CRS's ellipsoid, from the authalic-latitude function q (Snyder 1987,
*Map Projections: A Working Manual*, USGS PP 1395, eq. 3-12), with the ellipsoid taken from
pyproj. The polygons of :mod:`pipeline.products.vectorize` use the same per-row areas, so the changed
area here equals the sum of their ``area_m2`` (before a minimum mapping unit drops any).
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from pyproj import CRS

from pipeline.errors import ChangemapError
from pipeline.grid import Grid
from pipeline.io import fs

Window = tuple[int, int, int, int]  # y0, x0, h, w
SIZE_CLASS_EDGES_M2 = (100.0, 1_000.0, 10_000.0)


class GroundMeasure:
    """Pixel areas and line lengths of a grid in metres.

    Geographic CRSs (north-up grids only): per-row ellipsoidal cell areas, geodesic lengths
    (``pyproj.Geod``). Projected CRSs: planar areas and lengths in CRS units times the unit's
    metre factor (no correction for the projection's scale distortion).
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        crs = CRS.from_wkt(grid.crs_wkt)
        a, b, _, d, e, f = grid.transform
        self.geographic = crs.is_geographic
        if self.geographic:
            if b or d:
                raise ChangemapError("ground areas on a rotated geographic grid are not supported; "
                                     "warp the map to a north-up grid (gdalwarp) first")
            self.geod = crs.get_geod()
            unit = crs.axis_info[0].unit_conversion_factor  # radians per CRS unit (degree: pi/180)
            self._dlon = abs(a) * unit
            self._lat0, self._dlat, self._unit = f, e, unit
            self.method = f"ellipsoidal per row ({crs.ellipsoid.name if crs.ellipsoid else 'ellipsoid'})"
        else:
            self.geod = None
            self._metres = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
            self._pixel_area = abs(a * e - b * d) * self._metres ** 2
            self.method = f"planar in CRS units x {self._metres:g} m"

    def _q(self, lat: np.ndarray) -> np.ndarray:
        """Snyder's authalic function q(phi) on the ellipsoid (2 sin phi on a sphere)."""
        ecc = math.sqrt(self.geod.es)
        s = np.sin(lat)
        if ecc == 0:
            return 2 * s
        return (1 - self.geod.es) * (s / (1 - self.geod.es * s * s)
                                     - np.log((1 - ecc * s) / (1 + ecc * s)) / (2 * ecc))

    def row_areas(self, y0: int, h: int) -> np.ndarray:
        """Ground area (m²) of one pixel in each of the rows ``y0 .. y0 + h - 1`` (float64)."""
        if not self.geographic:
            return np.full(h, self._pixel_area)
        edges = (self._lat0 + self._dlat * np.arange(y0, y0 + h + 1, dtype=np.float64)) * self._unit
        edges = np.clip(edges, -math.pi / 2, math.pi / 2)
        q = self._q(edges)
        return self.geod.a ** 2 * self._dlon / 2 * np.abs(np.diff(q))

    def length(self, geometry: Any) -> float:
        """Boundary length (m) of a polygon in the grid's CRS (holes included): geodesic or planar."""
        if self.geographic:
            if self._unit != math.radians(1):
                raise ChangemapError("geodesic lengths need a geographic CRS in degrees")
            return float(self.geod.geometry_area_perimeter(geometry)[1])
        return float(geometry.length) * self._metres

    def grid_area(self) -> float:
        """Ground area (m²) of the whole grid."""
        return float(self.row_areas(0, self.grid.height).sum() * self.grid.width)


def size_classes(areas_m2: np.ndarray, edges: tuple[float, ...] = SIZE_CLASS_EDGES_M2) -> dict[str, int]:
    """How many regions fall in each area class, e.g. ``{'<100': 3, '100-1000': 5, ..., '>=10000': 1}`` (m²)."""
    areas = np.asarray(areas_m2, dtype=np.float64)
    names = [f"<{edges[0]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in zip(edges, edges[1:])] + [f">={edges[-1]:g}"]
    counts = np.bincount(np.searchsorted(np.asarray(edges), areas, side="right"), minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


class ChangeStatistics:
    """Valid, changed and nodata areas of a change map, fed block by block in bounded memory.

    A pixel is valid where ``valid`` is true and the probability is not NaN, and changed where
    it is valid and its probability exceeds ``threshold`` (the polygonizer's rule). Pixels of
    blocks never added count as nodata.

    Args:
        grid: the map's grid.
        threshold: probability above which a pixel is changed.
    """

    def __init__(self, grid: Grid, threshold: float | None) -> None:
        self.grid = grid
        self.threshold = float(threshold) if threshold is not None else None  # None: set once the scene decides it
        self.measure = GroundMeasure(grid)
        self._valid_m2 = self._changed_m2 = 0.0
        self._valid_px = self._changed_px = self._seen_px = 0

    def add(self, window: Window, probability: np.ndarray, valid: np.ndarray, changed: np.ndarray | None = None) -> None:
        """Account one block: ``window=(y0, x0, h, w)``, ``probability (h, w)`` (NaN = nodata), ``valid (h, w)``.

        ``changed`` is the map's own decision where it has one (its mask band); else probability > threshold.
        """
        y0, _, h, w = window
        probability = np.asarray(probability)
        ok = np.asarray(valid, dtype=bool) & ~np.isnan(probability)
        changed = ok & (probability > self.threshold if changed is None else np.asarray(changed, dtype=bool))
        areas = self.measure.row_areas(y0, h)
        valid_rows, changed_rows = ok.sum(axis=1), changed.sum(axis=1)
        self._valid_m2 += float(valid_rows @ areas)
        self._changed_m2 += float(changed_rows @ areas)
        self._valid_px += int(valid_rows.sum())
        self._changed_px += int(changed_rows.sum())
        self._seen_px += h * w

    def result(self, regions: int | None = None, size_classes: dict[str, int] | None = None) -> dict[str, Any]:
        """The statistics as a JSON-ready dict.

        Args:
            regions: number of change polygons (from :class:`pipeline.products.vectorize.Polygonizer`).
            size_classes: region counts per area class (``Polygons.size_classes()``).
        """
        grid_m2 = self.measure.grid_area()
        return {
            "threshold": self.threshold,
            "grid_area_km2": grid_m2 / 1e6,
            "valid_area_km2": self._valid_m2 / 1e6,
            "changed_area_km2": self._changed_m2 / 1e6,
            "changed_percent_of_valid": 100 * self._changed_m2 / self._valid_m2 if self._valid_m2 else 0.0,
            "nodata_fraction": max(0.0, 1 - self._valid_m2 / grid_m2) if grid_m2 else 1.0,
            "pixels": {"grid": self.grid.width * self.grid.height, "seen": self._seen_px,
                       "valid": self._valid_px, "changed": self._changed_px},
            "regions": regions,
            "size_classes_m2": size_classes,
            "area_method": self.measure.method,
        }


def write_json(stats: dict[str, Any], dest: str) -> None:
    """Write statistics as indented JSON at a path or fsspec URL, atomically."""
    fs.write_text(dest, json.dumps(stats, indent=2) + "\n")
