"""The one module for vector files: change polygons traced (GDAL polygonize) and written (GPKG, GeoParquet, FGB, GeoJSON).

GeoPackage, FlatGeobuf and GeoJSON go through GDAL's OGR drivers (pyogrio). GeoParquet is
written with pyarrow following the GeoParquet 1.1 specification (WKB geometry column, ``geo``
metadata with the CRS as PROJJSON), as geopandas does: the GDAL in pyogrio's wheels has no
Parquet driver. Every file is written locally under a temporary name and then published with
:func:`pipeline.io.fs.upload`, so a destination (path or fsspec URL) only ever holds a whole file.
FlatGeobuf files get GDAL's packed Hilbert R-tree (its default), which stores features in
spatial order rather than in the given one.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely
from affine import Affine
from pyproj import CRS

from pipeline import storage
from pipeline.errors import ChangemapError
from pipeline.io import fs

# Extension -> OGR driver (None: GeoParquet through pyarrow).
FORMATS: dict[str, str | None] = {".gpkg": "GPKG", ".parquet": None, ".fgb": "FlatGeobuf", ".geojson": "GeoJSON"}
GEOPARQUET_VERSION = "1.1.0"


def vector_format(dest: str) -> str:
    """The extension of ``dest`` if it is a supported vector format (check options with it before a run).

    Raises:
        ChangemapError: the extension is not one of :data:`FORMATS`.
    """
    ext = os.path.splitext(storage.basename(dest))[1].lower()
    if ext not in FORMATS:
        raise ChangemapError(
            f"cannot write polygons to {storage.redact_url(dest)}: the extension {ext or '(none)'!r} is not a "
            f"supported vector format; use one of {', '.join(FORMATS)}")
    return ext


def write_vector(dest: str, geometries: Sequence | np.ndarray, attributes: Mapping[str, np.ndarray], crs_wkt: str,
                 *, layer: str = "changes", metadata: Mapping[str, str] | None = None) -> None:
    """Write polygons with float64 attributes, format by extension, atomically.

    Args:
        dest: local path or fsspec URL ending in ``.gpkg``, ``.parquet``, ``.fgb`` or ``.geojson``.
        geometries: shapely Polygons in ``crs_wkt``.
        attributes: one array per attribute name, as long as ``geometries`` (stored as float64).
        crs_wkt: the geometries' CRS.
        layer: layer name (GeoPackage).
        metadata: text stamped on the layer where the format keeps it (GeoPackage and FlatGeobuf layer
            metadata, GeoParquet file metadata; GeoJSON has no place for it).

    Raises:
        ChangemapError: unsupported extension.
    """
    ext = vector_format(dest)
    geoms = np.asarray(geometries, dtype=object).reshape(-1)
    columns = {name: np.asarray(values, dtype=np.float64).reshape(-1) for name, values in attributes.items()}
    for name, values in columns.items():
        if len(values) != len(geoms):
            raise ValueError(f"attribute {name!r} has {len(values)} values for {len(geoms)} geometries")
    def write(local: str) -> None:
        Path(local).unlink(missing_ok=True)  # GDAL's drivers create their file; an empty one is no dataset
        if FORMATS[ext] is None:
            _write_geoparquet(local, geoms, columns, crs_wkt, metadata)
        else:
            kept = dict(metadata or {}) if ext != ".geojson" else None
            pyogrio.raw.write(local, shapely.to_wkb(geoms), list(columns.values()), list(columns), layer=layer,
                              driver=FORMATS[ext], geometry_type="Polygon", crs=crs_wkt, promote_to_multi=False,
                              layer_metadata=kept or None)

    fs.publish(dest, write)


def _write_geoparquet(path: str, geoms: np.ndarray, columns: dict[str, np.ndarray], crs_wkt: str,
                      metadata: Mapping[str, str] | None = None) -> None:
    """A GeoParquet 1.1 file (https://geoparquet.org/releases/v1.1.0/): WKB geometries, PROJJSON CRS, bbox."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    geometry_meta: dict = {"encoding": "WKB", "geometry_types": ["Polygon"] if len(geoms) else [],
                           "crs": CRS.from_wkt(crs_wkt).to_json_dict()}
    if len(geoms):
        geometry_meta["bbox"] = [float(v) for v in shapely.total_bounds(geoms)]
    table = pa.table({**{name: pa.array(values, pa.float64()) for name, values in columns.items()},
                      "geometry": pa.array(list(shapely.to_wkb(geoms)), pa.binary())})
    geo = {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": geometry_meta}}
    extra = {k.encode(): v.encode() for k, v in (metadata or {}).items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra, b"geo": json.dumps(geo).encode()})
    pq.write_table(table, path)


def read_metadata(path: str) -> dict[str, str]:
    """The layer metadata :func:`write_vector` stamped (empty for GeoJSON, or a file without any)."""
    fs_, local = fs.filesystem(path)
    if vector_format(path) == ".parquet":
        import pyarrow.parquet as pq

        with fs_.open(local, "rb") as f:
            meta = pq.read_schema(f).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items() if k not in (b"geo", b"ARROW:schema")}
    with fs_.open(local, "rb") as f:
        info = pyogrio.read_info(f)
    return dict(info.get("layer_metadata") or {})


def shapes(labels: np.ndarray, transform: tuple[float, float, float, float, float, float],
           connectivity: int = 4) -> Iterator[tuple[dict, int]]:
    """Polygons of the labelled (non-zero) regions of an integer image, as GeoJSON-like dicts.

    A thin wrapper over ``rasterio.features.shapes`` (GDAL's ``GDALPolygonize``): one polygon,
    holes kept, per region of equal value that is connected under ``connectivity`` (4 or 8).

    Args:
        labels: ``(h, w)`` int32 (or smaller) labels, 0 = background (left out).
        transform: GDAL-order affine of the image's pixel grid (identity gives pixel coordinates).
        connectivity: 4 (edge neighbours) or 8 (edges and corners).

    Yields:
        ``(geometry, value)`` pairs.
    """
    from rasterio.features import shapes as _shapes

    labels = np.ascontiguousarray(labels, dtype=np.int32)
    for geom, value in _shapes(labels, mask=labels != 0, connectivity=connectivity, transform=Affine(*transform)):
        yield geom, int(value)

