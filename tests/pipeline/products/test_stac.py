"""STAC Items and Collections of change maps: footprint, properties, assets, round trips, offline core validation."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pystac
import pytest
import shapely
from pyproj import CRS, Transformer
from pystac.validation import validate_dict

from pipeline.errors import ChangemapError
from pipeline.grid import Grid
from pipeline.io import fs, raster
from pipeline.products.stac import archive_collection, footprint, map_item, write_item

SHA = "ab" * 32
STATS = {"threshold": 0.5, "changed_area_km2": 0.004053, "valid_area_km2": 0.32223, "regions": 12,
         "size_classes_m2": {"<100": 0, "100-1000": 12, "1000-10000": 0, ">=10000": 0}}
ASSETS = {"polygons": "s3://maps/test_1.gpkg", "statistics": "s3://maps/test_1.json",
          "thumbnail": "s3://maps/test_1.png"}


@pytest.fixture(scope="module")
def levir_grid(levir_pair):
    return raster.read_info(str(levir_pair[0])).grid


def item_for(grid, name="test_1", **kw):
    return map_item(f"s3://maps/{name}.tif", grid, before=f"s3://in/{name}_A.tif", after=f"s3://in/{name}_B.tif",
                    model="tinycd", weights_sha256=SHA, threshold=0.5, stats=STATS, assets=ASSETS, **kw)


def core_valid(d: dict) -> None:
    """Validate against the STAC core schemas pystac ships (extension schemas would need the network)."""
    validate_dict({**d, "stac_extensions": []})


def test_item_fields(levir_grid):
    item = item_for(levir_grid)
    d = item.to_dict(include_self_link=False)
    core_valid(d)
    left, bottom, right, top = levir_grid.bounds  # already EPSG:4326
    assert d["bbox"] == pytest.approx([left, bottom, right, top])
    assert shapely.geometry.shape(d["geometry"]).equals(shapely.box(left, bottom, right, top))
    assert shapely.geometry.shape(d["geometry"]).exterior.is_ccw
    props = d["properties"]
    assert props["changemap:model"] == "tinycd" and props["changemap:weights_sha256"] == SHA
    assert props["changemap:threshold"] == 0.5
    assert props["changemap:before"] == "s3://in/test_1_A.tif" and props["changemap:after"] == "s3://in/test_1_B.tif"
    assert props["changemap:changed_area_km2"] == 0.004053 and props["changemap:regions"] == 12
    assert props["changemap:size_classes_m2"]["100-1000"] == 12
    assert props["datetime"] and "created" in props
    assert props["proj:code"] == "EPSG:4326" and props["proj:shape"] == [1024, 1024]
    assert props["proj:transform"] == list(levir_grid.transform)
    assert d["stac_extensions"] == ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"]
    assets = d["assets"]
    assert assets["data"] == {"href": "s3://maps/test_1.tif", "title": "change probability", "roles": ["data"],
                              "type": "image/tiff; application=geotiff; profile=cloud-optimized"}
    assert assets["polygons"]["type"] == "application/geopackage+sqlite3"
    assert assets["statistics"]["roles"] == ["metadata"] and assets["statistics"]["type"] == "application/json"
    assert assets["thumbnail"]["type"] == "image/png" and "thumbnail" in assets["thumbnail"]["roles"]
    assert item.id == "test_1"


def test_projected_footprint_is_densified_wgs84():
    grid = Grid(CRS.from_epsg(32614).to_wkt(), (30.0, 0.0, 600000.0, 0.0, -30.0, 3400000.0), 4000, 3000)
    geometry, bbox = footprint(grid)
    poly = shapely.geometry.shape(geometry)
    assert poly.is_valid and poly.exterior.is_ccw and len(poly.exterior.coords) == 81
    to_wgs84 = Transformer.from_crs(32614, 4326, always_xy=True)
    corners = [to_wgs84.transform(x, y) for x, y in [(600000, 3400000), (720000, 3400000), (720000, 3310000)]]
    for lon, lat in corners:
        assert poly.exterior.distance(shapely.Point(lon, lat)) < 1e-9
    assert bbox == pytest.approx([-97.9641, 29.9010, -96.7027, 30.7287], abs=1e-4)
    # The bbox is the densified outline's extent (a UTM grid's edges are not lon/lat lines).
    assert bbox == pytest.approx(list(poly.bounds))
    item = map_item("m.tif", grid, before="a", after="b", model="m", weights_sha256=None, threshold=0.4)
    assert item.properties["proj:code"] == "EPSG:32614" and "changemap:changed_area_km2" not in item.properties
    core_valid(item.to_dict(include_self_link=False))


def test_period_instead_of_datetime_and_credentials_dropped(levir_grid):
    start, end = dt.datetime(2002, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc)
    item = map_item("s3://maps/x.tif", levir_grid, before="s3://user:pw@in/a.tif?X-Amz-Signature=s",
                    after="https://h/b.tif?token=t", model="m", weights_sha256=None, threshold=0.5,
                    start_datetime=start, end_datetime=end, item_id="pair-7")
    d = item.to_dict(include_self_link=False)
    core_valid(d)
    assert d["id"] == "pair-7" and d["properties"]["datetime"] is None
    assert d["properties"]["start_datetime"].startswith("2002-01-01")
    assert "pw" not in json.dumps(d) and "Signature" not in json.dumps(d) and "token" not in json.dumps(d)
    with pytest.raises(ValueError, match="both"):
        map_item("x.tif", levir_grid, before="a", after="b", model="m", weights_sha256=None, threshold=0.5,
                 start_datetime=start)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_item_round_trip(levir_grid, tmp_path, where):
    dest = str(tmp_path / "stac" / "test_1.json") if where == "local" else "memory://stac/test_1.json"
    item = item_for(levir_grid)
    write_item(item, dest)
    d = json.loads(fs.read_text(dest))
    core_valid(d)
    back = pystac.Item.from_dict(d)
    assert back.to_dict(include_self_link=False) == item.to_dict(include_self_link=False)
    assert back.get_self_href() == dest
    if where == "local":
        assert pystac.Item.from_file(dest).properties["changemap:regions"] == 12


def test_archive_collection_written_under_the_prefix(levir_grid, tmp_path):
    utm = Grid(CRS.from_epsg(32614).to_wkt(), (30.0, 0.0, 600000.0, 0.0, -30.0, 3400000.0), 100, 100)
    items = [item_for(levir_grid, "test_1"), item_for(utm, "utm_pair")]
    collection = archive_collection(items, str(tmp_path / "archive"))
    assert items[0].get_self_href() is None  # the caller's items are left alone
    files = sorted(p.relative_to(tmp_path / "archive").as_posix() for p in (tmp_path / "archive").rglob("*.json"))
    assert files == ["collection.json", "test_1/test_1.json", "utm_pair/utm_pair.json"]
    d = json.loads((tmp_path / "archive" / "collection.json").read_text())
    core_valid(d)
    assert {link["href"] for link in d["links"] if link["rel"] == "item"} == {"./test_1/test_1.json",
                                                                             "./utm_pair/utm_pair.json"}
    boxes = np.array([i.bbox for i in items])
    assert d["extent"]["spatial"]["bbox"][0] == pytest.approx([*boxes[:, :2].min(0), *boxes[:, 2:].max(0)])
    read = pystac.Collection.from_file(str(tmp_path / "archive" / "collection.json"))
    assert sorted(i.id for i in read.get_items()) == ["test_1", "utm_pair"]
    for item in read.get_items():
        core_valid(item.to_dict(include_self_link=False))
        assert item.assets["data"].href.startswith("s3://maps/")  # asset URLs stay absolute
    assert collection.id == "changemap"


def test_archive_collection_on_object_storage_and_bad_input(levir_grid):
    archive_collection([item_for(levir_grid, "a"), item_for(levir_grid, "b")], "memory://bucket/archive")
    assert fs.glob("memory://bucket/archive/**/*.json") == [
        "memory:///bucket/archive/a/a.json", "memory:///bucket/archive/b/b.json",
        "memory:///bucket/archive/collection.json"]
    item = json.loads(fs.read_text("memory://bucket/archive/a/a.json"))
    assert {link["rel"]: link["href"] for link in item["links"]}["collection"] == "../collection.json"
    with pytest.raises(ChangemapError, match="unique item ids"):
        archive_collection([item_for(levir_grid, "a"), item_for(levir_grid, "a")], "memory://bucket/dup")
    with pytest.raises(ChangemapError, match="at least one item"):
        archive_collection([], "memory://bucket/none")
