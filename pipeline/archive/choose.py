"""Pairs from a STAC search: for each tile, the best Item of a BEFORE and of an AFTER date window.

:func:`choose_pairs` groups the Items a catalog search found (:mod:`pipeline.archive.search`) by
tile and chooses one Item per window (see its docstring for the rule); :func:`write_manifest`
writes the choice as an ordinary archive manifest (``id,before,after`` with Item URLs), so
``changemap archive MANIFEST`` maps it unchanged.

Specifications: the grid (``grid:code``), eo (``eo:cloud_cover``) and sat
(``sat:relative_orbit``) extensions (https://github.com/stac-extensions).
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pystac
import shapely
import shapely.geometry

from pipeline import storage
from pipeline.archive.pairs import Pair, Plan, default_output, parse_manifest
from pipeline.archive.search import (
    Catalog,
    CatalogError,
    area_of,
    footprint,
    in_window,
    item_href,
    open_catalog,
    start_time,
)
from pipeline.archive.windows import Window, aware, check_windows, format_window, parse_window
from pipeline.config import ArchiveOptions
from pipeline.io import fs
from pipeline.io.items import cloud_cover, relative_orbit, tile_of

NEAR_TIE = 5.0  # percentage points of cloud cover within which two Items count as equally clear
SAME_GROUP_OVERLAP = 0.5  # Items without a tile belong together when their footprints overlap this much


@dataclass(frozen=True)
class ItemSummary:
    """What a plan says about a chosen Item."""

    id: str
    href: str
    datetime: datetime
    cloud_cover: float | None
    relative_orbit: int | None
    coverage: float | None = None  # the fraction of the area of interest its footprint covers


@dataclass(frozen=True)
class ChosenPair:
    """A tile's chosen BEFORE and AFTER Items."""

    tile: str
    before: ItemSummary
    after: ItemSummary

    @property
    def id(self) -> str:
        """The pair id: tile and both dates, e.g. ``T33UVP_20230612_20240615``."""
        return f"{self.tile}_{self.before.datetime:%Y%m%d}_{self.after.datetime:%Y%m%d}"


@dataclass(frozen=True)
class SearchPlan:
    """The chosen pairs, and the tiles that got none with the reason."""

    pairs: tuple[ChosenPair, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (tile, reason)

    def report(self) -> list[str]:
        """One line per tile: its pair, or why it has none."""
        lines = [f"{p.tile}: {p.before.id} ({_pct(p.before.cloud_cover)} cloud) -> {p.after.id} "
                 f"({_pct(p.after.cloud_cover)} cloud)" for p in self.pairs]
        return lines + [f"{tile}: {reason}" for tile, reason in self.skipped]


def _pct(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} %"


_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")


def _label(tile: str) -> str:
    """A tile label usable in a pair id (letters, digits, '.', '_', '-')."""
    return _NOT_ID.sub("-", tile).strip("-.") or "tile"


def _overlap(a: shapely.Geometry, b: shapely.Geometry) -> float:
    """Shared area over the smaller footprint's area (1: one lies inside the other)."""
    small = min(a.area, b.area)
    if small <= 0:
        return 1.0 if a.intersects(b) else 0.0
    return a.intersection(b).area / small


def _place(geom: shapely.Geometry) -> str:
    c = geom.centroid if not geom.is_empty else shapely.Point(0, 0)
    return f"{'E' if c.x >= 0 else 'W'}{abs(c.x):07.3f}_{'N' if c.y >= 0 else 'S'}{abs(c.y):06.3f}"


def group_by_tile(items: Iterable[pystac.Item]) -> dict[str, list[pystac.Item]]:
    """Items by tile: ``grid:code``, else ``s2:mgrs_tile``, else Landsat path/row, else overlapping footprints.

    Items without tile metadata join the first group (by seed Item id) whose seed footprint
    they overlap by at least 50 % of the smaller footprint; such a group is named by its seed's
    centroid (``E011.250_N45.250``).
    """
    groups: dict[str, list[pystac.Item]] = {}
    seeds: list[tuple[str, shapely.Geometry]] = []
    for item in sorted(items, key=lambda i: i.id):
        tile = tile_of(item.properties)
        if tile is None:
            geom = footprint(item)
            tile = next((label for label, seed in seeds if _overlap(seed, geom) >= SAME_GROUP_OVERLAP), None)
            if tile is None:
                tile = _place(geom)
                n = 2
                while tile in groups:
                    tile = f"{_place(geom)}-{n}"
                    n += 1
                seeds.append((tile, geom))
        groups.setdefault(_label(tile), []).append(item)
    return groups


def _cloud(item: pystac.Item) -> float | None:
    return cloud_cover(item.properties)


def _acceptable(items: list[pystac.Item], max_cloud: float | None, side: str, window: Window) -> tuple[list[pystac.Item], str]:
    """The Items of a window that pass the cloud limit, or why there is none."""
    where = f"in the {side} window {format_window(window)}"
    if not items:
        return [], f"no item {where}"
    if max_cloud is None:
        return items, ""
    ok = [i for i in items if (_cloud(i) is not None and _cloud(i) <= max_cloud)]
    if ok:
        return ok, ""
    known = [c for c in map(_cloud, items) if c is not None]
    facts = [f"{len(items)} item{'s' if len(items) != 1 else ''}"]
    if known:
        facts.append(f"least cloudy {min(known):g} %")
    if len(known) < len(items):
        facts.append(f"{len(items) - len(known)} without eo:cloud_cover")
    return [], f"no item {where} with cloud cover <= {max_cloud:g} % ({', '.join(facts)})"


def _coverage(aoi: shapely.Geometry | None, *footprints: shapely.Geometry) -> float:
    """How much of ``aoi`` all footprints cover together (without an AOI: their overlap over the largest)."""
    if aoi is None:
        shared = footprints[0]
        for f in footprints[1:]:
            shared = shared.intersection(f)
        largest = max(f.area for f in footprints)
        return shared.area / largest if largest > 0 else 1.0
    if aoi.area <= 0:
        return 1.0 if all(f.intersects(aoi) for f in footprints) else 0.0
    shared = aoi
    for f in footprints:
        shared = shared.intersection(f)
    return shared.area / aoi.area


def _near_ties(items: list[pystac.Item], near_tie: float) -> list[pystac.Item]:
    clouds = [_cloud(i) if _cloud(i) is not None else 100.0 for i in items]
    least = min(clouds)
    return [i for i, c in zip(items, clouds) if c <= least + near_tie]


def _best(before: list[pystac.Item], after: list[pystac.Item], aoi: shapely.Geometry | None,
          near_tie: float) -> tuple[pystac.Item, pystac.Item]:
    """The best (BEFORE, AFTER) among each window's least cloudy Items (see :func:`choose_pairs`)."""
    def key(pair: tuple[pystac.Item, pystac.Item]) -> tuple:
        b, a = pair
        ob, oa = relative_orbit(b.properties), relative_orbit(a.properties)
        cb, ca = (_cloud(i) if _cloud(i) is not None else 100.0 for i in pair)
        return (-round(_coverage(aoi, footprint(b), footprint(a)), 2), not (ob is not None and ob == oa),
                cb + ca, start_time(b), start_time(a), b.id, a.id)

    return min(((b, a) for b in _near_ties(before, near_tie) for a in _near_ties(after, near_tie)), key=key)


def _summary(item: pystac.Item, aoi: shapely.Geometry | None) -> ItemSummary:
    return ItemSummary(id=item.id, href=item_href(item), datetime=start_time(item),
                       cloud_cover=_cloud(item), relative_orbit=relative_orbit(item.properties),
                       coverage=None if aoi is None else round(_coverage(aoi, footprint(item)), 4))


def choose_pairs(items: Iterable[pystac.Item], *, before: Window, after: Window, max_cloud: float | None,
                 aoi: shapely.Geometry | None = None, near_tie: float = NEAR_TIE) -> SearchPlan:
    """For each tile, the best Item of the BEFORE window and of the AFTER window.

    Items are grouped by tile (:func:`group_by_tile`). In each window an Item is acceptable
    when its cloud cover (``eo:cloud_cover``, else ``landsat:cloud_cover_land``) is at most
    ``max_cloud`` (an Item without one is not, when a limit is given). Among the acceptable
    Items within ``near_tie`` percentage points of the window's least cloudy one (cloud cover
    estimates are not finer than that), the pair chosen is the one that

    1. covers most of the area of interest together (without one: whose footprints overlap
       most), to the percent: a sliver of a tile at a swath's edge loses to a whole tile;
    2. then was seen from the same relative orbit on both dates (``sat:relative_orbit``, the
       ``_Rnnn_`` of a Sentinel-2 product name, Landsat's WRS path): the same viewing geometry
       means less false change from parallax and BRDF;
    3. then is the least cloudy together, then the earliest, then by id (deterministic).

    A tile without an acceptable Item in a window is reported in ``skipped`` with the reason,
    never dropped silently.

    Raises:
        WindowError: the windows overlap or are in the wrong order.
    """
    before, after = aware(before), aware(after)
    check_windows(before, after)
    pairs, skipped = [], []
    unique = {(i.collection_id, i.id): i for i in items}
    for tile, group in sorted(group_by_tile(unique.values()).items()):
        found = {side: _acceptable([i for i in group if in_window(i, window)], max_cloud, side, window)
                 for side, window in (("before", before), ("after", after))}
        reasons = [why for _, why in found.values() if why]
        if reasons:
            skipped.append((tile, "; ".join(reasons)))
            continue
        b, a = _best(found["before"][0], found["after"][0], aoi, near_tie)
        pairs.append(ChosenPair(tile, _summary(b, aoi), _summary(a, aoi)))
    return SearchPlan(tuple(pairs), tuple(skipped))


def search_pairs(catalog: Catalog, collections: Sequence[str] | str, *, before: Window, after: Window,
                 max_cloud: float | None, bbox: Sequence[float] | None = None, intersects: Any = None,
                 near_tie: float = NEAR_TIE) -> SearchPlan:
    """Search both windows of a catalog and choose the pairs (:func:`choose_pairs`); the area is the AOI."""
    before, after = aware(before), aware(after)
    check_windows(before, after)
    found = [*catalog.search(collections, bbox=bbox, intersects=intersects, datetime=before),
             *catalog.search(collections, bbox=bbox, intersects=intersects, datetime=after)]
    return choose_pairs(found, before=before, after=after, max_cloud=max_cloud, aoi=area_of(bbox, intersects),
                        near_tie=near_tie)


def write_manifest(plan: SearchPlan, url: str, output_prefix: str) -> str:
    """Write the chosen pairs as an archive manifest (CSV ``id,before,after`` of Item URLs), atomically.

    The text is checked with :func:`pipeline.archive.pairs.parse_manifest` (ids, unique
    outputs under ``output_prefix``) before it is written, so ``changemap archive`` accepts it.

    Returns:
        The manifest's text.

    Raises:
        CatalogError: the plan has no pair.
    """
    if not plan.pairs:
        why = "; ".join(f"{tile}: {reason}" for tile, reason in plan.skipped[:5]) or "the search found no item"
        more = f" (and {len(plan.skipped) - 5} more tiles)" if len(plan.skipped) > 5 else ""
        raise CatalogError(f"the search gave no pair to write to {storage.redact_url(url)}: {why}{more}; widen the date "
                           "windows or the area, or allow more cloud cover")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "before", "after"])
    for pair in plan.pairs:
        writer.writerow([pair.id, pair.before.href, pair.after.href])
    text = out.getvalue()
    parse_manifest(text, url, output_prefix)
    fs.write_text(url, text)
    return text



# ---------------------------------------------------------------- an archive's search


def read_area(value: str | None) -> dict | None:
    """``--intersects``: a GeoJSON geometry, Feature or FeatureCollection (text, path or URL) as one geometry.

    A FeatureCollection's geometries are united. Raises :class:`CatalogError` for anything that
    is not valid GeoJSON.
    """
    if value is None:
        return None
    text = value.strip()
    if not text.startswith("{"):
        if not fs.exists(text):
            raise CatalogError(f"--intersects {storage.redact_url(text)} is neither GeoJSON text nor an existing file; "
                               "give a GeoJSON geometry, Feature or FeatureCollection, or its path or URL")
        text = fs.read_text(text)
    try:
        doc = json.loads(text)
        kind = doc.get("type")
        if kind == "FeatureCollection":
            geoms = [shapely.geometry.shape(f["geometry"]) for f in doc["features"]]
        else:
            geoms = [shapely.geometry.shape(doc["geometry"] if kind == "Feature" else doc)]
        area = shapely.union_all(geoms)
    except Exception as exc:  # noqa: BLE001 - JSON, keys and geometry errors alike: one message
        raise CatalogError(f"--intersects is not a GeoJSON geometry, Feature or FeatureCollection ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); give one, in WGS 84 longitude/latitude") from None
    if area.is_empty or not area.is_valid:
        raise CatalogError("--intersects is an empty or invalid geometry (e.g. a self-crossing ring); give a valid "
                           "polygon in WGS 84 longitude/latitude")
    return shapely.geometry.mapping(area)


def signer(source: str) -> Callable | None:
    """What signs a catalog's asset URLs (the Planetary Computer's: its own package), or None where none is needed.

    Raises:
        CatalogError: the catalog needs signing and the ``planetary-computer`` package is missing.
    """
    if "planetarycomputer.microsoft.com" not in source:
        return None
    try:
        import planetary_computer
    except ImportError:
        raise CatalogError(f"{storage.redact_url(source)} is the Planetary Computer's catalog, whose files are read "
                           "with signed URLs: install its signing package with pip install 'changemap[pc]'") from None
    return planetary_computer.sign_inplace


def search_archive(options: ArchiveOptions) -> SearchPlan:
    """Search an archive's ``--catalog`` with its options and choose the pairs.

    Raises:
        WindowError: a date window that is not a range, or windows in the wrong order.
        CatalogError: the catalog cannot be searched, or the search gives no pair (with each tile's reason).
    """
    before = parse_window(options.before_dates, "--before-dates")
    after = parse_window(options.after_dates, "--after-dates")
    check_windows(before, after)
    area = read_area(options.intersects)
    catalog = open_catalog(options.catalog, modifier=signer(options.catalog))
    plan = search_pairs(catalog, list(options.collections or ()), before=before, after=after,
                        max_cloud=options.max_cloud, bbox=options.bbox, intersects=area)
    if not plan.pairs:
        where = f"--bbox {','.join(f'{v:g}' for v in options.bbox)}" if options.bbox else (
            "--intersects" if area else "the whole catalog")
        why = "; ".join(f"{tile}: {reason}" for tile, reason in plan.skipped[:5]) or (
            f"no item of {', '.join(options.collections or ())} meets {where} in either window")
        more = f" (and {len(plan.skipped) - 5} more tiles)" if len(plan.skipped) > 5 else ""
        raise CatalogError(f"the search of {storage.redact_url(options.catalog)} gave no pair: {why}{more}; widen the "
                           "date windows or the area, or allow more cloud cover (--max-cloud)")
    return plan


def as_plan(found: SearchPlan, output_prefix: str) -> Plan:
    """The archive's pairs of a search: one per tile, the tiles without one as unpaired rows with the reason."""
    chosen = tuple(Pair(p.id, p.before.href, p.after.href, default_output(output_prefix, p.id)) for p in found.pairs)
    return Plan(chosen, tuple(found.skipped), found=found)


def manifest_url(output_prefix: str) -> str:
    """Where an archive's search writes its chosen pairs as a manifest: ``PREFIX/search-pairs.csv``."""
    return storage.join(output_prefix, "search-pairs.csv")
