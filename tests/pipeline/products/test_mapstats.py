"""Scene statistics: ellipsoidal per-row areas, consistency with the polygons, nodata, JSON output."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pyproj import CRS

from pipeline.grid import Grid
from pipeline.io import cog, fs, read
from pipeline.products.mapstats import ChangeStatistics, GroundMeasure, size_classes, write_json
from pipeline.products.vectorize import Polygonizer


@pytest.fixture(scope="module")
def levir_label(levir_pair):
    label, grid, valid = read.read_raster(str(levir_pair[2]))
    return (label > 0).astype(np.float32), grid, valid


def feed(consumers, prob, valid, size=256):
    for y0, x0, h, w in cog.iter_blocks(*prob.shape, size):
        for consumer in consumers:
            consumer.add((y0, x0, h, w), prob[y0:y0 + h, x0:x0 + w], valid[y0:y0 + h, x0:x0 + w])


def test_row_areas_match_geod_cells_and_shrink_poleward():
    grid = Grid(CRS.from_epsg(4326).to_wkt(), (0.25, 0.0, 10.0, 0.0, -0.25, 80.0), 8, 640)
    measure = GroundMeasure(grid)
    areas = measure.row_areas(0, grid.height)
    geod = CRS.from_epsg(4326).get_geod()
    for row in (0, 100, 319, 500, 639):
        top, bottom = 80 - 0.25 * row, 80 - 0.25 * (row + 1)
        cell, _ = geod.polygon_area_perimeter([10, 10.25, 10.25, 10], [top, top, bottom, bottom])
        assert areas[row] == pytest.approx(abs(cell), rel=1e-4)  # Geod's top/bottom edges are geodesics
    assert np.all(np.diff(areas[:320]) > 0)  # towards the equator from 80 N
    # The whole grid: the exact ellipsoidal zone between -80 and 80 over 2 degrees of longitude.
    band, _ = geod.polygon_area_perimeter([10, 12, 12, 10], [80, 80, -80, -80])
    assert measure.grid_area() == pytest.approx(abs(band), rel=1e-3)
    assert measure.row_areas(10, 3).tolist() == areas[10:13].tolist()


def test_projected_areas_in_metres_whatever_the_unit():
    utm = Grid(CRS.from_epsg(32633).to_wkt(), (2.0, 0.0, 0.0, 0.0, -3.0, 0.0), 10, 10)
    assert GroundMeasure(utm).row_areas(0, 2).tolist() == [6.0, 6.0]
    feet = Grid(CRS.from_epsg(2227).to_wkt(), (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 10, 10)  # US survey feet
    assert GroundMeasure(feet).row_areas(0, 1)[0] == pytest.approx(100 * (1200 / 3937) ** 2)


def test_levir_statistics_equal_the_polygons_total(levir_label):
    prob, grid, valid = levir_label
    stats, polygonizer = ChangeStatistics(grid, 0.5), Polygonizer(grid, 0.5)
    feed([stats, polygonizer], prob, valid)
    polys = polygonizer.finish()
    result = stats.result(regions=len(polys), size_classes=polys.size_classes())
    assert result["changed_area_km2"] * 1e6 == pytest.approx(polys.total_area_m2, rel=5e-3)
    assert result["changed_area_km2"] * 1e6 == pytest.approx(polys.total_area_m2, rel=1e-12)  # same row areas
    assert result["pixels"] == {"grid": 1024 * 1024, "seen": 1024 * 1024, "valid": 1024 * 1024, "changed": 13189}
    assert result["changed_area_km2"] == pytest.approx(0.004053, rel=1e-3)  # 13,189 px of ~0.307 m²
    assert result["valid_area_km2"] == pytest.approx(result["grid_area_km2"]) == pytest.approx(0.32223, rel=1e-4)
    assert result["changed_percent_of_valid"] == pytest.approx(100 * 0.004053 / 0.32223, rel=1e-3)
    assert result["nodata_fraction"] == 0.0 and result["threshold"] == 0.5
    assert result["regions"] == 12 and result["size_classes_m2"] == {
        "<100": 0, "100-1000": 12, "1000-10000": 0, ">=10000": 0}


def test_nodata_fraction_is_an_area_fraction(levir_label):
    prob, grid, valid = levir_label
    prob, valid = prob.copy(), valid.copy()
    valid[:256] = False  # the northern quarter: slightly smaller pixels than the rest
    prob[256:512, :512] = np.nan
    stats = ChangeStatistics(grid, 0.5)
    feed([stats], prob, valid)
    result = stats.result()
    rows = GroundMeasure(grid).row_areas(0, 1024)
    expected = (rows[:256].sum() * 1024 + rows[256:512].sum() * 512) / (rows.sum() * 1024)
    assert result["nodata_fraction"] == pytest.approx(expected, rel=1e-9)
    assert result["nodata_fraction"] != pytest.approx(0.375, rel=1e-9)  # not a pixel count
    assert result["pixels"]["valid"] == 1024 * 1024 - 256 * 1024 - 256 * 512
    assert result["regions"] is None and result["size_classes_m2"] is None


def test_size_classes_bounds():
    assert size_classes(np.array([0.5, 99.9, 100, 999, 1000, 9999.9, 10000, 1e6])) == {
        "<100": 2, "100-1000": 2, "1000-10000": 2, ">=10000": 2}
    assert size_classes(np.array([5.0, 50.0]), edges=(10.0,)) == {"<10": 1, ">=10": 1}


@pytest.mark.parametrize("dest", ["local", "memory://stats/s.json"])
def test_write_json_round_trip(tmp_path, dest):
    dest = str(tmp_path / "out" / "stats.json") if dest == "local" else dest
    stats = {"changed_area_km2": 0.004, "pixels": {"changed": 13189}, "regions": None}
    write_json(stats, dest)
    assert json.loads(fs.read_text(dest)) == stats
