"""Change polygons built block by block: one per connected region, exact areas and probabilities, seams merged."""
from __future__ import annotations

import random

import numpy as np
import pytest
import shapely
from pyproj import CRS, Geod
from scipy import ndimage

from pipeline.grid import Grid
from pipeline.io import cog, read
from pipeline.products.vectorize import CONNECTIVITY, Polygonizer, polygonize
from tests.conftest import LEVIR_1024, require

UTM33 = CRS.from_epsg(32633).to_wkt()
STRUCTURE = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as CONNECTIVITY says


def blocks_of(prob: np.ndarray, valid: np.ndarray, size: int, order: str = "rows"):
    """``(window, probability, valid)`` blocks of a whole array (row-major, or shuffled)."""
    windows = list(cog.iter_blocks(*prob.shape, size))
    if order == "shuffled":
        random.Random(size).shuffle(windows)
    for y0, x0, h, w in windows:
        yield (y0, x0, h, w), prob[y0:y0 + h, x0:x0 + w], valid[y0:y0 + h, x0:x0 + w]


@pytest.fixture(scope="module")
def levir_label(levir_pair):
    label, grid, valid = read.read_raster(str(levir_pair[2]))
    return (label > 0).astype(np.float32), grid, valid


def independent_ground_area(mask: np.ndarray, grid: Grid) -> float:
    """Changed area as changed pixels per row times the Geod area of one cell of that row."""
    geod = CRS.from_wkt(grid.crs_wkt).get_geod()
    a, _, c, _, e, f = grid.transform
    total = 0.0
    for row in np.flatnonzero(mask.any(axis=1)):
        top, bottom = f + e * row, f + e * (row + 1)
        cell, _ = geod.polygon_area_perimeter([c, c + a, c + a, c], [top, top, bottom, bottom])
        total += abs(cell) * mask[row].sum()
    return total


def test_connectivity_is_four():
    assert CONNECTIVITY == 4


@pytest.mark.parametrize("size", [256, 512, 1000])
def test_levir_label_one_polygon_per_component_and_true_areas(levir_label, size):
    prob, grid, valid = levir_label
    polys = polygonize(grid, blocks_of(prob, valid, size), threshold=0.5)
    mask = prob > 0.5
    _, n = ndimage.label(mask, structure=STRUCTURE)
    assert len(polys) == n == 12
    assert all(g.geom_type == "Polygon" and g.is_valid for g in polys.geometries)
    expected = independent_ground_area(mask, grid)  # 4,053.0 m² for 13,189 pixels
    assert polys.total_area_m2 == pytest.approx(expected, rel=5e-3)
    assert polys.total_area_m2 == pytest.approx(expected, rel=1e-5)  # what it actually achieves
    # The geometries themselves, measured on the ellipsoid, give the same areas.
    geod = Geod(ellps="WGS84")
    geometric = np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in polys.geometries])
    np.testing.assert_allclose(geometric, polys.attributes["area_m2"], rtol=1e-4)
    np.testing.assert_allclose(polys.attributes["mean_probability"], 1.0)
    np.testing.assert_allclose(polys.attributes["max_probability"], 1.0)
    assert all(a.dtype == np.float64 for a in polys.attributes.values())


@pytest.mark.parametrize("tile,size", [("test_1", 200), ("test_2", 256)])
def test_levir_regions_across_block_borders_are_merged(tile, size):
    # test_1 has no building on a 256-px border (7 on 200-px borders); test_2 has 6 on 256-px borders.
    label, grid, valid = read.read_raster(str(require(LEVIR_1024 / f"{tile}_label.tif")))
    prob = (label > 0).astype(np.float32)
    labels, n = ndimage.label(prob > 0.5, structure=STRUCTURE)
    crossing = [s for s in ndimage.find_objects(labels)
                if s[0].start // size != (s[0].stop - 1) // size or s[1].start // size != (s[1].stop - 1) // size]
    assert len(crossing) >= 6
    whole = polygonize(grid, blocks_of(prob, valid, 1024), 0.5)
    tiled = polygonize(grid, blocks_of(prob, valid, size), 0.5)
    assert len(tiled) == len(whole) == n
    # Same outlines, same perimeters: no seam is left inside a merged polygon.
    assert shapely.union_all(tiled.geometries).symmetric_difference(shapely.union_all(whole.geometries)).area == 0
    np.testing.assert_allclose(np.sort(tiled.attributes["perimeter_m"]), np.sort(whole.attributes["perimeter_m"]))
    np.testing.assert_allclose(np.sort(tiled.attributes["area_m2"]), np.sort(whole.attributes["area_m2"]))


def test_perimeter_is_geodesic_on_a_geographic_grid(levir_label):
    prob, grid, valid = levir_label
    polys = polygonize(grid, blocks_of(prob, valid, 256), 0.5)
    geod = Geod(ellps="WGS84")
    for g, p in zip(polys.geometries, polys.attributes["perimeter_m"]):
        assert p == pytest.approx(geod.geometry_area_perimeter(g)[1], rel=1e-9)
    assert 10 < polys.attributes["perimeter_m"].min() and polys.attributes["perimeter_m"].max() < 300


def test_ring_split_over_four_blocks_is_one_polygon_with_its_hole():
    grid = Grid(UTM33, (2.0, 0.0, 500000.0, 0.0, -2.0, 5000000.0), 40, 40)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    mask[15:25, 15:25] = False  # the hole only closes when the four quarters are merged
    prob = mask.astype(np.float32)
    polys = polygonize(grid, blocks_of(prob, np.ones_like(mask), 20), 0.5)
    assert len(polys) == 1
    (ring,) = polys.geometries
    assert len(ring.interiors) == 1 and ring.is_valid
    assert shapely.Polygon(ring.interiors[0]).area == 100 * 4.0
    assert polys.attributes["area_m2"][0] == ring.area == (400 - 100) * 4.0
    assert polys.attributes["perimeter_m"][0] == (4 * 40 + 4 * 20)  # outer 4 x 40 m, hole 4 x 20 m
    assert len(ring.exterior.coords) == 5  # seams leave no collinear vertices behind
    assert ring.exterior.is_ccw  # RFC 7946 orientation
    minx, miny, maxx, maxy = ring.bounds
    assert (minx, maxy) == (500000.0 + 20, 5000000.0 - 20)


@pytest.mark.parametrize("size,order", [(7, "rows"), (23, "shuffled"), (64, "rows"), (300, "rows")])
def test_random_maps_exact_attributes_any_block_size_and_order(size, order):
    rng = np.random.default_rng(size)
    grid = Grid(UTM33, (2.0, 0.0, 500000.0, 0.0, -2.0, 5000000.0), 173, 131)
    changed = ndimage.binary_opening(rng.random((131, 173)) < 0.55)
    prob = np.where(changed, rng.uniform(0.6, 1, changed.shape), rng.uniform(0, 0.4, changed.shape)).astype(np.float32)
    valid = rng.random(changed.shape) > 0.03
    prob[rng.random(changed.shape) < 0.02] = np.nan  # NaN is nodata too
    truth = valid & (prob > 0.5)
    labels, n = ndimage.label(truth, structure=STRUCTURE)
    index = np.arange(1, n + 1)
    polys = polygonize(grid, blocks_of(prob, valid, size, order), 0.5)
    assert len(polys) == n
    key = np.lexsort
    got = np.stack([polys.attributes[k] for k in ("area_m2", "mean_probability", "max_probability")])
    want = np.stack([np.bincount(labels.ravel())[1:] * 4.0, ndimage.mean(prob, labels, index),
                     ndimage.maximum(prob, labels, index)])
    np.testing.assert_allclose(got[:, key(got[::-1])], want[:, key(want[::-1])], rtol=1e-6)
    assert all(g.is_valid and g.geom_type == "Polygon" for g in polys.geometries)
    np.testing.assert_allclose(sorted(g.area for g in polys.geometries), sorted(polys.attributes["area_m2"]))


def test_min_area_applies_after_merging_and_simplify_keeps_areas():
    grid = Grid(UTM33, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), 64, 64)
    mask = np.zeros((64, 64), bool)
    mask[28:36, 28:36] = True  # 64 m², four 16 m² quarters in 32-px blocks
    mask[2:5, 2:5] = True  # 9 m²
    mask[40:60, 5] = True  # 20 m², one pixel wide
    ones = np.ones_like(mask)
    polys = polygonize(grid, blocks_of(mask.astype(np.float32), ones, 32), 0.5, min_area=16.5)
    assert sorted(polys.attributes["area_m2"]) == [20.0, 64.0]
    assert (polys.dropped, polys.dropped_area_m2) == (1, 9.0)

    blob = ndimage.binary_dilation(np.pad(np.ones((1, 1), bool), 20), iterations=15)  # a pixelated disc
    fine = polygonize(grid, blocks_of(blob.astype(np.float32), np.ones_like(blob), 16), 0.5)
    coarse = polygonize(grid, blocks_of(blob.astype(np.float32), np.ones_like(blob), 16), 0.5, simplify=1.5)
    (g_fine,), (g_coarse,) = fine.geometries, coarse.geometries
    assert len(g_coarse.exterior.coords) < len(g_fine.exterior.coords) / 2 and g_coarse.is_valid
    assert g_coarse.area == pytest.approx(g_fine.area, rel=0.05)
    assert coarse.attributes["area_m2"] == fine.attributes["area_m2"] == blob.sum()  # pixel area, not simplified


def test_empty_map_and_bad_blocks():
    grid = Grid(UTM33, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), 10, 10)
    polys = polygonize(grid, blocks_of(np.zeros((10, 10), np.float32), np.ones((10, 10), bool), 4), 0.5)
    assert len(polys) == 0 and polys.total_area_m2 == 0 and polys.size_classes()["<100"] == 0
    p = Polygonizer(grid, 0.5)
    with pytest.raises(ValueError, match="do not match"):
        p.add((0, 0, 4, 4), np.zeros((3, 4), np.float32), np.ones((3, 4), bool))
    p.add((0, 0, 4, 4), np.zeros((4, 4), np.float32), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="added twice"):
        p.add((0, 0, 4, 4), np.zeros((4, 4), np.float32), np.ones((4, 4), bool))
