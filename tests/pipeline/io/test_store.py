"""Ingest: the zarr store keeps the grid, the dtype, the mask and one tile per chunk."""
from __future__ import annotations

import numpy as np
import rasterio
import xarray as xr

from pipeline.checks import plan_grid
from pipeline.io import store
from tests import helpers


def test_store_round_trip(synthetic, tmp_path):
    alignment = plan_grid(str(synthetic["before_uint16"]), str(synthetic["after_uint16"]))
    path = str(tmp_path / "input.zarr")
    helpers.ingest_pair(alignment, path, tile=64)
    assert store.is_complete(path)
    assert store.read_grid(path) == alignment.grid  # CRS and exact transform survive
    ds = xr.open_zarr(path, consolidated=False, decode_coords="all")
    assert ds["image"].dtype == np.uint16  # no float64 from scale/offset decoding
    assert ds["image"].dims == ("time", "band", "y", "x") and ds["image"].shape == (2, 3, 230, 300)
    assert ds.rio.crs.to_epsg() == 32614
    image = store.open_array(path, store.IMAGE)
    assert image.chunks == (2, 3, 64, 64)
    with rasterio.open(synthetic["before_uint16"]) as src:
        np.testing.assert_array_equal(image[0], src.read())
    assert store.open_array(path, store.VALID).chunks == (64, 64)
    valid = store.open_array(path, store.VALID)[:]
    assert not valid[:, :12].any() and valid[:, 12:].all()


def test_incomplete_store_is_detected(tmp_path):
    assert not store.is_complete(str(tmp_path / "missing.zarr"))
