"""The rasterio module: metadata errors, aligned reads with masks, atomic COG writing."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio

from pipeline import errors, storage
from pipeline.checks import plan_grid
from pipeline.errors import GridError, InputRasterError
from pipeline.grid import Grid
from pipeline.io import cog, raster, read
from tests import helpers


def test_read_info(synthetic):
    info = raster.read_info(str(synthetic["before"]), "BEFORE")
    assert (info.grid.width, info.grid.height, info.count, info.dtype, info.nodata) == (300, 230, 3, "uint8", 0)
    assert "UTM zone 14N" in info.grid.crs_wkt


@pytest.mark.parametrize("name,error,text", [
    ("missing", InputRasterError, "does not exist"),
    ("corrupt", InputRasterError, "corrupt, truncated or not a GeoTIFF"),
    ("no_crs", GridError, "has no CRS"),
])
def test_unusable_rasters_are_named_with_the_fix(synthetic, tmp_path, name, error, text):
    path = str(synthetic[name]) if name in synthetic else str(tmp_path / "nope.tif")
    with pytest.raises(error, match=text) as exc:
        raster.read_info(path, "AFTER")
    assert path in str(exc.value) and "AFTER" in str(exc.value)


def test_aligned_reader_masks_nodata_of_either_date(synthetic):
    alignment = plan_grid(str(synthetic["before"]), str(synthetic["after"]))
    assert not alignment.warp_after
    with read.AlignedPairReader(alignment) as reader:
        image, valid = reader.read(0, 230, 0, 300)
    assert image.shape == (2, 3, 230, 300) and image.dtype == np.uint8
    assert not valid[:, :12].any() and valid[:, 12:].all()  # AFTER's nodata stripe
    with rasterio.open(synthetic["after"]) as src:
        np.testing.assert_array_equal(image[1], src.read())


def _copy(src_path, dst_path, *, nodata=None, dtype=None, scale=1):
    """The raster at ``src_path`` rewritten without nodata (every pixel valid) or in another dtype."""
    with rasterio.open(src_path) as src:
        data, profile = src.read(), src.profile
    profile.update(nodata=nodata, dtype=dtype or profile["dtype"])
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data.astype(profile["dtype"]) * scale)
    return str(dst_path)


def test_a_pair_without_nodata_is_valid_everywhere_without_asking_gdal_for_masks(synthetic, tmp_path, monkeypatch):
    before = _copy(synthetic["before"], tmp_path / "b.tif")
    after = _copy(synthetic["after"], tmp_path / "a.tif")
    alignment = plan_grid(before, after)

    def no_masks(*args, **kwargs):
        raise AssertionError("an all-valid source's mask is all 255s: it is not read")

    monkeypatch.setattr(rasterio.io.DatasetReader, "dataset_mask", no_masks)
    with read.AlignedPairReader(alignment) as reader:
        image, valid = reader.read(10, 200, 30, 290)
    assert valid.shape == (190, 260) and valid.all()
    with rasterio.open(after) as src:
        np.testing.assert_array_equal(image[1], src.read(window=((10, 200), (30, 290))))


def test_dates_of_different_dtypes_are_read_in_the_common_one(synthetic, tmp_path):
    after = _copy(synthetic["after"], tmp_path / "a16.tif", nodata=0, dtype="uint16", scale=200)
    alignment = plan_grid(str(synthetic["before"]), after)
    assert alignment.dtype == "uint16"
    with read.AlignedPairReader(alignment) as reader:
        image, valid = reader.read(0, 230, 0, 300)
    assert image.dtype == np.uint16 and not valid[:, :12].any() and valid[:, 12:].all()
    with rasterio.open(synthetic["before"]) as b, rasterio.open(after) as a:
        np.testing.assert_array_equal(image[0], b.read().astype("uint16"))
        np.testing.assert_array_equal(image[1], a.read())
        assert image[1].max() > 255


def test_warped_after_lands_on_before_grid(synthetic):
    alignment = plan_grid(str(synthetic["before"]), str(synthetic["after_4326"]))
    assert alignment.warp_after and alignment.grid.width == 300
    with read.AlignedPairReader(alignment) as reader:
        image, valid = reader.read(0, 230, 0, 300)
    with rasterio.open(synthetic["after"]) as src:
        original = src.read().astype(float)
    inner = valid.copy()
    inner[:, :20] = inner[:, -8:] = False
    inner[:8] = inner[-8:] = False
    # Round trip UTM -> lon/lat -> UTM with bilinear twice: close to the original pixels.
    diff = np.abs(image[1].astype(float) - original)[:, inner]
    assert np.median(diff) < 6
    assert not valid[:, :10].any()  # the nodata stripe stays nodata after warping
    assert valid.mean() > 0.85


def _blocks(grid, value):
    for y0, x0, h, w in cog.iter_blocks(grid.height, grid.width):
        yield (y0, x0, h, w), np.full((1, h, w), value, "uint8"), np.ones((h, w), bool)


def test_write_cog_is_valid_and_georeferenced(tmp_path, synthetic):
    grid = raster.read_info(str(synthetic["before"])).grid
    big = Grid(grid.crs_wkt, grid.transform, 1300, 700)
    out = tmp_path / "map.tif"
    cog.write_cog(str(out), big, 1, "uint8", _blocks(big, 7), tags={"A": "1"}, descriptions=("p",))
    assert cog.cog_problems(str(out)) == []
    with rasterio.open(out) as src:
        assert src.crs.to_wkt() == grid.crs_wkt and tuple(src.transform)[:6] == grid.transform
        assert src.overviews(1) and src.tags()["A"] == "1" and src.descriptions == ("p",)
        assert (src.read(1) == 7).all()
    assert sorted(os.listdir(tmp_path)) == ["map.tif"]  # no temporaries left


def test_a_map_in_zstd_holds_the_same_pixels_and_an_unknown_codec_writes_nothing(tmp_path, synthetic):
    grid = raster.read_info(str(synthetic["before"])).grid
    big = Grid(grid.crs_wkt, grid.transform, 1300, 700)
    rng = np.random.default_rng(0)
    data = rng.random((1, 700, 1300)).astype("float32")
    valid = rng.random((700, 1300)) > 0.1
    blocks = [((y0, x0, h, w), data[:, y0:y0 + h, x0:x0 + w], valid[y0:y0 + h, x0:x0 + w])
              for y0, x0, h, w in cog.iter_blocks(700, 1300)]
    read = {}
    for compress in ("deflate", "zstd"):
        out = tmp_path / f"{compress}.tif"
        cog.write_cog(str(out), big, 1, "float32", blocks, nodata=float("nan"), compress=compress)
        assert cog.cog_problems(str(out)) == []
        with rasterio.open(out) as src:
            assert src.compression.name == compress and src.overviews(1)
            read[compress] = src.read(1), src.dataset_mask(), src.read(1, out_shape=(350, 650))
    for a, b in zip(read["deflate"], read["zstd"]):  # full resolution, mask and overview
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="compress must be one of deflate, zstd"):
        cog.write_cog(str(tmp_path / "lzw.tif"), big, 1, "float32", blocks, compress="lzw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deflate.tif", "zstd.tif"]


def test_a_failing_write_leaves_no_file(tmp_path, synthetic):
    grid = raster.read_info(str(synthetic["before"])).grid

    def broken():
        yield from _blocks(grid, 1)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        cog.write_cog(str(tmp_path / "map.tif"), grid, 1, "uint8", broken())
    assert os.listdir(tmp_path) == []


def test_rasters_are_read_through_fsspec_for_protocols_gdal_lacks(synthetic):
    """memory:// (no GDAL virtual file system): block reads through an fsspec file object, same result."""
    import fsspec

    from pipeline.grid import plan_alignment
    from pipeline.io.read import AlignedPairReader

    mem = fsspec.filesystem("memory")
    for name in ("before", "after"):
        mem.pipe(f"/raster-test/{name}.tif", synthetic[name].read_bytes())
    try:
        local = [raster.read_info(str(synthetic[n])) for n in ("before", "after")]
        remote = [raster.read_info(f"memory://raster-test/{n}.tif") for n in ("before", "after")]
        assert [r.grid for r in remote] == [r.grid for r in local]
        plans = [plan_alignment(b, a, same_crs=True, after_bounds_in_before_crs=a.grid.bounds, dtype="uint8")
                 for b, a in (local, remote)]
        with AlignedPairReader(plans[0]) as lr, AlignedPairReader(plans[1]) as rr:
            (li, lv), (ri, rv) = lr.read(10, 90, 20, 150), rr.read(10, 90, 20, 150)
        assert (li == ri).all() and (lv == rv).all()
    finally:
        mem.rm("/raster-test", recursive=True)
    with pytest.raises(InputRasterError, match="memory://raster-test/gone.tif"):
        raster.read_info("memory://raster-test/gone.tif", "BEFORE")


# --- what went wrong, told apart: endpoint, access, missing, server, corrupt -------------------------

@pytest.mark.parametrize("status,error,text", [
    (403, errors.InputAccessDeniedError, "is not readable with the given credentials (HTTP response code: 403)"),
    (401, errors.InputAccessDeniedError, "is not readable with the given credentials"),
    (404, errors.MissingRasterError, "does not exist (HTTP response code: 404); check the URL"),
    (500, errors.InputStorageError, "the storage answered with a server error"),
])
def test_http_answers_are_told_apart(status_server, status, error, text, monkeypatch):
    # GDAL's own backoff (1 s, doubling, 5 tries) made the 500 case last 50 s: shortened here.
    monkeypatch.setitem(raster.HTTP_RETRIES, "GDAL_HTTP_RETRY_DELAY", "0.05")
    monkeypatch.setitem(raster.HTTP_RETRIES, "GDAL_HTTP_MAX_RETRY", "2")
    url = f"{status_server}/{status}/scene.tif"
    with pytest.raises(error) as exc:
        raster.read_info(url, "AFTER")
    assert text in str(exc.value) and url in str(exc.value) and isinstance(exc.value, InputRasterError)
    asked = status_server.seen.count(f"/{status}/scene.tif")
    if status >= 500:  # a server error is asked again before it is reported
        assert asked >= 3
    else:  # a refusal or a missing file is final: not retried
        assert 1 <= asked < 3


def test_an_s3_endpoint_that_refuses_connections_is_not_called_corrupt():
    import json
    import socket

    from pipeline import storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {"key": "k", "secret": "s3cr3t-never-shown", "endpoint_url": f"http://127.0.0.1:{port}"}
    with storage.using(storage.StorageOptions.from_json(json.dumps(options))):
        with pytest.raises(errors.InputUnreachableError) as exc:
            raster.read_info("s3://bucket/before.tif", "BEFORE")
    message = str(exc.value)
    assert f"the storage endpoint http://127.0.0.1:{port} cannot be reached" in message
    assert "endpoint_url in --storage-options" in message and "corrupt" not in message
    assert "s3cr3t" not in message


def test_a_corrupt_block_in_the_middle_is_named_with_its_window(tmp_path):
    bad, clean = helpers.tiled_with_corrupt_middle(tmp_path)
    alignment = plan_grid(bad, clean)  # the header and the last block are fine
    assert read.overlap_coverage(alignment).both  # no nodata: the masks need no pixel
    with read.AlignedPairReader(alignment) as reader:
        reader.read(0, 256, 0, 256)
        with pytest.raises(errors.CorruptRasterError) as exc:
            reader.read(256, 512, 256, 512)
    message = str(exc.value)
    assert f"BEFORE raster {bad} cannot be read at rows 256-512, columns 256-512" in message
    assert "Decoding error" in message and "re-download or re-export it" in message  # GDAL's own words


def test_a_folder_is_not_a_raster(tmp_path):
    with pytest.raises(InputRasterError, match="is a folder; give the raster file inside it"):
        raster.read_info(str(tmp_path), "BEFORE")


@pytest.mark.parametrize("options, expected", [
    ({"s3": {"requester_pays": True, "key": "AK", "secret": "SK"}}, {"AWS_REQUEST_PAYER": "requester"}),  # USGS Landsat
    ({"s3": {"anon": True}}, {"AWS_NO_SIGN_REQUEST": "YES"}),  # public buckets (Sentinel-2 COGs on AWS)
])
def test_requester_pays_and_unsigned_buckets_reach_gdal(options, expected):
    with storage.using(storage.StorageOptions.from_mapping(options)):
        session, config = raster._gdal_session("s3://usgs-landsat/collection02/level-2/B4.TIF")
    assert expected.items() <= session.get_credential_options().items()
    # reads of every kind retry throttling and server errors with a backoff
    assert config["GDAL_HTTP_MAX_RETRY"] == "5" and config["GDAL_HTTP_RETRY_DELAY"] == "1"


def _gdal_cache_max() -> int:
    """GDAL's block cache limit in bytes, asked of the GDAL library this process has loaded (rasterio's)."""
    import ctypes

    with open("/proc/self/maps") as maps:  # pyogrio may load a GDAL of its own: rasterio's first
        libs = sorted({line.split()[-1] for line in maps if "/libgdal" in line}, key=lambda p: "rasterio" not in p)
    lib = libs[0]
    gdal = ctypes.CDLL(lib)
    gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    return gdal.GDALGetCacheMax64()


def test_gdal_block_caches_are_bounded_in_bytes_not_left_at_5_percent_of_ram(synthetic):
    """rasterio hands an integer GDAL_CACHEMAX to GDAL as bytes: a bare 64 made the COG step's cache 64 bytes."""
    outside = _gdal_cache_max()
    with rasterio.Env(**cog._GDAL_ENV):
        assert _gdal_cache_max() == 64 * 2**20
    pre = plan_grid(str(synthetic["before"]), str(synthetic["after"]))
    with read.AlignedPairReader(pre) as reader:
        assert _gdal_cache_max() == read.READ_CACHE_BYTES == 64 * 2**20
        reader.read(0, 16, 0, 16)
    assert _gdal_cache_max() == outside
