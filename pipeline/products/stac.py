"""STAC metadata for change maps (pystac): one Item per map, one Collection per archive.

An Item's footprint is the map grid's outline, densified and transformed to WGS 84 (EPSG:4326,
as STAC requires) with pyproj; the projection extension records the grid itself. Files are
written through :func:`pipeline.io.fs.write_text`, so each JSON document appears whole at a
path or fsspec URL.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pystac
from pyproj import CRS, Transformer
from pystac.extensions.projection import ProjectionExtension

from pipeline import storage
from pipeline.errors import ChangemapError
from pipeline.grid import Grid
from pipeline.io import fs
from pipeline.io.items import is_item

PREFIX = "changemap"
_MEDIA_TYPES = {
    ".tif": pystac.MediaType.COG, ".gpkg": pystac.MediaType.GEOPACKAGE, ".parquet": pystac.MediaType.PARQUET,
    ".fgb": pystac.MediaType.FLATGEOBUF, ".geojson": pystac.MediaType.GEOJSON, ".json": pystac.MediaType.JSON,
    ".png": pystac.MediaType.PNG,
}
_ROLES = {"polygons": ["data"], "statistics": ["metadata"], "thumbnail": ["thumbnail", "overview"]}


def footprint(grid: Grid, points_per_side: int = 21) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline in EPSG:4326 as a GeoJSON Polygon, and its bbox (west, south, east, north).

    Each side is densified so that curved edges in WGS 84 keep their shape (as GDAL's
    ``transform_bounds`` does). Grids crossing the antimeridian are not split.
    """
    t = np.linspace(0, 1, points_per_side)[:-1]
    w, h = grid.width, grid.height
    cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    a, b, c, d, e, f = grid.transform
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    to_wgs84 = Transformer.from_crs(CRS.from_wkt(grid.crs_wkt), CRS.from_epsg(4326), always_xy=True)
    lon, lat = to_wgs84.transform(xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat)]
    if _signed_area(ring) < 0:
        ring.reverse()  # RFC 7946: exterior rings counter-clockwise
    ring.append(ring[0])
    bbox = [float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat))]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _signed_area(ring: list[list[float]]) -> float:
    x, y = np.asarray(ring).T
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def _asset(url: str, role: str) -> pystac.Asset:
    ext = os.path.splitext(storage.basename(url))[1].lower()
    return pystac.Asset(href=url, media_type=_MEDIA_TYPES.get(ext), roles=_ROLES.get(role, [role]))


def map_item(cog_url: str, grid: Grid, *, before: str, after: str, model: str, weights_sha256: str | None,
             threshold: float, stats: Mapping[str, Any] | None = None, assets: Mapping[str, str] | None = None,
             item_id: str | None = None, datetime: dt.datetime | None = None,
             start_datetime: dt.datetime | None = None, end_datetime: dt.datetime | None = None) -> pystac.Item:
    """A STAC Item describing one change map.

    Args:
        cog_url: the change-probability COG (asset ``data``).
        grid: the map's grid (footprint, bbox, projection extension).
        before: BEFORE's path or URL (stored without credentials); a STAC Item is also linked
            (``derived_from``).
        after: AFTER's path or URL.
        model: model name.
        weights_sha256: SHA-256 of the weights file.
        threshold: the probability threshold used for polygons and statistics.
        stats: scene statistics (:func:`pipeline.products.mapstats.ChangeStatistics.result`), stored as
            ``changemap:<key>`` properties.
        assets: more assets by key: ``polygons``, ``statistics``, ``thumbnail`` (the quicklook
            PNG) or any other key (its role is the key).
        item_id: the Item id (default: the COG's file name without extension).
        datetime: the Item's datetime (default: now, UTC) when no start/end is given.
        start_datetime: with ``end_datetime``: the period the map covers (e.g. BEFORE's and
            AFTER's acquisition times); the Item's datetime is then null.
        end_datetime: see ``start_datetime``.
    """
    geometry, bbox = footprint(grid)
    now = dt.datetime.now(dt.timezone.utc)
    if (start_datetime is None) != (end_datetime is None):
        raise ValueError("give both start_datetime and end_datetime, or neither")
    properties: dict[str, Any] = {
        "created": pystac.utils.datetime_to_str(now),
        f"{PREFIX}:model": model, f"{PREFIX}:weights_sha256": weights_sha256, f"{PREFIX}:threshold": float(threshold),
        f"{PREFIX}:before": storage.redact_url(before), f"{PREFIX}:after": storage.redact_url(after),
    }
    properties.update({f"{PREFIX}:{k}": v for k, v in (stats or {}).items() if k != "threshold"})
    item = pystac.Item(
        id=item_id or os.path.splitext(storage.basename(cog_url))[0], geometry=geometry, bbox=bbox,
        datetime=None if start_datetime else (datetime or now), properties=properties,
        start_datetime=start_datetime, end_datetime=end_datetime)
    for source in (before, after):  # STAC best practice: a derived product links the Items it was made from
        if is_item(source):
            item.add_link(pystac.Link("derived_from", storage.redact_url(storage.absolute(source)),
                                      media_type=pystac.MediaType.JSON))
    item.add_asset("data", pystac.Asset(href=cog_url, media_type=pystac.MediaType.COG, roles=["data"],
                                       title="change probability"))
    for key, url in (assets or {}).items():
        item.add_asset(key, _asset(url, key))
    crs = CRS.from_wkt(grid.crs_wkt)
    epsg = crs.to_epsg()
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg else crs.to_wkt(),
        shape=[grid.height, grid.width], transform=[float(v) for v in grid.transform], bbox=list(grid.bounds))
    return item


def write_item(item: pystac.Item, dest: str) -> None:
    """Write an Item as JSON at a path or fsspec URL (its self link set to ``dest``), atomically."""
    item.set_self_href(dest)
    fs.write_text(dest, json.dumps(item.to_dict(include_self_link=True, transform_hrefs=False), indent=2) + "\n")


def read_item(url: str) -> pystac.Item:
    """An Item read back from its JSON at a path or fsspec URL."""
    item = pystac.Item.from_dict(json.loads(fs.read_text(url)), href=url, preserve_dict=False)
    item.set_self_href(url)
    return item


def archive_collection(items: Iterable[pystac.Item], dest_prefix: str, *, collection_id: str = "changemap",
                       description: str = "Change-probability maps of bitemporal image pairs (changemap).",
                       license: str = "other") -> pystac.Collection:
    """A self-contained Collection of one Item per pair, written under ``dest_prefix``.

    Layout (pystac's best practices): ``<prefix>/collection.json`` and
    ``<prefix>/<item id>/<item id>.json``, with relative links, so the folder can be moved or
    published as is. Items are written first, the collection last. The given Items are cloned,
    not changed.

    Raises:
        ChangemapError: two Items share an id, or there is none.
    """
    items = [item.clone() for item in items]
    ids = [item.id for item in items]
    if not items or len(set(ids)) != len(ids):
        raise ChangemapError(f"a collection needs at least one item and unique item ids; got {ids}")
    boxes = np.asarray([item.bbox for item in items], dtype=np.float64)
    times = [t for item in items for t in (item.datetime, item.common_metadata.start_datetime,
                                           item.common_metadata.end_datetime) if t is not None]
    extent = pystac.Extent(
        pystac.SpatialExtent([[*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)]]),
        pystac.TemporalExtent([[min(times), max(times)]]))
    collection = pystac.Collection(collection_id, description, extent, license=license,
                                   catalog_type=pystac.CatalogType.SELF_CONTAINED)
    collection.add_items(items)
    collection.normalize_hrefs(dest_prefix)
    for item in items:
        fs.write_text(item.get_self_href(), json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    fs.write_text(collection.get_self_href(),
                  json.dumps(collection.to_dict(include_self_link=False), indent=2) + "\n")
    return collection
