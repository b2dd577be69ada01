"""Change polygons from a probability map, built block by block in bounded memory.

A changed pixel is valid, not NaN, and has a probability above the threshold. A region is a set
of changed pixels connected through their edges (4-connectivity, :data:`CONNECTIVITY`); the
same rule labels the pixels (``scipy.ndimage.label``) and traces their outlines (GDAL's
polygonize through :func:`pipeline.io.vector.shapes`), so every region gives exactly one polygon,
holes kept.

Each block is labelled on its own. A region that does not touch an inner block border is final
at once. One that does is kept as a *part*: its outline in pixel coordinates (integers, so
unions are exact) and its pixel count, probability sum and maximum and ground area. The pixel
lines on both sides of each inner border are matched as blocks arrive (a union-find over the
parts joins parts whose pixels face each other), and :meth:`Polygonizer.finish` dissolves each
group into one polygon with combined sums, so the mean and maximum probability and the area stay
exact. In row-major order only the last block row's bottom lines and one right line are pending.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from scipy import ndimage
from shapely.affinity import affine_transform
from shapely.geometry import shape

from pipeline.grid import Grid
from pipeline.io import vector
from pipeline.products.mapstats import SIZE_CLASS_EDGES_M2, GroundMeasure, Window, size_classes

CONNECTIVITY = 4
_STRUCTURE = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, matching CONNECTIVITY
ATTRIBUTES = ("area_m2", "perimeter_m", "mean_probability", "max_probability")


@dataclass(frozen=True)
class Polygons:
    """Change polygons in the map's CRS with one float64 attribute array per name of :data:`ATTRIBUTES`.

    Attributes:
        crs_wkt: the CRS of the geometries (the map's).
        geometries: shapely Polygons (object array), exterior counter-clockwise.
        attributes: ``area_m2``, ``perimeter_m``, ``mean_probability``, ``max_probability``.
        dropped: regions left out by the minimum mapping unit.
        dropped_area_m2: their total area.
    """

    crs_wkt: str
    geometries: np.ndarray
    attributes: dict[str, np.ndarray]
    dropped: int = 0
    dropped_area_m2: float = 0.0

    def __len__(self) -> int:
        return len(self.geometries)

    @property
    def total_area_m2(self) -> float:
        """Summed ``area_m2`` of the kept regions."""
        return float(self.attributes["area_m2"].sum())

    def size_classes(self, edges: tuple[float, ...] = SIZE_CLASS_EDGES_M2) -> dict[str, int]:
        """Region counts per area class in m² (``<100``, ``100-1000``, ``1000-10000``, ``>=10000`` by default)."""
        return size_classes(self.attributes["area_m2"], edges)


@dataclass
class _Part:
    outline: Any  # shapely Polygon in pixel coordinates
    count: int
    total: float
    peak: float
    area: float


@dataclass
class _Edge:
    """One block's pixel line along an inner border, until blocks on the other side have covered it."""

    start: int
    length: int
    ids: np.ndarray | None  # global part ids along the line (0: none); None: no changed pixel on it
    side: int  # 0: the block lies above/left of the line, 1: below/right
    remaining: int  # pixels of the line not yet faced by another block


class Polygonizer:
    """Turns a change-probability map, fed block by block, into change polygons.

    Args:
        grid: the map's grid (CRS, transform, shape).
        threshold: probability above which a pixel is changed.
        min_area: minimum mapping unit in m²: regions smaller than this, measured after merging
            across block borders, are dropped (counted in ``Polygons.dropped``).
        simplify: tolerance in map units for ``shapely.simplify(preserve_topology=True)``
            (Douglas-Peucker that keeps each polygon valid); 0 keeps the pixel outlines.

    ``area_m2`` is the ground area of the region's pixels (per-row ellipsoidal areas on a
    geographic CRS, see :class:`pipeline.products.mapstats.GroundMeasure`), so it does not depend on
    ``simplify``; ``perimeter_m`` is the length of the unsimplified outline, holes included
    (geodesic on a geographic CRS).
    """

    def __init__(self, grid: Grid, threshold: float | None, *, min_area: float = 0.0, simplify: float = 0.0) -> None:
        self.grid = grid
        self.threshold = float(threshold) if threshold is not None else None  # None: set once the scene decides it
        self.min_area, self.simplify = float(min_area), float(simplify)
        self.measure = GroundMeasure(grid)
        a, b, c, d, e, f = grid.transform
        self._to_map = [a, b, d, e, c, f]  # shapely.affinity order
        self._geoms: list[Any] = []
        self._rows: list[tuple[float, float, float, float]] = []
        self._dropped, self._dropped_area = 0, 0.0
        self._parts: dict[int, _Part] = {}
        self._parent: dict[int, int] = {}
        self._pending: dict[tuple[str, int], list[_Edge]] = {}
        self._next_id = 1

    def add(self, window: Window, probability: np.ndarray, valid: np.ndarray, changed: np.ndarray | None = None) -> None:
        """Vectorize one block.

        Args:
            window: ``(y0, x0, h, w)`` of the block in the grid.
            probability: ``(h, w)`` float32 change probabilities, NaN where there is no data.
            valid: ``(h, w)`` bool, True where the map has data.
            changed: the map's own decision where it has one (its mask band); else probability > threshold.
        """
        y0, x0, h, w = window
        prob = np.asarray(probability, dtype=np.float32)
        if prob.shape != (h, w) or np.shape(valid) != (h, w):
            raise ValueError(f"block arrays {prob.shape} / {np.shape(valid)} do not match window {window}")
        decided = prob > self.threshold if changed is None else np.asarray(changed, dtype=bool)
        labels, n = ndimage.label(np.asarray(valid, dtype=bool) & decided, structure=_STRUCTURE)
        to_global = np.zeros(n + 1, dtype=np.int64)
        edges = self._inner_edges(window, labels)
        if n:
            flat = labels.ravel()
            count = np.bincount(flat, minlength=n + 1)
            total = np.bincount(flat, weights=np.where(labels > 0, prob, 0).ravel(), minlength=n + 1)
            peak = np.concatenate([[0.0], ndimage.maximum(prob, labels, np.arange(1, n + 1))])
            area = np.bincount(flat, weights=np.repeat(self.measure.row_areas(y0, h), w), minlength=n + 1)
            border = np.unique(np.concatenate([line for _, _, line, _ in edges] + [np.zeros(1, labels.dtype)]))
            border = border[border > 0]
            to_global[border] = np.arange(self._next_id, self._next_id + len(border))
            self._next_id += len(border)
            for geom, value in vector.shapes(labels, (1, 0, x0, 0, 1, y0), CONNECTIVITY):
                stats = int(count[value]), float(total[value]), float(peak[value]), float(area[value])
                if to_global[value]:
                    gid = int(to_global[value])
                    self._parts[gid] = _Part(shape(geom), *stats)
                    self._parent[gid] = gid
                else:
                    self._finalize(shape(geom), *stats)
        for key, start, line, side in edges:
            ids = to_global[line]
            self._match(key, _Edge(start, len(line), ids if ids.any() else None, side, len(line)))

    def _inner_edges(self, window: Window, labels: np.ndarray) -> list[tuple[tuple[str, int], int, np.ndarray, int]]:
        """The block's pixel lines along borders shared with other blocks: (key, start, labels, side)."""
        y0, x0, h, w = window
        edges = []
        if y0 > 0:
            edges.append((("row", y0), x0, labels[0], 1))
        if y0 + h < self.grid.height:
            edges.append((("row", y0 + h), x0, labels[-1], 0))
        if x0 > 0:
            edges.append((("col", x0), y0, labels[:, 0], 1))
        if x0 + w < self.grid.width:
            edges.append((("col", x0 + w), y0, labels[:, -1], 0))
        return edges

    def _match(self, key: tuple[str, int], edge: _Edge) -> None:
        """Join the parts facing each other across one border line; keep what is still unmatched."""
        pieces = self._pending.setdefault(key, [])
        for other in list(pieces):
            lo = max(edge.start, other.start)
            hi = min(edge.start + edge.length, other.start + other.length)
            if lo >= hi:
                continue
            if other.side == edge.side:
                raise ValueError(f"block lines overlap on {key[0]} {key[1]}: a window was added twice")
            if edge.ids is not None and other.ids is not None:
                a, b = edge.ids[lo - edge.start:hi - edge.start], other.ids[lo - other.start:hi - other.start]
                both = (a > 0) & (b > 0)
                for p, q in np.unique(np.stack([a[both], b[both]], axis=1), axis=0):
                    self._union(int(p), int(q))
            other.remaining -= hi - lo
            edge.remaining -= hi - lo
            if other.remaining == 0:
                pieces.remove(other)
        if edge.remaining:
            pieces.append(edge)
        if not pieces:
            del self._pending[key]

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def _union(self, i: int, j: int) -> None:
        ri, rj = self._find(i), self._find(j)
        if ri != rj:
            self._parent[max(ri, rj)] = min(ri, rj)

    def _finalize(self, outline: Any, count: int, total: float, peak: float, area: float) -> None:
        if area < self.min_area:
            self._dropped += 1
            self._dropped_area += area
            return
        geom = affine_transform(outline, self._to_map)
        perimeter = self.measure.length(geom)
        if self.simplify > 0:
            geom = shapely.simplify(geom, self.simplify, preserve_topology=True)
        self._geoms.append(shapely.orient_polygons(geom))
        self._rows.append((area, perimeter, total / count, peak))

    def finish(self) -> Polygons:
        """Merge the parts that meet across block borders and return every polygon.

        Returns:
            The polygons and their attributes; the polygonizer is spent afterwards.
        """
        groups: dict[int, list[int]] = {}
        for gid in self._parts:
            groups.setdefault(self._find(gid), []).append(gid)
        for members in groups.values():
            parts = [self._parts[g] for g in members]
            outline = parts[0].outline if len(parts) == 1 else shapely.union_all([p.outline for p in parts])
            # The seams leave collinear vertices; a zero-tolerance simplify removes just those.
            outline = shapely.simplify(outline, 0.0, preserve_topology=True)
            self._finalize(outline, sum(p.count for p in parts), sum(p.total for p in parts),
                           max(p.peak for p in parts), sum(p.area for p in parts))
        self._parts.clear()
        self._parent.clear()
        self._pending.clear()
        rows = np.asarray(self._rows, dtype=np.float64).reshape(-1, len(ATTRIBUTES))
        geometries = np.empty(len(self._geoms), dtype=object)
        geometries[:] = self._geoms
        return Polygons(self.grid.crs_wkt, geometries, {name: rows[:, i].copy() for i, name in enumerate(ATTRIBUTES)},
                        self._dropped, self._dropped_area)


def polygonize(grid: Grid, blocks: Any, threshold: float, *, min_area: float = 0.0, simplify: float = 0.0) -> Polygons:
    """Polygons of a whole map from an iterable of ``(window, probability, valid)`` blocks."""
    polygonizer = Polygonizer(grid, threshold, min_area=min_area, simplify=simplify)
    for window, probability, valid in blocks:
        polygonizer.add(window, probability, valid)
    return polygonizer.finish()
