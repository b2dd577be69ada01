"""Pure grid planning: output grid, when to warp, and the errors for unusable pairs."""
from __future__ import annotations

import pytest

from pipeline.errors import GridError
from pipeline.grid import Grid, RasterInfo, plan_alignment

UTM = "PROJCS[utm14]"
BASE = Grid(UTM, (1.0, 0.0, 600000.0, 0.0, -1.0, 3340000.0), 300, 230)


def info(grid=BASE, count=3, path="x.tif"):
    return RasterInfo(path, grid, count, "uint8", 0)


def test_identical_grids_need_no_warp():
    plan = plan_alignment(info(path="b.tif"), info(path="a.tif"), same_crs=True,
                          after_bounds_in_before_crs=BASE.bounds, dtype="uint8")
    assert plan.grid == BASE and not plan.warp_after


@pytest.mark.parametrize("grid", [
    Grid(UTM, (0.5, 0.0, 600000.0, 0.0, -0.5, 3340000.0), 600, 460),  # other resolution
    Grid(UTM, (1.0, 0.0, 600010.0, 0.0, -1.0, 3340000.0), 300, 230),  # shifted
    Grid(UTM, (1.0, 0.0, 600000.0, 0.0, -1.0, 3340000.0), 250, 230),  # other extent
])
def test_any_grid_difference_warps_after_onto_before(grid):
    plan = plan_alignment(info(), info(grid), same_crs=True, after_bounds_in_before_crs=grid.bounds, dtype="uint8")
    assert plan.warp_after and plan.grid == BASE


def test_another_crs_warps_even_with_equal_numbers():
    plan = plan_alignment(info(), info(), same_crs=False, after_bounds_in_before_crs=BASE.bounds, dtype="uint8")
    assert plan.warp_after


def test_band_mismatch_names_both_files_and_counts():
    with pytest.raises(GridError, match=r"BEFORE b\.tif has 3 bands but AFTER a\.tif has 4"):
        plan_alignment(info(path="b.tif"), info(count=4, path="a.tif"), same_crs=True,
                       after_bounds_in_before_crs=BASE.bounds, dtype="uint8")


def test_disjoint_footprints_are_an_error():
    far = (700000.0, 3339770.0, 700300.0, 3340000.0)
    with pytest.raises(GridError, match="footprints do not overlap"):
        plan_alignment(info(), info(), same_crs=True, after_bounds_in_before_crs=far, dtype="uint8")


def test_grid_properties():
    assert BASE.bounds == (600000.0, 3339770.0, 600300.0, 3340000.0)
    assert BASE.resolution == (1.0, 1.0)
    assert BASE.megapixels == pytest.approx(0.069)
