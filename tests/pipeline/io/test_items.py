"""A STAC Item read as one date: bands, grid, scale/offset, the Sentinel-2 baseline change, cloud masks, errors."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

from pipeline import errors
from pipeline.io import items
from pipeline.io.items import ItemError, ItemReader, is_item, load_item
from pipeline.io.raster import same_crs
from tests.helpers import stac as sf

pytestmark = pytest.mark.timeout(120)

UVP_0612 = sf.item_id("33UVP", "2023-06-12")


def _read_in_windows(reader: ItemReader, height: int, width: int, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    parts = [[reader.read(y, min(y + side, height), x, min(x + side, width)) for x in range(0, width, side)]
             for y in range(0, height, side)]
    image = np.concatenate([np.concatenate([p[0] for p in row], axis=2) for row in parts], axis=1)
    valid = np.concatenate([np.concatenate([p[1] for p in row], axis=1) for row in parts], axis=0)
    return image, valid


def test_is_item():
    assert is_item("s3://b/x/item.json") and is_item("scene.geojson") and is_item("https://h/a/item.JSON?sig=1")
    assert is_item("https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2B_33UVP_20230612_0_L2A")
    assert not is_item("s3://b/x/red.tif") and not is_item("before.tif") and not is_item("https://h/collections/c/items")


def test_an_item_reads_like_its_bands_stacked_by_hand(stac_world, run_storage):
    keys = ["red", "green", "blue", "nir", "swir16"]
    date = load_item(stac_world.static_items[UVP_0612], keys)  # relative asset hrefs, resolved against the s3:// URL
    assert [b.key for b in date.bands] == keys
    assert date.bands[0].href == stac_world.static_items[UVP_0612].rsplit("/", 1)[0] + "/red.tif"
    g = date.grid
    assert (g.width, g.height, g.transform) == (64, 64, (10.0, 0.0, *sf.TILES["33UVP"][:1], 0.0, -10.0, sf.TILES["33UVP"][1]))
    with rasterio.open(stac_world.local[UVP_0612]["red"]) as ref:
        assert same_crs(g.crs_wkt, ref.crs.to_wkt())
    info = items.read_info(date)
    assert (info.count, info.dtype, info.nodata, info.grid) == (5, "float32", None, g)
    with ItemReader(date, g) as reader:
        image, valid = _read_in_windows(reader, g.height, g.width)
    expected, expected_valid = sf.stacked_by_hand(stac_world.local[UVP_0612], keys)
    assert image.dtype == np.float32 and image.shape == (5, 64, 64)
    np.testing.assert_array_equal(valid, expected_valid)
    assert not valid[sf.NODATA_PIXEL] and valid.sum() == 64 * 64 - 1
    np.testing.assert_allclose(image[:, valid], expected[:, valid], rtol=0, atol=1e-6)
    assert (image[:, ~valid] == 0).all()
    # the values are reflectances: the fixture's DNs are 10000 * reflectance + 1000
    truth = sf.reflectance(1 * 10 + 2, 64)  # scene 1 ('2023-06-12'), band 2 ('red')
    np.testing.assert_allclose(image[0][valid], truth[valid], atol=1e-6)


def test_bands_by_key_by_common_name_by_band_name_and_by_default(stac_world, run_storage):
    url = stac_world.static_items[UVP_0612]
    assert [b.key for b in load_item(url, ["B04", "nir", "B11"]).bands] == ["red", "nir", "swir16"]
    assert [b.key for b in load_item(url, ["swir16"]).bands] == ["swir16"]
    assert load_item(url, ["swir16"]).grid.resolution == (20.0, 20.0)  # the finest chosen band's grid
    assert [b.key for b in load_item(url).bands] == ["blue", "green", "red", "nir", "swir16"]  # by wavelength
    assert [b.key for b in load_item(url, default_bands=3).bands] == ["red", "green", "blue"]
    assert [b.common_name for b in load_item(url, default_bands=4).bands] == ["blue", "green", "red", "nir", "swir16"]


def test_a_missing_asset_is_one_paragraph_naming_what_the_item_has(stac_world, run_storage):
    with pytest.raises(ItemError) as exc:
        load_item(stac_world.static_items[UVP_0612], ["red", "B99"])
    message = str(exc.value)
    assert "\n" not in message and "'B99'" in message and UVP_0612 in message
    assert "blue, green, nir, red, scl, swir16, thumbnail" in message and "B04" in message and "--assets" in message


def test_cloud_masking_with_scl(stac_world, run_storage):
    url = stac_world.static_items[UVP_0612]
    cloud = (slice(8, 16), slice(8, 16))  # SCL's 20 m cloud on the 10 m grid
    shadow = (slice(24, 28), slice(40, 48))
    for masked in (True, False):
        date = load_item(url, ["red", "swir16"], cloud_mask=masked)
        assert date.mask == items.MaskAsset("scl", url.rsplit("/", 1)[0] + "/scl.tif", "scl")
        with ItemReader(date, date.grid) as reader:
            _, valid = reader.read(0, 64, 0, 64)
        assert valid[cloud].all() != masked and valid[shadow].all() != masked
        assert valid[:8].all() and not valid[sf.NODATA_PIXEL]
        assert valid.sum() == 64 * 64 - 1 - (64 + 32 if masked else 0)


def _baseline_pair(folder, mode: str) -> tuple[str, str]:
    """Two Items of the same surface reflectance, before (baseline 03.01) and after (04.00) the change.

    ``mode``: how the later Item says (or does not say) that its DNs carry the +1000 offset.
    """
    bands = {k: v for k, v in sf.BANDS.items() if k in ("red", "swir16")}
    raster = {"planetary-computer": "none", "earth-search": "earth-search", "scale-only": "scale-only",
              "earth-search-applied": "earth-search"}[mode]
    urls = []
    for name, baseline, dn_offset, applied in [("old", "03.01", 0, None),
                                               ("new", "04.00", 0 if mode == "earth-search-applied" else 1000,
                                                True if mode == "earth-search-applied" else None)]:
        files = sf.write_scene(folder / name, "33UVP", seed=7, dn_offset=dn_offset, bands=bands, with_scl=False)
        item = sf.make_item(f"S2B_33UVP_{name}", "33UVP", "2022-01-20" if name == "old" else "2022-02-20", 3.0, 22,
                            {k: str(p) for k, p in files.items()}, baseline=baseline, offset_applied=applied,
                            raster_bands="scale-only" if name == "old" and raster != "none" else raster)
        (folder / f"{name}.json").write_text(json.dumps(item))
        urls.append(str(folder / f"{name}.json"))
    return urls[0], urls[1]


@pytest.mark.parametrize("mode", ["planetary-computer", "earth-search", "scale-only", "earth-search-applied"])
def test_a_pair_across_the_baseline_change_reads_the_same_values(tmp_path, mode):
    old_url, new_url = _baseline_pair(tmp_path, mode)
    old, new = load_item(old_url), load_item(new_url)
    assert old.baseline_offset == 0
    assert new.baseline_offset == (-1000 if mode in ("planetary-computer", "scale-only") else 0)
    if mode == "earth-search-applied":
        assert all(b.offset == 0 for b in new.bands)  # the stale -0.1 is not applied on top
    with ItemReader(old, old.grid) as a, ItemReader(new, old.grid) as b:
        (x, vx), (y, vy) = a.read(0, 64, 0, 64), b.read(0, 64, 0, 64)
    np.testing.assert_array_equal(vx, vy)
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6 if mode != "planetary-computer" else 1e-2)
    if mode != "planetary-computer":  # with a scale the values are reflectances
        np.testing.assert_allclose(x[0][vx], sf.reflectance(70, 64)[vx], atol=1e-6)


def test_the_grid_comes_from_the_header_when_the_item_has_no_projection_fields(tmp_path):
    files = sf.write_scene(tmp_path / "s", "33UUP", seed=3, bands={"red": sf.BANDS["red"]}, with_scl=False)
    item = sf.make_item("noproj", "33UUP", "2023-06-05", 3.0, 22, {"red": str(files["red"])}, proj=False)
    (tmp_path / "item.json").write_text(json.dumps(item))
    date = load_item(str(tmp_path / "item.json"))
    assert [b.key for b in date.bands] == ["red"]
    assert date.grid.transform == (10.0, 0.0, 400000.0, 0.0, -10.0, 5400640.0) and (date.grid.width, date.grid.height) == (64, 64)


def test_the_storage_options_keys_reach_fsspec_and_gdal(stac_world, monkeypatch):
    from pipeline import storage

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    sid = sf.item_id("33UUP", "2024-06-22")
    with storage.using(storage.StorageOptions.from_mapping(stac_world.storage_options)):
        date = load_item(stac_world.static_items[sid], ["nir"])
        with ItemReader(date, date.grid) as reader:
            image, valid = reader.read(10, 20, 10, 20)
    assert valid.all() and np.isclose(image.mean(), sf.reflectance(10 * 10 + 3, 64)[10:20, 10:20].mean(), atol=1e-6)


def test_an_item_date_pickles(stac_world, run_storage):
    date = load_item(stac_world.static_items[UVP_0612], cloud_mask=True)
    assert pickle.loads(pickle.dumps(date)) == date
    assert date.properties == {"cloud_cover": 4.0, "tile": "T33UVP", "relative_orbit": 122, "platform": "sentinel-2b",
                               "collection": sf.COLLECTION}


def test_unusable_item_urls_are_one_paragraph_each(stac_world, run_storage, tmp_path):
    (tmp_path / "page.json").write_text("<html>not json</html>")
    (tmp_path / "collection.json").write_text(json.dumps(sf.collection_dict(stac_world.items)))
    port = sf.free_port()
    cases = [
        (str(tmp_path / "nope.json"), errors.MissingRasterError, "does not exist"),
        (f"s3://{stac_world.bucket}/static/nope.json", errors.MissingRasterError, "does not exist"),
        (f"http://127.0.0.1:{port}/item.json", errors.InputUnreachableError, "cannot be reached"),
        (str(tmp_path / "page.json"), ItemError, "is not JSON"),
        (str(tmp_path / "collection.json"), ItemError, "is a STAC Collection (sentinel-2-l2a), not a STAC Item"),
    ]
    for url, error, text in cases:
        with pytest.raises(error) as exc:
            load_item(url)
        message = str(exc.value)
        assert text in message and "\n" not in message and isinstance(exc.value, errors.InputRasterError), message
        assert stac_world.storage_options["secret"] not in message


def test_cloud_masking_without_a_mask_asset_is_refused(tmp_path):
    files = sf.write_scene(tmp_path / "s", "33UUP", seed=3, bands={"red": sf.BANDS["red"]}, with_scl=False)
    (tmp_path / "item.json").write_text(json.dumps(sf.make_item("nomask", "33UUP", "2023-06-05", 3.0, 22,
                                                                {"red": str(files["red"])})))
    with pytest.raises(ItemError, match="has no 'scl' .* or 'qa_pixel' .* asset"):
        load_item(str(tmp_path / "item.json"), cloud_mask=True)


def test_landsat_qa_pixel_bits():
    # clear; fill, dilated cloud, cirrus, cloud, shadow; clear water
    qa = np.array([21824, 21825, 21826, 21828, 21832, 21840, 21952], np.uint16)
    assert items._clear("qa_pixel", qa).tolist() == [True, False, False, False, False, False, True]
    scl = np.arange(12, dtype=np.uint8)
    assert np.flatnonzero(~items._clear("scl", scl)).tolist() == [0, 1, 3, 8, 9, 10]


_S2 = [("coastal", "B01", 60, 0.443), ("blue", "B02", 10, 0.49), ("green", "B03", 10, 0.56), ("red", "B04", 10, 0.665),
       ("rededge", "B05", 20, 0.704), ("rededge", "B06", 20, 0.74), ("rededge", "B07", 20, 0.783), ("nir", "B08", 10, 0.842),
       ("nir08", "B8A", 20, 0.865), ("nir09", "B09", 60, 0.945), ("swir16", "B11", 20, 1.61), ("swir22", "B12", 20, 2.19)]
_COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _asset(href: str, res: int, roles: list[str], bands: list[dict] | None = None, media: str = _COG) -> dict:
    n = 109800 // res
    asset = {"href": href, "type": media, "roles": roles, "gsd": res, "proj:shape": [n, n],
             "proj:transform": [res, 0, 300000, 0, -res, 5500020]}
    if bands:
        asset["eo:bands"] = bands
    return asset


def _earth_search_v1() -> dict:
    """The asset layout of an Earth Search v1 sentinel-2-l2a Item (keys by common name, -jp2 twins, visual, aot/wvp/scl)."""
    root = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/33/U/VP/2023/6/S2B_33UVP_20230612_0_L2A"
    keys = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09", "swir16", "swir22"]
    assets = {}
    for key, (common, name, res, wl) in zip(keys, _S2):
        band = [{"name": key, "common_name": common, "center_wavelength": wl}]
        assets[key] = _asset(f"{root}/{name}.tif", res, ["data", "reflectance"], band)
        assets[key]["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]
        assets[f"{key}-jp2"] = _asset(f"s3://sentinel-s2-l2a/tiles/{name}.jp2", res, ["data", "reflectance"], band, "image/jp2")
    assets["visual"] = _asset(f"{root}/TCI.tif", 10, ["visual"], [{"name": n, "common_name": n} for n in ("red", "green", "blue")])
    for key in ("aot", "wvp", "scl"):
        assets[key] = _asset(f"{root}/{key.upper()}.tif", 20, ["data", "reflectance"])
    assets["thumbnail"] = {"href": f"{root}/thumbnail.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    assets["granule_metadata"] = {"href": f"{root}/metadata.xml", "type": "application/xml", "roles": ["metadata"]}
    props = {"datetime": "2023-06-12T10:06:21Z", "proj:epsg": 32633, "grid:code": "MGRS-33UVP", "eo:cloud_cover": 4.2,
             "s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True,
             "s2:product_uri": "S2B_MSIL2A_20230612T100559_N0509_R022_T33UVP_20230612T123456.SAFE"}
    return {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_33UVP_20230612_0_L2A", "properties": props,
            "geometry": None, "links": [], "assets": assets}


def _planetary_computer() -> dict:
    """The asset layout of a Planetary Computer sentinel-2-l2a Item (keys B01..B12, SCL; no raster:bands)."""
    root = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/U/VP/2022/02/20/IMG_DATA"
    assets = {name: _asset(f"{root}/T33UVP_{name}.tif", res, ["data"], [{"name": name, "common_name": common,
                                                                         "center_wavelength": wl}])
              for common, name, res, wl in _S2}
    assets["visual"] = _asset(f"{root}/TCI.tif", 10, ["data"], [{"name": n, "common_name": n} for n in ("red", "green", "blue")])
    assets["AOT"] = _asset(f"{root}/AOT.tif", 10, ["data"])
    assets["SCL"] = _asset(f"{root}/SCL.tif", 20, ["data"])
    assets["product-metadata"] = {"href": f"{root}/MTD.xml", "type": "application/xml", "roles": ["metadata"]}
    props = {"datetime": "2022-02-20T10:06:21Z", "proj:epsg": 32633, "s2:mgrs_tile": "33UVP", "sat:relative_orbit": 22,
             "eo:cloud_cover": 12.5, "s2:processing_baseline": "04.00"}
    return {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_MSIL2A_20220220", "properties": props, "geometry": None,
            "links": [], "assets": assets}


def test_real_item_layouts_choose_the_band_files(tmp_path):
    es, pc = tmp_path / "es.json", tmp_path / "pc.json"
    es.write_text(json.dumps(_earth_search_v1()))
    pc.write_text(json.dumps(_planetary_computer()))
    rgb = load_item(str(es), default_bands=3)
    assert [b.key for b in rgb.bands] == ["red", "green", "blue"] and all(b.href.endswith(".tif") for b in rgb.bands)
    assert [(b.scale, b.offset, b.dn_offset) for b in rgb.bands] == [(0.0001, 0.0, 0.0)] * 3  # offset applied: -0.1 ignored
    assert rgb.grid.resolution == (10.0, 10.0) and rgb.grid.width == 10980
    every = load_item(str(es))
    assert [b.key for b in every.bands] == ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir",
                                            "nir08", "nir09", "swir16", "swir22"]
    assert load_item(str(es), cloud_mask=True).mask.key == "scl"
    assert [b.key for b in load_item(str(pc), ["red", "nir08", "swir16"]).bands] == ["B04", "B8A", "B11"]
    pc_rgb = load_item(str(pc), default_bands=3, cloud_mask=True)
    assert [b.key for b in pc_rgb.bands] == ["B04", "B03", "B02"] and pc_rgb.mask.kind == "scl"
    assert [(b.scale, b.offset, b.dn_offset) for b in pc_rgb.bands] == [(1.0, 0.0, -1000.0)] * 3  # raw DNs, baseline 04.00
    assert len(load_item(str(pc)).bands) == 12
    assert load_item(str(pc), ["swir16"]).grid.resolution == (20.0, 20.0)
    assert load_item(str(es)).properties["relative_orbit"] == 22 and load_item(str(pc)).properties["tile"] == "T33UVP"


def test_an_item_read_onto_another_grid_warps_every_band(stac_world, run_storage):
    from rasterio.crs import CRS

    from pipeline.grid import Grid

    date = load_item(stac_world.static_items[UVP_0612], ["red", "swir16"])
    a, b, c, d, e, f = date.grid.transform
    shifted = Grid(date.grid.crs_wkt, (a, b, c + 25.0, d, e, f - 15.0), 40, 50)  # off by 2.5 and 1.5 pixels
    with ItemReader(date, shifted) as reader:
        image, valid = reader.read(0, 50, 0, 40)
    expected = np.full((50, 40), np.nan, np.float32)
    with rasterio.open(stac_world.local[UVP_0612]["red"]) as src:
        reproject(src.read(1), expected, src_transform=src.transform, src_crs=src.crs, dst_crs=CRS.from_wkt(shifted.crs_wkt),
                  dst_transform=rasterio.Affine(*shifted.transform), src_nodata=0, dst_nodata=np.nan,
                  resampling=Resampling.bilinear)
    expected = expected * np.float32(sf.SCALE) + np.float32(sf.OFFSET)
    both = valid & ~np.isnan(expected)
    assert both.sum() > 0.9 * valid.size
    np.testing.assert_allclose(image[0][both], expected[both], atol=1e-6)


def test_planetary_computer_hrefs_are_signed_when_opened_through_its_package(monkeypatch):
    """Each open signs again through ``planetary_computer.sign`` (which renews its token before expiry):
    a band opened hours into a run gets a valid token. Other hosts, and hrefs already signed, are left alone."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("planetary_computer")
    fake.sign = lambda href: calls.append(href) or f"{href}?se=later&sig=fresh"
    monkeypatch.setitem(sys.modules, "planetary_computer", fake)
    blob = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/U/VP/B04.tif"
    assert items.sign_href(blob) == blob + "?se=later&sig=fresh"
    assert items.sign_href(blob) == blob + "?se=later&sig=fresh" and calls == [blob, blob]
    assert items.sign_href(blob + "?sig=given") == blob + "?sig=given"
    assert items.sign_href("s3://sentinel-cogs/x/B04.tif") == "s3://sentinel-cogs/x/B04.tif" and len(calls) == 2
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # not installed: read as it is
    assert items.sign_href(blob) == blob

