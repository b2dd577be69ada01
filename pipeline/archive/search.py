"""STAC catalogs to search: a STAC API (pystac-client), a static catalog or collection, a stac-geoparquet file.

:func:`open_catalog` gives one :class:`Catalog` with one ``search`` for all three; the pairs are
chosen from what it finds by :mod:`pipeline.archive.choose`.

Specifications: STAC API Item Search (https://github.com/radiantearth/stac-api-spec),
stac-geoparquet (https://github.com/stac-utils/stac-geoparquet/blob/main/spec/stac-geoparquet-spec.md).
"""
from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pystac
import shapely
from shapely.geometry import mapping, shape

from pipeline import storage
from pipeline.archive.windows import Window, as_window, aware, iso
from pipeline.errors import ChangemapError, EndpointUnreachableError, InputUnreachableError, one_paragraph, storage_failure
from pipeline.io import fs
from pipeline.io.items import ITEM_SUFFIXES, _read_failure, read_json, resolve_href

PAGE_SIZE = 100  # Items per page of a STAC API search (servers cap it: Earth Search 250, Planetary Computer 1000)
_READERS = 8  # concurrent reads of a static catalog's Item files


class CatalogError(ChangemapError):
    """A STAC catalog that cannot be searched (unknown collection, not a catalog, an error answer)."""


class CatalogUnreachableError(EndpointUnreachableError, CatalogError):
    """A STAC API or catalog whose server cannot be reached."""


def item_href(item: pystac.Item) -> str:
    """The Item's own URL (its self link), absolute: what a manifest lists and :func:`pipeline.io.items.load_item` reads."""
    href = item.get_self_href()
    if not href:
        raise CatalogError(f"STAC item {item.id} has no self link, so nothing says where its JSON lives and a manifest "
                           "cannot point to it; search the STAC API or static catalog it comes from instead")
    return href if "://" in href else storage.absolute(href)


def footprint(item: pystac.Item) -> shapely.Geometry:
    """The Item's geometry (empty where it has none)."""
    return shape(item.geometry) if item.geometry else shapely.Polygon()


def _interval(item: pystac.Item) -> Window | None:
    """The Item's time: its datetime, else its start/end range (UTC where the Item gives no zone)."""
    if item.datetime is not None:
        return aware((item.datetime, item.datetime))
    start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
    return aware((start, end)) if start and end else None


_NO_TIME = datetime.min.replace(tzinfo=timezone.utc)


def start_time(item: pystac.Item) -> datetime:
    """When the Item was seen (the start of its range; the earliest time where it has none)."""
    span = _interval(item)
    return span[0] if span else _NO_TIME


def in_window(item: pystac.Item, window: Window) -> bool:
    """Whether the Item's time meets the window (both ends included)."""
    span = _interval(item)
    return span is not None and span[0] <= window[1] and span[1] >= window[0]


def area_of(bbox: Sequence[float] | None, intersects: Any) -> shapely.Geometry | None:
    """The area of interest of a search as a geometry (None: no area given)."""
    if intersects is not None:
        return intersects if isinstance(intersects, shapely.Geometry) else shape(intersects)
    if bbox is not None:
        if len(bbox) == 6:  # [west, south, bottom, east, north, top]
            return shapely.box(bbox[0], bbox[1], bbox[3], bbox[4])
        return shapely.box(*bbox) if len(bbox) == 4 else None
    return None


class Catalog:
    """One way to search any STAC source: a STAC API, a static catalog or a stac-geoparquet file."""

    source: str

    def collections(self) -> list[str]:
        """The ids of the catalog's collections."""
        raise NotImplementedError

    def _exists(self, collection: str) -> bool:
        return collection in self.collections()

    def _check(self, collections: Sequence[str]) -> None:
        unknown = [c for c in collections if not self._exists(c)]
        if unknown:
            known = self.collections()
            listed = ", ".join(known[:30]) + (f" and {len(known) - 30} more" if len(known) > 30 else "")
            raise CatalogError(f"STAC catalog {storage.redact_url(self.source)} has no collection "
                               f"{', '.join(map(repr, unknown))}; its collections are {listed or 'none'}: pick one of them")

    def search(self, collections: Sequence[str] | str | None, bbox: Sequence[float] | None = None,
               intersects: Any = None, datetime: Window | str | None = None) -> list[pystac.Item]:
        """The Items of ``collections`` whose footprint meets the area and whose time meets ``datetime``.

        Args:
            collections: collection ids (each must exist) or None for all.
            bbox: ``[west, south, east, north]`` in WGS 84.
            intersects: a GeoJSON geometry (dict) or shapely geometry in WGS 84 (instead of ``bbox``).
            datetime: ``(start, end)`` or ``"START/END"`` (both ends included).

        Returns:
            The Items, sorted by datetime then id.
        """
        ids = [collections] if isinstance(collections, str) else list(collections or [])
        if ids:
            self._check(ids)
        window = as_window(datetime)
        found = self._search(ids, bbox, intersects, window)
        area = area_of(bbox, intersects)
        kept = [i for i in found if (not ids or i.collection_id in ids)
                and (area is None or area.intersects(footprint(i))) and (window is None or in_window(i, window))]
        unique = {(i.collection_id, i.id): i for i in kept}
        return sorted(unique.values(), key=lambda i: (start_time(i), i.id))

    def _search(self, collections: list[str], bbox: Sequence[float] | None, intersects: Any,
                window: Window | None) -> Iterable[pystac.Item]:
        raise NotImplementedError


def _modified(modifier: Callable | None, item: pystac.Item) -> pystac.Item:
    """An Item through a pystac-client style modifier (in place, or returning a new object)."""
    if modifier is None:
        return item
    result = modifier(item)
    return result if isinstance(result, pystac.Item) else item


class LocalCatalog(Catalog):
    """Items held in memory (a static catalog or a stac-geoparquet file), searched here."""

    def __init__(self, source: str, items: list[pystac.Item], collections: Iterable[str]) -> None:
        self.source = source
        self.items = items
        self._collections = sorted(set(collections) | {i.collection_id for i in items if i.collection_id})

    def collections(self) -> list[str]:
        """The collections of the catalog and of its Items."""
        return self._collections

    def _search(self, collections, bbox, intersects, window):
        return self.items  # filtered by Catalog.search


class ApiCatalog(Catalog):
    """A STAC API searched with pystac-client (POST searches, paged through every result)."""

    def __init__(self, source: str, client: Any, page_size: int = PAGE_SIZE) -> None:
        self.source = source
        self.client = client
        self.page_size = page_size
        self._known: list[str] | None = None

    def collections(self) -> list[str]:
        """The ids of the API's collections (``/collections``, every page)."""
        if self._known is None:
            try:
                self._known = sorted(c.id for c in self.client.get_collections())
            except Exception as exc:  # noqa: BLE001 - pystac-client wraps requests errors in its own
                raise _api_failure(exc, self.source) from None
        return self._known

    def _exists(self, collection: str) -> bool:
        try:
            return self.client.get_collection(collection) is not None  # pystac-client: None on 404
        except Exception as exc:  # noqa: BLE001
            raise _api_failure(exc, self.source) from None

    def _search(self, collections, bbox, intersects, window):
        area = intersects if intersects is None or isinstance(intersects, dict) else mapping(intersects)
        # POST: the body carries the search exactly (some servers, rustac serve among them, mishandle GET
        # searches); cloud cover is filtered afterwards, here, since query/filter support varies.
        try:
            search = self.client.search(
                method="POST", collections=collections or None, bbox=None if area else bbox, intersects=area,
                datetime=f"{iso(window[0])}/{iso(window[1])}" if window else None, limit=self.page_size, max_items=None)
            return list(search.items())  # follows the 'next' links: every page
        except NotImplementedError as exc:
            raise CatalogError(f"STAC API {storage.redact_url(self.source)} does not support item search ({exc}); use its "
                               "static catalog or a stac-geoparquet export instead") from None
        except Exception as exc:  # noqa: BLE001
            raise _api_failure(exc, self.source) from None


def _api_failure(exc: BaseException, url: str) -> CatalogError:
    """The user error a failed STAC API request amounts to."""
    shown = storage.redact_url(url)
    detail = storage.scrub(one_paragraph(f"{exc}"))[:300] or type(exc).__name__
    status = getattr(exc, "status_code", None)
    kind = storage_failure(detail)
    if kind == "unreachable":
        return CatalogUnreachableError(f"STAC API {shown} cannot be reached ({detail}); check the host and port in the URL, "
                                       "that the server is up, and the network")
    if status in (401, 403) or kind == "denied":
        return CatalogError(f"STAC API {shown} refuses access ({detail}); check the credentials or headers it needs")
    if status == 404 or kind == "missing":
        return CatalogError(f"STAC API {shown} answered 'not found' ({detail}); check the URL: it must be the API's root "
                            "(landing page), e.g. https://earth-search.aws.element84.com/v1")
    if (status or 0) >= 500 or kind == "server":
        return CatalogError(f"STAC API {shown} answered with a server error ({detail}), even after retries; try again later")
    return CatalogError(f"STAC API {shown} cannot be used ({detail}); check that the URL is a STAC API's root (landing page)")


def _open_api(url: str, modifier: Callable | None, timeout: float, page_size: int) -> ApiCatalog:
    # Lazy: only API searches need pystac-client (and requests). urllib3's Retry is taken from where
    # pystac-client's StacApiIO (which types its max_retries with it) imports it: urllib3 is its dependency, not ours.
    from pystac_client import Client
    from pystac_client.stac_api_io import Retry, StacApiIO

    # pystac-client's default retries only connection errors; rate limits (429) and gateway errors (5xx) are
    # what public APIs answer under load. allowed_methods=None: POST searches are retried too (they only read).
    retry = Retry(total=5, connect=1, backoff_factor=0.5, status_forcelist=[429, 500, 502, 503, 504],
                  allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
    stac_io = StacApiIO(max_retries=retry, timeout=timeout)
    try:
        client = Client.open(url, stac_io=stac_io, modifier=modifier)
    except Exception as exc:  # noqa: BLE001 - requests, pystac and JSON errors all mean "not usable"
        raise _api_failure(exc, url) from None
    return ApiCatalog(url, client, page_size)


def _as_catalog_error(exc: ChangemapError) -> ChangemapError:
    return CatalogUnreachableError(str(exc)) if isinstance(exc, InputUnreachableError) else CatalogError(str(exc))


def _read_static(url: str) -> LocalCatalog:
    """Every Item under a catalog or collection JSON (any depth; Items read concurrently), or of an ItemCollection."""
    try:
        root = read_json(url, "STAC catalog")
    except ChangemapError as exc:
        raise _as_catalog_error(exc) from None
    kind = root.get("type")
    if kind == "FeatureCollection":
        items = [pystac.Item.from_dict(f, preserve_dict=False) for f in root.get("features") or []]
        return LocalCatalog(url, items, [])
    if kind == "Feature":
        return LocalCatalog(url, [pystac.Item.from_dict(root, href=url, preserve_dict=False)], [])
    if kind not in ("Catalog", "Collection"):
        raise CatalogError(f"STAC catalog {storage.redact_url(url)} is not a STAC Catalog, Collection or ItemCollection "
                           f"(type {kind!r}); give its catalog.json or collection.json")
    items: list[pystac.Item] = []
    collections: set[str] = set()
    pending = [(url, root, None)]
    seen = {url}
    with ThreadPoolExecutor(_READERS) as pool:
        while pending:
            href, doc, parent = pending.pop()
            collection = doc.get("id") if doc.get("type") == "Collection" else parent
            if doc.get("type") == "Collection":
                collections.add(str(doc.get("id")))
            links = [lk for lk in doc.get("links") or [] if isinstance(lk, dict) and lk.get("href")]
            children = [resolve_href(str(lk["href"]), href) for lk in links if lk.get("rel") == "child"]
            members = [resolve_href(str(lk["href"]), href) for lk in links if lk.get("rel") == "item"]
            # each read in a copy of this context: the run's storage options live in a context variable
            read = lambda u: read_json(u, "STAC catalog entry")
            futures = [(u, pool.submit(contextvars.copy_context().run, read, u)) for u in children + members
                       if u not in seen]
            seen.update(u for u, _ in futures)
            for u, future in futures:
                try:
                    d = future.result()
                except ChangemapError as exc:
                    raise _as_catalog_error(exc) from None
                if d.get("type") == "Feature":
                    item = pystac.Item.from_dict(d, href=u, preserve_dict=False)
                    if not item.collection_id and collection:
                        item.collection_id = collection
                    items.append(item)
                elif d.get("type") in ("Catalog", "Collection"):
                    pending.append((u, d, collection))
    return LocalCatalog(url, items, collections)


_CORE = {"type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links", "assets", "collection"}


def _drop_nulls(value: Any) -> Any:
    """Arrow fills fields other rows have with nulls: a STAC document has none of them."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    if isinstance(value, datetime):
        return iso(value if value.tzinfo else value.replace(tzinfo=timezone.utc))
    return value


def _row_to_item(row: dict) -> dict:
    """One stac-geoparquet row as a STAC Item dict (spec: properties are top-level columns, geometry WKB, bbox a struct)."""
    geometry = row.get("geometry")
    bbox = row.get("bbox")
    if isinstance(bbox, dict):
        three_d = bbox.get("zmin") is not None
        keys = ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax") if three_d else ("xmin", "ymin", "xmax", "ymax")
        bbox = [bbox[k] for k in keys]
    item = {k: row[k] for k in _CORE - {"geometry", "bbox"} if row.get(k) is not None}
    item["type"] = "Feature"
    item["geometry"] = mapping(shapely.from_wkb(geometry)) if isinstance(geometry, (bytes, bytearray)) else geometry
    if bbox is not None:
        item["bbox"] = list(bbox)
    item["properties"] = {k: v for k, v in row.items() if k not in _CORE}
    return _drop_nulls(item)


def _read_geoparquet(url: str) -> LocalCatalog:
    """Every Item of a stac-geoparquet file (read with pyarrow through the run's storage options)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shown = storage.redact_url(url)
    try:
        filesystem, path = fs.filesystem(url)
        with filesystem.open(path, "rb") as f:
            table = pq.read_table(f)
    except pa.ArrowInvalid as exc:
        raise CatalogError(f"STAC catalog {shown} is not a Parquet file ({one_paragraph(str(exc))[:200]}); give a "
                           "stac-geoparquet file (.parquet)") from None
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types
        raise _as_catalog_error(_read_failure(exc, url, "stac-geoparquet file")) from None
    if "id" not in table.column_names or "geometry" not in table.column_names:
        raise CatalogError(f"STAC catalog {shown} is a Parquet file but not stac-geoparquet (no 'id'/'geometry' columns: "
                           f"{', '.join(table.column_names[:10])}); write it with rustac or stac-geoparquet")
    items = []
    for row in table.to_pylist():
        d = _row_to_item(row)
        links = d.get("links") or []
        item = pystac.Item.from_dict(d, preserve_dict=False)
        own = next((lk.get("href") for lk in links if lk.get("rel") == "self"), None)
        if own:
            item.set_self_href(own if "://" in own else resolve_href(own, url))
        items.append(item)
    return LocalCatalog(url, items, [])


def open_catalog(source: str, *, modifier: Callable | None = None, timeout: float = 30.0,
                 page_size: int = PAGE_SIZE) -> Catalog:
    """Open a STAC source for searching.

    Args:
        source: a STAC API root URL (``https://earth-search.aws.element84.com/v1``); a static
            catalog, collection or ItemCollection JSON (path or any fsspec URL; a folder holding
            ``catalog.json``/``collection.json`` works too); or a stac-geoparquet file (``.parquet``).
        modifier: called on every Item (and, for an API, Collection) found, e.g.
            ``planetary_computer.sign_inplace`` to sign Planetary Computer asset URLs.
        timeout: seconds an API request may take (connect and read).
        page_size: Items per page of an API search (the ``limit`` parameter).

    Raises:
        CatalogError: the source is missing, unreachable or not a STAC catalog.
    """
    path = (source.split("?", 1)[0] if "://" in source else source).lower()
    if path.endswith((".parquet", ".geoparquet")):
        catalog: Catalog = _read_geoparquet(source)
    elif path.endswith(ITEM_SUFFIXES):
        catalog = _read_static(source)
    elif storage.protocol(source) == "http":
        return _open_api(source, modifier, timeout, page_size)
    else:
        for name in ("catalog.json", "collection.json"):
            candidate = storage.join(source, name)
            try:
                found = fs.exists(candidate)
            except Exception:  # noqa: BLE001 - the message below says what to give instead
                found = False
            if found:
                return open_catalog(candidate, modifier=modifier, timeout=timeout, page_size=page_size)
        raise CatalogError(f"{storage.redact_url(source)} is neither a STAC API URL (http/https), a catalog or collection "
                           "JSON (.json), a folder holding catalog.json or collection.json, nor a stac-geoparquet file "
                           "(.parquet); give one of those")
    if modifier is not None:
        catalog.items = [_modified(modifier, i) for i in catalog.items]  # type: ignore[attr-defined]
    return catalog


