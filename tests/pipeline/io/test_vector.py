"""Writing change polygons: four formats read back with their CRS and float64 attributes, atomic, clear errors."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from pyproj import CRS

from pipeline.errors import ChangemapError
from pipeline.io import cog, fs, read, vector
from pipeline.products.vectorize import ATTRIBUTES, Polygonizer


@pytest.fixture(scope="module")
def levir_polygons(levir_pair):
    label, grid, valid = read.read_raster(str(levir_pair[2]))
    prob = (label > 0).astype(np.float32)
    polygonizer = Polygonizer(grid, 0.5)
    for y0, x0, h, w in cog.iter_blocks(1024, 1024, 256):
        polygonizer.add((y0, x0, h, w), prob[y0:y0 + h, x0:x0 + w], valid[y0:y0 + h, x0:x0 + w])
    return polygonizer.finish()


def write(polys, dest):
    vector.write_vector(dest, polys.geometries, polys.attributes, polys.crs_wkt)


@pytest.mark.parametrize("ext", [".gpkg", ".fgb", ".geojson"])
def test_ogr_formats_round_trip(levir_polygons, tmp_path, ext):
    dest = str(tmp_path / "out" / f"changes{ext}")
    write(levir_polygons, dest)
    info = pyogrio.read_info(dest)
    assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(4326)
    assert info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == list(ATTRIBUTES) and set(info["dtypes"]) == {"float64"}
    _, _, wkb, fields = pyogrio.raw.read(dest)
    geoms = shapely.from_wkb(wkb)
    assert len(geoms) == len(levir_polygons) == 12
    # FlatGeobuf's spatial index stores features in Hilbert order: match them by area.
    order = np.argsort(fields[0])
    want = np.argsort(levir_polygons.attributes["area_m2"])
    for name, values in zip(ATTRIBUTES, fields):
        np.testing.assert_allclose(values[order], levir_polygons.attributes[name][want], rtol=1e-12)
    tol = 1e-12 if ext == ".geojson" else 0  # GeoJSON keeps 15 significant digits
    assert shapely.equals_exact(geoms[order], levir_polygons.geometries[want], tolerance=tol).all()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"changes{ext}"]  # no temporary left over


def test_geoparquet_round_trip(levir_polygons, tmp_path):
    dest = str(tmp_path / "changes.parquet")
    write(levir_polygons, dest)
    table = pq.read_table(dest)
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert CRS.from_json_dict(column["crs"]) == CRS.from_epsg(4326)
    assert column["bbox"] == pytest.approx(list(shapely.total_bounds(levir_polygons.geometries)))
    assert table.column_names == [*ATTRIBUTES, "geometry"]
    assert all(str(table.schema.field(n).type) == "double" for n in ATTRIBUTES)
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    assert shapely.equals_exact(geoms, levir_polygons.geometries, tolerance=0).all()
    if "Parquet" in pyogrio.list_drivers():  # GDAL built with Arrow reads it as a layer too
        assert pyogrio.read_info(dest)["features"] == 12


def test_ogrinfo_reads_the_geopackage_when_installed(levir_polygons, tmp_path):
    if shutil.which("ogrinfo") is None:
        pytest.skip("ogrinfo (GDAL's command-line tools) is not installed; the files are read back with pyogrio")
    dest = str(tmp_path / "changes.gpkg")
    write(levir_polygons, dest)
    out = subprocess.run(["ogrinfo", "-so", "-al", dest], capture_output=True, text=True, check=True).stdout
    assert "Feature Count: 12" in out and "area_m2: Real" in out


def test_remote_destination_and_empty_layer(tmp_path):
    wkt = CRS.from_epsg(32633).to_wkt()
    vector.write_vector("memory://vec/changes.fgb", [shapely.box(0, 0, 2, 2)], {"area_m2": [4.0]}, wkt)
    local = str(tmp_path / "copy.fgb")
    fs.download("memory://vec/changes.fgb", local)
    assert pyogrio.read_info(local)["features"] == 1
    vector.write_vector(str(tmp_path / "empty.gpkg"), [], {"area_m2": np.zeros(0)}, wkt)
    info = pyogrio.read_info(str(tmp_path / "empty.gpkg"))
    assert info["features"] == 0 and list(info["fields"]) == ["area_m2"]


def test_bad_extension_names_the_supported_ones(tmp_path):
    with pytest.raises(ChangemapError, match=r"'\.shp'.*\.gpkg, \.parquet, \.fgb, \.geojson"):
        vector.write_vector(str(tmp_path / "changes.shp"), [], {}, CRS.from_epsg(4326).to_wkt())
    with pytest.raises(ChangemapError, match="none"):
        vector.vector_format("s3://bucket/changes")
    assert vector.vector_format("s3://bucket/Changes.GPKG") == ".gpkg"
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(path, *args, **kwargs):
        open(path, "wb").write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(vector.pyogrio.raw, "write", broken)
    dest = tmp_path / "changes.gpkg"
    with pytest.raises(OSError, match="disk full"):
        vector.write_vector(str(dest), [shapely.box(0, 0, 1, 1)], {"area_m2": [1.0]}, CRS.from_epsg(4326).to_wkt())
    assert not dest.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="has 2 values for 1 geometries"):
        vector.write_vector(str(dest), [shapely.box(0, 0, 1, 1)], {"area_m2": [1.0, 2.0]}, "EPSG:4326")
