"""A STAC Item is a date: its band assets read as one multi-band float32 image on a grid.

A pair's BEFORE or AFTER may be a STAC Item (a JSON file, any fsspec URL, or a STAC API item
endpoint) instead of a raster. :func:`load_item` reads the Item and decides which assets are
the bands, their scale/offset/nodata, the grid (the finest chosen band's) and the cloud mask
asset; the result, :class:`ItemDate`, is a small picklable value that travels to Ray workers.
:class:`ItemReader` then reads windows of it on any grid, one band file (COG) per asset,
through :func:`pipeline.io.raster._rio` (so the run's storage options reach GDAL).

Specifications: STAC Item 1.0/1.1 (https://github.com/radiantearth/stac-spec), the ``eo``
(bands, common names), ``raster`` (scale, offset, nodata) and ``projection`` (proj:shape,
proj:transform, proj:epsg/proj:code/proj:wkt2) extensions (https://github.com/stac-extensions).
"""
from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import numpy as np
from pystac.utils import str_to_datetime
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from pipeline import storage
from pipeline.errors import (
    InputAccessDeniedError,
    InputRasterError,
    InputStorageError,
    InputUnreachableError,
    MissingRasterError,
    one_paragraph,
    storage_failure,
)
from pipeline.grid import Grid, RasterInfo
from pipeline.io import fs
from pipeline.io.raster import _READ_ERRORS, _all_valid, _failure, _rio, same_crs
from pipeline.io.raster import read_info as read_raster_info

ITEM_SUFFIXES = (".json", ".geojson")
# A STAC API's item endpoint (OGC API Features): .../collections/{collection}/items/{id}, no extension.
_API_ITEM = re.compile(r"/collections/[^/]+/items/[^/]+/?$")

# Sentinel-2 scene classification (SCL) classes that are not a clear view of the ground:
# 0 no data, 1 saturated or defective, 3 cloud shadow, 8 cloud medium probability,
# 9 cloud high probability, 10 thin cirrus (ESA, Sentinel-2 L2A Product Definition / Sen2Cor
# Software User Manual, scene classification map). 2 (dark area), 7 (unclassified) and 11
# (snow) stay valid: they are ground.
SCL_INVALID = (0, 1, 3, 8, 9, 10)
# Landsat Collection 2 QA_PIXEL bits that are not a clear view: 0 fill, 1 dilated cloud,
# 2 cirrus, 3 cloud, 4 cloud shadow (USGS, Landsat 8-9 OLI/TIRS C2 L2 Data Format Control Book, LSDS-1619).
QA_PIXEL_INVALID_BITS = 0b11111
_MASK_KINDS = {"scl": "scl", "qa_pixel": "qa_pixel"}  # asset key (lower case) -> kind
# Where a mask asset has no pixel on the grid (outside its footprint) the warp fills this value: invalid.
_MASK_FILL = {"scl": 0, "qa_pixel": 1}

# Sentinel-2 processing baseline 04.00 (25 January 2022) shifts L2A (and L1C) digital numbers by
# BOA_ADD_OFFSET (RADIO_ADD_OFFSET) = -1000: reflectance = (DN + BOA_ADD_OFFSET) / 10000.
S2_BASELINE_SHIFT = (4, 0)
S2_ADD_OFFSET = -1000.0

# Center wavelengths (micrometres) of the eo extension's common band names, to order bands whose
# eo:bands give no center_wavelength (eo extension v1.1, "Common Band Names").
_COMMON_WAVELENGTH = {
    "coastal": 0.443, "blue": 0.49, "green": 0.56, "yellow": 0.6, "pan": 0.6, "red": 0.665, "rededge": 0.72,
    "rededge071": 0.705, "rededge075": 0.74, "rededge078": 0.783, "nir": 0.842, "nir08": 0.865, "nir09": 0.945,
    "cirrus": 1.375, "swir16": 1.61, "swir22": 2.19, "lwir": 11.5, "lwir11": 10.9, "lwir12": 12.0,
}
# Assets that are never a default band: masks, pictures, metadata, atmosphere by-products.
_NOT_BANDS_KEYS = {"scl", "qa_pixel", "qa_radsat", "qa_aerosol", "qa", "aot", "wvp", "visual", "tci", "thumbnail",
                   "preview", "rendered_preview", "overview", "cloud", "snow", "granule_metadata", "tileinfo_metadata",
                   "product_metadata", "mtl.txt", "mtl.xml", "mtl.json", "ang", "safe-manifest", "datastrip-metadata"}
_NOT_BANDS_ROLES = {"visual", "thumbnail", "overview", "metadata", "cloud", "cloud-shadow", "snow-ice", "water-mask",
                    "land-water", "saturation", "data-mask", "classification", "temperature"}
_NOT_REFLECTANCE_NAMES = {"aot", "wvp", "scl"}


class ItemError(InputRasterError):
    """A STAC Item that cannot be used as a date (not an Item, a band it lacks, no grid)."""


@dataclass(frozen=True)
class BandAsset:
    """One band of an Item: where it is and how its digital numbers become values.

    ``value = (DN + dn_offset) * scale + offset``; ``dn_offset`` is the Sentinel-2 baseline
    harmonisation (see :func:`load_item`), ``band`` the 1-based band of the asset's file.
    """

    key: str
    href: str
    common_name: str | None
    scale: float
    offset: float
    nodata: float | None
    gsd: float | None
    dn_offset: float = 0.0
    band: int = 1


@dataclass(frozen=True)
class MaskAsset:
    """The Item's cloud mask: Sentinel-2 ``scl`` classes or Landsat ``qa_pixel`` bits."""

    key: str
    href: str
    kind: str  # "scl" | "qa_pixel"


@dataclass(frozen=True)
class ItemDate:
    """A STAC Item chosen as one date of a pair (picklable: it travels to Ray workers)."""

    url: str
    id: str
    datetime: datetime
    bands: tuple[BandAsset, ...]
    grid: Grid
    mask: MaskAsset | None
    cloud_mask: bool
    baseline_offset: float  # the DN shift applied to its reflectance bands (0 or -1000), see load_item
    properties: dict[str, Any] = field(default_factory=dict, hash=False)  # cloud cover, tile, relative orbit, platform


def sign_href(href: str) -> str:
    """An asset href signed for reading now, where its host needs it (the Planetary Computer's blob storage).

    Signed through the ``planetary-computer`` package when it is installed (``pip install
    changemap[pc]``); it caches a token per container and renews it shortly before it expires,
    so a reader opened late in a long run gets a valid one. Other hrefs are returned as they are.
    """
    if ".blob.core.windows.net" not in href or "?" in href:
        return href
    try:
        import planetary_computer
    except ImportError:
        return href
    return planetary_computer.sign(href)


def is_item(url: str) -> bool:
    """Whether a path or URL names a STAC Item (``.json``/``.geojson``, or a STAC API item endpoint)."""
    path = urlsplit(url).path if "://" in url else url
    if path.lower().endswith(ITEM_SUFFIXES):
        return True
    return storage.protocol(url) == "http" and bool(_API_ITEM.search(path))


def resolve_href(href: str, base: str) -> str:
    """An asset or link href made absolute against the URL (or path) of the document that holds it."""
    if "://" in href:
        return href
    if "://" not in base:  # a local document: a local path
        return href if href.startswith("/") else posixpath.normpath(posixpath.join(posixpath.dirname(storage.absolute(base)), href))
    if storage.protocol(base) == "http":
        return urljoin(base, href)
    parts = urlsplit(base)  # s3://bucket/key, gs://, memory://: urljoin knows only web schemes
    path = href if href.startswith("/") else posixpath.join(posixpath.dirname(parts.path), href)
    return urlunsplit((parts.scheme, parts.netloc, posixpath.normpath(path), "", ""))


# ---------------------------------------------------------------- reading the Item JSON


def read_json(url: str, what: str) -> dict:
    """A small JSON document at a path or URL, with one-paragraph errors for each way it can fail.

    Args:
        url: local path or fsspec/HTTP URL.
        what: how messages name it (``STAC item``, ``STAC catalog``).
    """
    shown = storage.redact_url(url)
    try:
        text = fs.read_text(url)
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types; classify by what they say
        raise _read_failure(exc, url, what) from None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ItemError(f"{what} {shown} is not JSON ({getattr(exc, 'msg', exc)}); give the URL of the STAC JSON "
                        "document itself (not a web page or a raster)") from None
    if not isinstance(value, dict):
        raise ItemError(f"{what} {shown} is JSON but not a JSON object; give the URL of a STAC document")
    return value


def _chain(exc: BaseException) -> str:
    """An exception and its causes, in words: fsspec's HTTP filesystem says FileNotFoundError for a refused connection."""
    said: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(said) < 4:
        seen.add(id(exc))
        said.append(one_paragraph(f"{type(exc).__name__}: {exc}"))
        exc = exc.__cause__ or exc.__context__
    return storage.scrub("; ".join(said))[:300]


def _read_failure(exc: BaseException, url: str, what: str) -> InputRasterError:
    shown = storage.redact_url(url)
    detail = _chain(exc)
    kind = storage_failure(detail) or ("missing" if isinstance(exc, FileNotFoundError) else None)
    if "unexpected keyword argument" in detail:  # options for one protocol (S3 keys) handed to another (HTTP)
        keys = ", ".join(storage.installed().keys())
        return InputRasterError(
            f"{what} {shown} cannot be read with the storage options given (keys: {keys}), which apply to every protocol "
            f"and do not fit {storage.protocol(url)}:// ({detail}); give --storage-options per protocol, e.g. "
            '{"s3": {"key": ..., "secret": ..., "endpoint_url": ...}}')
    if kind == "unreachable":
        return InputUnreachableError(f"{what} {shown} cannot be read: its server cannot be reached ({detail}); check the "
                                     "host and port (or endpoint_url in --storage-options), that the server is up, and the network")
    if kind == "denied":
        return InputAccessDeniedError(f"{what} {shown} is not readable with the given credentials ({detail}); check the "
                                      "credentials (environment, profile or --storage-options) and the permissions")
    if kind == "missing":
        return MissingRasterError(f"{what} {shown} does not exist ({detail}); check the path or URL")
    if kind == "server":
        return InputStorageError(f"{what} {shown} cannot be read: the server answered with an error ({detail}); try again later")
    return InputRasterError(f"{what} {shown} cannot be read ({detail}); check the path or URL")


def _check_item(d: dict, url: str) -> None:
    shown = storage.redact_url(url)
    kind = d.get("type")
    if kind == "Feature" and isinstance(d.get("assets"), dict):
        return
    if kind in ("Collection", "Catalog"):
        what = f"a STAC {kind} ({d.get('id', '?')})"
    elif kind == "FeatureCollection":
        what = f"a FeatureCollection of {len(d.get('features') or [])} items"
    elif kind == "Feature":
        what = "a GeoJSON Feature without STAC assets"
    else:
        what = f"a JSON document of type {kind!r}" if kind else "a JSON document without a 'type'"
    raise ItemError(f"STAC item {shown} is {what}, not a STAC Item; give the URL of one Item's JSON (search a catalog "
                    "with `changemap search` to list them)")


# ---------------------------------------------------------------- bands


def _band_infos(asset: dict) -> list[dict]:
    """The bands of an asset as ``{name, common_name, center_wavelength}`` (eo:bands of STAC 1.0, bands of 1.1)."""
    out = []
    if isinstance(asset.get("eo:bands"), list):
        for b in asset["eo:bands"]:
            b = b or {}
            out.append({"name": b.get("name"), "common_name": b.get("common_name"),
                        "center_wavelength": b.get("center_wavelength")})
    elif isinstance(asset.get("bands"), list):
        for b in asset["bands"]:
            b = b or {}
            out.append({"name": b.get("name"), "common_name": b.get("eo:common_name"),
                        "center_wavelength": b.get("eo:center_wavelength")})
    elif asset.get("eo:common_name") or asset.get("eo:center_wavelength"):  # STAC 1.1, one band: fields on the asset
        out.append({"name": None, "common_name": asset.get("eo:common_name"),
                    "center_wavelength": asset.get("eo:center_wavelength")})
    return out


def _raster_band(asset: dict, index: int) -> dict:
    """Scale, offset and nodata of band ``index`` (0-based): raster:bands (1.0), bands[] or asset fields (1.1)."""
    found: dict[str, Any] = {}
    rb = asset.get("raster:bands")
    if isinstance(rb, list) and len(rb) > index and isinstance(rb[index], dict):
        found = {k: rb[index].get(k) for k in ("scale", "offset", "nodata", "spatial_resolution")}
    bands = asset.get("bands")
    if isinstance(bands, list) and len(bands) > index and isinstance(bands[index], dict):
        b = bands[index]
        for k in ("scale", "offset", "spatial_resolution"):
            if found.get(k) is None:
                found[k] = b.get(f"raster:{k}")
        if found.get("nodata") is None:
            found["nodata"] = b.get("nodata")
    for k in ("scale", "offset", "spatial_resolution"):
        if found.get(k) is None:
            found[k] = asset.get(f"raster:{k}")
    if found.get("nodata") is None:
        found["nodata"] = asset.get("nodata")
    return found


def _number(value: Any, default: float | None) -> float | None:
    if value is None:
        return default
    if isinstance(value, str):  # raster extension: "nan", "inf", "-inf"
        try:
            return float(value)
        except ValueError:
            return default
    return float(value)


def _is_cog(asset: dict) -> bool:
    media = str(asset.get("type") or "").lower()
    return "tiff" in media if media else urlsplit(str(asset.get("href", ""))).path.lower().endswith((".tif", ".tiff"))


def _wavelength(info: dict) -> float | None:
    wl = info.get("center_wavelength")
    if isinstance(wl, (int, float)):
        return float(wl)
    return _COMMON_WAVELENGTH.get(str(info.get("common_name") or "").lower())


def _is_spectral(key: str, asset: dict) -> bool:
    """Whether an asset is a default band: a raster with spectral band info, not a mask/picture/by-product."""
    roles = {str(r).lower() for r in asset.get("roles") or []}
    if key.lower() in _NOT_BANDS_KEYS or key.lower().endswith("-jp2") or roles & _NOT_BANDS_ROLES:
        return False
    if not _is_cog(asset):
        return False
    infos = _band_infos(asset)
    return "reflectance" in roles or any(i.get("common_name") or i.get("center_wavelength") for i in infos)


def _default_choices(assets: dict[str, dict], default_bands: int | None, item_id: str, url: str) -> list[tuple[str, int]]:
    """The bands used when none are asked for (see :func:`load_item`)."""
    if default_bands == 3:
        return [_match(assets, name, item_id, url)[0] for name in ("red", "green", "blue")]
    spectral = [k for k, a in assets.items() if _is_spectral(k, a)]
    if any("reflectance" in (assets[k].get("roles") or []) for k in spectral):
        spectral = [k for k in spectral if "reflectance" in (assets[k].get("roles") or [])]
    choices: list[tuple[float, str, int]] = []
    seen: set[tuple[str, float | None]] = set()
    for key in sorted(spectral):
        infos = _band_infos(assets[key]) or [{}]
        for i, info in enumerate(infos):
            wl = _wavelength(info)
            name = info.get("name") or info.get("common_name")
            ident = (str(name).lower() if name else f"{key}#{i + 1}", wl)  # 3 'rededge' bands differ by wavelength
            if ident in seen:  # the same band offered twice (another format of one band)
                continue
            seen.add(ident)
            choices.append((wl if wl is not None else math.inf, key, i))
    if not choices:
        raise ItemError(f"STAC item {item_id} ({storage.redact_url(url)}) has no spectral band asset (assets: "
                        f"{', '.join(sorted(assets)) or 'none'}); name the assets to read with --assets")
    return [(key, i) for _, key, i in sorted(choices)]


def _match(assets: dict[str, dict], name: str, item_id: str, url: str) -> list[tuple[str, int]]:
    """The (asset key, band index) pairs a requested name means: asset key first, then eo common name or band name."""
    if name in assets:
        n = max(1, len(_band_infos(assets[name])))
        return [(name, i) for i in range(n)]
    lowered = {k.lower(): k for k in assets}
    if name.lower() in lowered:
        key = lowered[name.lower()]
        return [(key, i) for i in range(max(1, len(_band_infos(assets[key]))))]
    found = [(k, i) for k, a in sorted(assets.items()) for i, info in enumerate(_band_infos(a))
             if name.lower() in (str(info.get("common_name") or "").lower(), str(info.get("name") or "").lower())]
    # The same band in several assets: a band file over a picture (visual/TCI lists red, green, blue too),
    # a GeoTIFF over another format (Earth Search: red and red-jp2).
    for better in (lambda f: _is_spectral(f[0], assets[f[0]]), lambda f: _is_cog(assets[f[0]])):
        if len(found) > 1:
            found = [f for f in found if better(f)] or found
    if len(found) > 1:
        raise ItemError(f"STAC item {item_id} ({storage.redact_url(url)}) has several assets with a band {name!r} "
                        f"({', '.join(k for k, _ in found)}); name the one to read by its asset key")
    if not found:
        raise ItemError(f"STAC item {item_id} ({storage.redact_url(url)}) has no asset or band {name!r}; {_offer(assets)}; "
                        "pass --assets with those names")
    return found


def _offer(assets: dict[str, dict]) -> str:
    common = sorted({str(i["common_name"]) for a in assets.values() for i in _band_infos(a) if i.get("common_name")})
    names = sorted({str(i["name"]) for a in assets.values() for i in _band_infos(a) if i.get("name")})
    text = f"its assets are {', '.join(sorted(assets)) or 'none'}"
    if common:
        text += f", its common band names {', '.join(common)}"
    if names:
        text += f", its band names {', '.join(names)}"
    return text


# ---------------------------------------------------------------- radiometry (Sentinel-2 baseline 04.00)


def _baseline(props: dict) -> tuple[int, ...] | None:
    value = props.get("s2:processing_baseline", props.get("sentinel:processing_baseline"))
    try:
        return tuple(int(p) for p in str(value).split(".")) if value is not None else None
    except ValueError:
        return None


def _offset_applied(props: dict) -> bool | None:
    for key in ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied"):
        if isinstance(props.get(key), bool):
            return props[key]
    return None


def _radiometry(props: dict, key: str, info: dict, listed_offset: float | None) -> tuple[float, float]:
    """``(dn_offset, offset)`` of one band: the Sentinel-2 baseline rule of :func:`load_item`."""
    offset = listed_offset or 0.0
    baseline = _baseline(props)
    names = {key.lower(), str(info.get("name") or "").lower(), str(info.get("common_name") or "").lower()}
    if baseline is None or baseline < S2_BASELINE_SHIFT or names & _NOT_REFLECTANCE_NAMES:
        return 0.0, offset
    applied = _offset_applied(props)
    if applied:  # Earth Search already subtracted 1000 from the pixels; its raster:bands offset (-0.1) is stale
        return 0.0, 0.0
    if listed_offset:  # the raster extension's offset says it (-1000 * 0.0001 = -0.1): apply it once, as given
        return 0.0, offset
    return S2_ADD_OFFSET, offset  # raw DNs without a stated offset (Planetary Computer): subtract it here


# ---------------------------------------------------------------- grid


def _crs_wkt(fields: dict) -> str | None:
    try:
        if fields.get("proj:wkt2"):
            return CRS.from_wkt(fields["proj:wkt2"]).to_wkt()
        if fields.get("proj:code"):
            return CRS.from_user_input(fields["proj:code"]).to_wkt()
        if fields.get("proj:epsg"):
            return CRS.from_epsg(int(fields["proj:epsg"])).to_wkt()
        if fields.get("proj:projjson"):
            return CRS.from_user_input(json.dumps(fields["proj:projjson"])).to_wkt()
    except (CRSError, ValueError, TypeError):
        return None
    return None


def _meta_grid(asset: dict, props: dict, gsd: float | None) -> Grid | None:
    """A band's grid from the projection extension (asset fields over Item fields), or None if incomplete.

    Item-level shape and transform describe the Item's main grid: an asset whose ``gsd`` differs
    (a 20 m band of a 10 m Item without its own proj fields) gets None, and its header is read.
    """
    def get(k: str) -> Any:
        return asset[k] if asset.get(k) is not None else props.get(k)

    wkt = _crs_wkt({k: get(k) for k in ("proj:wkt2", "proj:code", "proj:epsg", "proj:projjson")})
    shape, transform, bbox = get("proj:shape"), get("proj:transform"), get("proj:bbox")
    if wkt is None or not isinstance(shape, (list, tuple)) or len(shape) != 2:
        return None
    height, width = int(shape[0]), int(shape[1])
    if isinstance(transform, (list, tuple)) and len(transform) in (6, 9):
        t = tuple(float(v) for v in transform[:6])
    elif isinstance(bbox, (list, tuple)) and len(bbox) == 4 and width and height:
        left, bottom, right, top = (float(v) for v in bbox)
        t = ((right - left) / width, 0.0, left, 0.0, -(top - bottom) / height, top)
    else:
        return None
    grid = Grid(wkt, t, width, height)  # type: ignore[arg-type]
    own = asset.get("proj:shape") is not None and (asset.get("proj:transform") or asset.get("proj:bbox")) is not None
    if not own and gsd and abs(grid.resolution[0] - gsd) > 1e-6 * gsd:
        return None
    return grid


def _finest(grids: list[Grid]) -> Grid:
    """The grid with the smallest pixels (the first of equals)."""
    return min(grids, key=lambda g: g.resolution[0] * g.resolution[1])


def same_grid(a: Grid, b: Grid) -> bool:
    """Whether two grids are the same pixels (CRS, shape, transform within a millionth of a pixel)."""
    tol = 1e-6 * max(b.resolution)
    return ((a.width, a.height) == (b.width, b.height) and all(abs(p - q) <= tol for p, q in zip(a.transform, b.transform))
            and (a.crs_wkt == b.crs_wkt or same_crs(a.crs_wkt, b.crs_wkt)))


# ---------------------------------------------------------------- load_item


def _tile(props: dict) -> str | None:
    code = props.get("grid:code")
    if isinstance(code, str) and code:
        return "T" + code[5:] if code.upper().startswith("MGRS-") else code
    if props.get("s2:mgrs_tile"):
        return f"T{props['s2:mgrs_tile']}"
    if props.get("landsat:wrs_path") is not None and props.get("landsat:wrs_row") is not None:
        return f"WRS2-{int(props['landsat:wrs_path']):03d}{int(props['landsat:wrs_row']):03d}"
    return None


_ORBIT_IN_PRODUCT = re.compile(r"_R(\d{3})_")


def relative_orbit(props: dict) -> int | None:
    """The relative orbit: ``sat:relative_orbit``, Sentinel-2's ``_Rnnn_`` in its product name, or Landsat's WRS path."""
    if props.get("sat:relative_orbit") is not None:
        return int(props["sat:relative_orbit"])
    for key in ("s2:product_uri", "s2:product_id", "s2:granule_id"):
        m = _ORBIT_IN_PRODUCT.search(str(props.get(key) or ""))
        if m:
            return int(m.group(1))
    if props.get("landsat:wrs_path") is not None:
        return int(props["landsat:wrs_path"])
    return None


def cloud_cover(props: dict) -> float | None:
    """The Item's cloud cover in percent: ``eo:cloud_cover``, else Landsat's ``landsat:cloud_cover_land``."""
    for key in ("eo:cloud_cover", "landsat:cloud_cover_land"):
        value = props.get(key)
        if isinstance(value, (int, float)) and value >= 0:  # Landsat writes -1 for "not computed"
            return float(value)
    return None


def tile_of(props: dict) -> str | None:
    """The Item's tile label for pair ids and reports (``T33UVP``, ``WRS2-044034``), if its metadata names one."""
    return _tile(props)


def _mask_asset(assets: dict[str, dict], base: str) -> MaskAsset | None:
    for key in sorted(assets):
        kind = _MASK_KINDS.get(key.lower())
        if kind:
            return MaskAsset(key, resolve_href(str(assets[key]["href"]), base), kind)
    return None


def _band_asset(asset: dict, key: str, index: int, props: dict, base: str, item_id: str) -> tuple[BandAsset, Grid]:
    """Band ``index`` (0-based) of an Item's asset: how it is read (href, scale, offsets) and its grid."""
    infos = _band_infos(asset)
    info = infos[index] if index < len(infos) else {}
    rb = _raster_band(asset, index)
    dn_offset, offset = _radiometry(props, key, info, _number(rb.get("offset"), None))
    href = resolve_href(str(asset["href"]), base)
    gsd = _number(asset.get("gsd", rb.get("spatial_resolution")), None)
    grid = _meta_grid(asset, props, gsd)
    if grid is None:  # no (fitting) projection metadata: the file's header says
        grid = read_raster_info(href, f"asset {key!r} of STAC item {item_id}:").grid
    band = BandAsset(key=key, href=href, common_name=info.get("common_name"), scale=_number(rb.get("scale"), 1.0),
                     offset=offset, nodata=_number(rb.get("nodata"), None), gsd=gsd or grid.resolution[0],
                     dn_offset=dn_offset, band=index + 1)
    return band, grid


def load_item(url: str, assets: Sequence[str] | None = None, *, cloud_mask: bool = False,
              default_bands: int | None = None) -> ItemDate:
    """Read a STAC Item and decide how it is read as one multi-band image.

    Bands: ``assets`` names asset keys or band names (matched on the key first, then on
    ``eo:bands[].common_name``/``name``, or STAC 1.1 ``bands[]`` with ``eo:common_name``);
    an asset with several bands gives all of them. Without ``assets``: ``red, green, blue``
    when ``default_bands == 3``, else every spectral band (a GeoTIFF asset with eo band info
    or the ``reflectance`` role; not masks, visual/TCI, thumbnails, metadata, AOT/WVP, other
    formats of a band), ordered by center wavelength (eo's common-name wavelengths where
    ``center_wavelength`` is absent), then asset key.

    Values: ``(DN + dn_offset) * scale + offset`` with scale/offset from ``raster:bands``
    (STAC 1.0) or ``raster:scale``/``raster:offset`` (1.1), default 1 and 0. Sentinel-2
    processing baseline >= 04.00 (``s2:processing_baseline``) stores ``DN = 10000 * reflectance
    + 1000`` (ESA: L2A_BOA = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE, BOA_ADD_OFFSET =
    -1000; Copernicus Sentinel-2 "major products upgrade", Jan 2022). So that a pair across
    the change shows no false change, reflectance bands of such items are harmonised to the old
    radiometry:

    * ``earthsearch:boa_offset_applied: true`` (Earth Search already subtracted 1000 from the
      pixels): nothing more, and the ``raster:bands`` offset is ignored: Earth Search keeps
      -0.1 there although the offset is applied, and its maintainers say the flag is the truth
      (Element84/earth-search#9, microsoft/PlanetaryComputer#349);
    * flag false or absent, and a non-zero ``raster:bands`` offset (Earth Search, Copernicus
      Data Space: -0.1 = -1000 x 0.0001): that offset is the harmonisation; applied once;
    * flag false or absent and no offset (Planetary Computer: no ``raster:bands``, raw DNs;
      microsoft/PlanetaryComputer#134): ``dn_offset = -1000``.

    Items whose flag is wrong (Element84/earth-search#66, #71; cirrus-geo/cirrus-earth-search#33)
    cannot be told from their metadata and are read as their metadata says. Baselines below
    04.00, AOT/WVP/SCL and non-Sentinel-2 items are read as listed.

    Grid: the finest chosen band's, from ``proj:shape`` + ``proj:transform`` (or ``proj:bbox``)
    + ``proj:code``/``proj:epsg``/``proj:wkt2`` on the asset or the Item, else from the file's header.

    Args:
        url: the Item's JSON (path, any fsspec URL, or a STAC API item URL); relative asset
            hrefs are resolved against it.
        assets: asset keys or band names to read, in this order.
        cloud_mask: mask clouds, shadows and no data with the Item's ``scl`` or ``qa_pixel`` asset.
        default_bands: the number of bands a model expects (3: red, green, blue), used when
            ``assets`` is not given.

    Raises:
        ItemError: not a STAC Item, an asked band it lacks, no mask asset for ``cloud_mask``.
        InputRasterError: the Item's JSON (or a band header) cannot be read; subclasses say why.
    """
    d = read_json(url, "STAC item")
    _check_item(d, url)
    item_id = str(d.get("id") or storage.basename(url))
    props = d.get("properties") or {}
    raw_assets = {k: a for k, a in d["assets"].items() if isinstance(a, dict) and a.get("href")}
    base = url  # relative hrefs are relative to where the JSON was read (a copied Item's self link may be stale)
    if assets:
        choices = [c for name in assets for c in _match(raw_assets, str(name), item_id, url)]
    else:
        choices = _default_choices(raw_assets, default_bands, item_id, url)

    read_as = [_band_asset(raw_assets[key], key, index, props, base, item_id) for key, index in choices]
    bands, grids = [band for band, _ in read_as], [grid for _, grid in read_as]
    mask = _mask_asset(raw_assets, base)
    if cloud_mask and mask is None:
        raise ItemError(f"cloud masking was asked for, but STAC item {item_id} ({storage.redact_url(url)}) has no 'scl' "
                        f"(Sentinel-2) or 'qa_pixel' (Landsat) asset ({_offer(raw_assets)}); run without cloud masking")
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        raise ItemError(f"STAC item {item_id} ({storage.redact_url(url)}) has no datetime (nor start_datetime); "
                        "it cannot be a date of a pair")
    kept = {"cloud_cover": cloud_cover(props), "tile": _tile(props), "relative_orbit": relative_orbit(props),
            "platform": props.get("platform"), "collection": d.get("collection")}
    return ItemDate(url=url, id=item_id, datetime=str_to_datetime(str(when)), bands=tuple(bands), grid=_finest(grids),
                    mask=mask, cloud_mask=cloud_mask,
                    baseline_offset=S2_ADD_OFFSET if any(b.dn_offset for b in bands) else 0.0,
                    properties={k: v for k, v in kept.items() if v is not None})


def read_info(date: ItemDate) -> RasterInfo:
    """What a run needs to know about an Item date: its grid, its band count, float32 values, no nodata value."""
    return RasterInfo(date.url, date.grid, len(date.bands), "float32", None)


# ---------------------------------------------------------------- reading windows


def _clear(kind: str, values: np.ndarray) -> np.ndarray:
    """Where a mask asset's pixels are a clear view of the ground."""
    if kind == "scl":
        return ~np.isin(values, SCL_INVALID)
    return (values.astype(np.uint32) & QA_PIXEL_INVALID_BITS) == 0


class ItemReader:
    """Reads windows of an Item date on a grid: bands (C, h, w) float32 and where they are valid.

    Each distinct band file is opened once (through :func:`pipeline.io.raster._rio`, so the
    run's storage options and GDAL session apply); a file whose own grid differs from ``grid``
    is read through a float32 ``WarpedVRT`` (bilinear for bands, so 20 m bands are
    interpolated, not rounded; nearest for the mask), otherwise directly. Reads are windowed:
    GDAL fetches only the blocks a window needs. Not thread-safe (rasterio datasets and GDAL
    settings belong to the thread that entered it): one reader per thread.
    """

    def __init__(self, date: ItemDate, grid: Grid, role: str = "input") -> None:
        self.date = date
        self.grid = grid
        self.role = role
        self._stack = ExitStack()
        self._sources: dict[str, tuple[Any, bool]] = {}  # href -> (dataset or VRT, warped)
        self._mask_src: tuple[Any, bool] | None = None

    def _what(self, key: str) -> str:
        return f"{self.role} STAC item {self.date.id} asset {key!r}:"

    def _open(self, href: str, key: str, *, mask_kind: str | None = None, nodata: float | None = None) -> tuple[Any, bool]:
        g = self.grid
        try:
            src = self._stack.enter_context(_rio(sign_href(href)))
            own = Grid(src.crs.to_wkt() if src.crs else "", tuple(src.transform)[:6], src.width, src.height)
            if src.crs is not None and same_grid(own, g):
                return src, False
            common = dict(crs=CRS.from_wkt(g.crs_wkt), transform=Affine(*g.transform), width=g.width, height=g.height)
            if mask_kind:
                vrt = WarpedVRT(src, resampling=Resampling.nearest, nodata=_MASK_FILL[mask_kind], **common)
            else:
                vrt = WarpedVRT(src, resampling=Resampling.bilinear, dtype="float32", nodata=np.nan,
                                src_nodata=nodata if nodata is not None else src.nodata, **common)
            return self._stack.enter_context(vrt), True
        except _READ_ERRORS as exc:
            raise _failure(exc, href, self._what(key)) from None

    def __enter__(self) -> ItemReader:
        try:
            for band in self.date.bands:
                if band.href not in self._sources:
                    self._sources[band.href] = self._open(band.href, band.key, nodata=band.nodata)
            mask = self.date.mask
            if self.date.cloud_mask and mask is not None:
                self._mask_src = self._open(mask.href, mask.key, mask_kind=mask.kind)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``image (C, h, w)`` float32 (scale, offset and baseline applied; 0 where invalid) and ``valid (h, w)``.

        A pixel is invalid where any band is at its nodata value or NaN (or outside the band's
        footprint), and, with cloud masking, where the mask asset says no data, cloud or shadow.
        """
        window = RioWindow(x0, y0, x1 - x0, y1 - y0)
        h, w = y1 - y0, x1 - x0
        image = np.empty((len(self.date.bands), h, w), np.float32)
        valid = np.ones((h, w), bool)
        for i, band in enumerate(self.date.bands):
            src, warped = self._sources[band.href]
            try:
                dn = src.read(band.band, window=window)
                if not warped:
                    nodata = band.nodata if band.nodata is not None else src.nodata
                    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
                        valid &= dn != nodata
                    elif nodata is None and not _all_valid(src):
                        valid &= src.read_masks(band.band, window=window) > 0
            except _READ_ERRORS as exc:
                raise _failure(exc, band.href, self._what(band.key), _where(y0, y1, x0, x1)) from None
            out = image[i]
            out[...] = dn
            valid &= ~np.isnan(out)
            if band.dn_offset:
                out += np.float32(band.dn_offset)
            if band.scale != 1:
                out *= np.float32(band.scale)
            if band.offset:
                out += np.float32(band.offset)
        if self._mask_src is not None:
            src, _ = self._mask_src
            mask = self.date.mask
            try:
                valid &= _clear(mask.kind, src.read(1, window=window))
            except _READ_ERRORS as exc:
                raise _failure(exc, mask.href, self._what(mask.key), _where(y0, y1, x0, x1)) from None
        image[:, ~valid] = 0.0  # no NaN reaches a model (a convolution would spread it to valid neighbours)
        return image, valid


def _where(y0: int, y1: int, x0: int, x1: int) -> str:
    return f"rows {y0}-{y1}, columns {x0}-{x1}"
