"""Export: probability scaling, the mask band, nodata, on the input grid."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio

from pipeline.checks import plan_grid
from pipeline.engine import mapwriter
from pipeline.io import cog, raster, store
from tests import helpers


@pytest.fixture
def filled(synthetic, tmp_path):
    alignment = plan_grid(str(synthetic["before"]), str(synthetic["after"]))
    inp, out = str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")
    helpers.ingest_pair(alignment, inp, tile=64)
    store.create_output_store(out, alignment.grid, 64)
    prob = store.open_array(out, store.PROBABILITY, mode="r+")
    ramp = np.tile(np.linspace(0, 1, 300, dtype="float32"), (230, 1))
    prob[:, :] = ramp
    prob[:64, 256:] = np.nan  # a tile never predicted
    return alignment, inp, out, ramp


def test_uint8_probability_and_mask_band(filled, tmp_path):
    alignment, inp, out, ramp = filled
    dest = str(tmp_path / "map.tif")
    grid = helpers.export_map(out, inp, dest, probability="uint8", mask=True, threshold=0.25)
    assert grid == alignment.grid and cog.cog_problems(dest) == []
    with rasterio.open(dest) as src:
        assert src.count == 2 and src.dtypes == ("uint8", "uint8")
        assert src.descriptions == ("change_probability", "change_mask")
        p, m = src.read(1), src.read(2)
        ok = src.dataset_mask() > 0
        assert src.tags()["CHANGEMAP_THRESHOLD"] == "0.25"
    assert not ok[:, :12].any()  # AFTER's nodata
    assert not ok[:64, 256:].any()  # never predicted
    assert ok[100:, 20:].all()
    np.testing.assert_array_equal(p[ok], np.round(ramp[ok] * 255).astype("uint8"))
    np.testing.assert_array_equal(m[ok], (ramp[ok] > 0.25).astype("uint8"))
    assert (m[~ok] == 0).all()


def test_float32_probability_uses_nan_for_nodata(filled, tmp_path):
    _, inp, out, ramp = filled
    dest = str(tmp_path / "map.tif")
    helpers.export_map(out, inp, dest, probability="float32")
    with rasterio.open(dest) as src:
        p = src.read(1)
        assert src.count == 1 and src.dtypes[0] == "float32" and np.isnan(src.nodata)
    assert np.isnan(p[:, :12]).all()
    np.testing.assert_allclose(p[100:, 20:], ramp[100:, 20:])


def test_map_writer_takes_tiles_in_any_order_and_an_abort_leaves_nothing(synthetic, tmp_path):
    from pipeline.config import MapSettings
    from pipeline.products.mapstats import ChangeStatistics
    from pipeline.tiling import make_tiles

    grid = raster.read_info(str(synthetic["before"])).grid
    rng = np.random.default_rng(0)
    prob = rng.random((grid.height, grid.width)).astype("float32")
    valid = np.ones((grid.height, grid.width), bool)
    valid[:, :12] = False
    fmt = mapwriter.MapFormat(MapSettings(probability="float32", mask=True), 0.5)
    stats = ChangeStatistics(grid, 0.5)
    writer = mapwriter.MapWriter(str(tmp_path / "map.tif"), grid, fmt, {"X": "1"}, [stats])
    tiles = make_tiles(grid.height, grid.width, 64)[::-1]  # finished out of order
    for t in tiles:
        sl = (slice(t.y0, t.y0 + t.height), slice(t.x0, t.x0 + t.width))
        writer.put([(t, prob[sl], valid[sl])])
    assert writer.close() == [stats] and writer.blocks == len(tiles)
    with rasterio.open(tmp_path / "map.tif") as src:
        band1, band2, mask = src.read(1), src.read(2), src.dataset_mask() > 0
        assert src.tags()["X"] == "1" and cog.cog_problems(str(tmp_path / "map.tif")) == []
    np.testing.assert_array_equal(mask, valid)
    np.testing.assert_allclose(band1[valid], prob[valid])
    np.testing.assert_array_equal(band2[valid], (prob[valid] > 0.5).astype("float32"))
    assert stats.result()["pixels"]["changed"] == int((prob[valid] > 0.5).sum())
    # A run that stops: nothing at or beside the output.
    aborted = mapwriter.MapWriter(str(tmp_path / "sub" / "never.tif"), grid, fmt, {}, [])
    aborted.put([(tiles[0], prob[:64, :64], valid[:64, :64])])
    aborted.abort()
    assert not (tmp_path / "sub").exists() or list((tmp_path / "sub").iterdir()) == []


def test_a_writer_host_writes_one_map_then_the_next(synthetic, tmp_path):
    """What a session's reused writer actor does: maps one after another, each whole, none while one is open."""
    from pipeline.config import MapSettings
    from pipeline.tiling import make_tiles

    grid = raster.read_info(str(synthetic["before"])).grid
    prob = np.random.default_rng(1).random((grid.height, grid.width)).astype("float32")
    valid = np.ones((grid.height, grid.width), bool)
    fmt = mapwriter.MapFormat(MapSettings(probability="float32"), 0.5)
    host = mapwriter.MapWriterHost()
    tiles = make_tiles(grid.height, grid.width, 64)
    with pytest.raises(RuntimeError, match="no map is open"):
        host.put([])
    host.open(str(tmp_path / "aborted.tif"), grid, fmt, {}, [])
    with pytest.raises(RuntimeError, match="still writing"):
        host.open(str(tmp_path / "other.tif"), grid, fmt, {}, [])
    host.abort()
    for name, scale in (("first.tif", 1.0), ("second.tif", 0.5)):
        host.open(str(tmp_path / name), grid, fmt, {"MAP": name}, [])
        for t in tiles:
            sl = (slice(t.y0, t.y0 + t.height), slice(t.x0, t.x0 + t.width))
            host.put([(t, prob[sl] * scale, valid[sl])])
        host.close()
        with rasterio.open(tmp_path / name) as src:
            np.testing.assert_allclose(src.read(1), prob * scale)
            assert src.tags()["MAP"] == name
    assert not (tmp_path / "aborted.tif").exists() and host.writer is None


def test_encoded_bands_are_the_rounded_scaled_probability_and_the_thresholded_mask():
    """Band 1 is round(clip(p, 0, 1) x 255) (NaN: 0), band 2 p > threshold where both dates have data.

    Checked on every float32 step between -0.01 and 1.01 (the half steps of 255 included) and NaN.
    """
    from pipeline.config import MapSettings
    from pipeline.engine.mapwriter import MapFormat, probability_to_uint8

    p = np.linspace(-0.01, 1.01, 1_000_001, dtype=np.float32)
    p[::97] = np.nan
    expected = np.round(np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0) * 255).astype("uint8")
    np.testing.assert_array_equal(probability_to_uint8(p), expected)
    p, valid = p[:1_000_000].reshape(1000, 1000), np.arange(1_000_000).reshape(1000, 1000) % 7 > 0
    ok = valid & ~np.isnan(p)
    for probability in ("uint8", "float32"):
        fmt = MapFormat(MapSettings(probability=probability, mask=True), threshold=0.3)
        window, bands, got_ok = fmt.encode((0, 0, 1000, 1000), p, valid)
        band1 = probability_to_uint8(p) if probability == "uint8" else np.where(ok, p, np.nan)
        assert bands.dtype == np.dtype(probability) and window == (0, 0, 1000, 1000)
        np.testing.assert_array_equal(bands[0], band1)
        np.testing.assert_array_equal(bands[1], (np.nan_to_num(p) > 0.3) & ok)
        np.testing.assert_array_equal(got_ok, ok)
