"""Choosing a pair per tile from the Items a search found: near ties, orbits, coverage, missing metadata."""
from __future__ import annotations

import datetime as dt

import pystac
import pytest
import shapely

from pipeline.archive import choose
from pipeline.archive.windows import parse_window
from tests.helpers import stac as sf

BEFORE, AFTER = parse_window(sf.BEFORE), parse_window(sf.AFTER)


def _item(iid: str, day: str, cloud: float | None, orbit: int | None, box=(11.0, 45.0, 11.5, 45.5),
          tile: str | None = "MGRS-32TQM") -> pystac.Item:
    props = {"eo:cloud_cover": cloud, "sat:relative_orbit": orbit, "grid:code": tile}
    item = pystac.Item(iid, shapely.geometry.mapping(shapely.box(*box)), list(box),
                       dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc),
                       {k: v for k, v in props.items() if v is not None}, collection="c")
    item.set_self_href(f"/data/{iid}.json")
    return item


def _choose(items, max_cloud=None, aoi=None):
    plan = choose.choose_pairs(items, before=BEFORE, after=AFTER, max_cloud=max_cloud, aoi=aoi)
    return [(p.tile, p.before.id, p.after.id) for p in plan.pairs], plan.skipped


def test_near_ties_prefer_the_same_relative_orbit():
    after = _item("a", "2024-06-10", 3, 122)
    assert _choose([_item("b1", "2023-06-05", 2, 22), _item("b2", "2023-06-09", 6, 122), after])[0] == [("T32TQM", "b2", "a")]
    # more than 5 points cloudier: the clearer one wins whatever its orbit
    assert _choose([_item("b1", "2023-06-05", 2, 22), _item("b2", "2023-06-09", 8, 122), after])[0] == [("T32TQM", "b1", "a")]


def test_covering_more_of_the_area_of_interest_wins_a_near_tie():
    aoi = shapely.box(11.0, 45.0, 11.5, 45.5)
    sliver = _item("b1", "2023-06-05", 1, 22, box=(11.0, 45.0, 11.1, 45.5))
    whole = _item("b2", "2023-06-09", 4, 122, box=(11.0, 45.0, 11.5, 45.5))
    pairs, _ = _choose([sliver, whole, _item("a", "2024-06-10", 3, 22)], aoi=aoi)
    assert pairs == [("T32TQM", "b2", "a")]


def test_items_without_cloud_cover_or_tile():
    items = [_item("b", "2023-06-05", None, None, tile=None), _item("a", "2024-06-10", None, None, tile=None),
             _item("far", "2023-06-05", 5, None, box=(20.0, 10.0, 20.5, 10.5), tile=None)]
    pairs, skipped = _choose(items)
    assert pairs == [("E011.250_N45.250", "b", "a")] and skipped == (("E020.250_N10.250", "no item in the after window "
                                                                     "2024-06-01/2024-06-30"),)
    _, skipped = _choose(items[:2], max_cloud=30)
    assert skipped == (("E011.250_N45.250", "no item in the before window 2023-06-01/2023-06-30 with cloud cover <= 30 % "
                        "(1 item, 1 without eo:cloud_cover); no item in the after window 2024-06-01/2024-06-30 with cloud "
                        "cover <= 30 % (1 item, 1 without eo:cloud_cover)"),)


def test_landsat_tiles_and_land_cloud_cover():
    a = _item("LC09_044034_20230605", "2023-06-05", None, None, tile=None)
    b = _item("LC09_044034_20240610", "2024-06-10", None, None, tile=None)
    for item, land in ((a, 12.0), (b, 7.0)):
        item.properties.update({"landsat:wrs_path": "044", "landsat:wrs_row": "034", "landsat:cloud_cover_land": land})
    plan = choose.choose_pairs([a, b], before=BEFORE, after=AFTER, max_cloud=15)
    assert [(p.id, p.before.cloud_cover, p.before.relative_orbit) for p in plan.pairs] == [
        ("WRS2-044034_20230605_20240610", 12.0, 44)]


def test_the_planetary_computer_catalog_needs_its_signing_package(monkeypatch):
    import sys

    from pipeline.archive.search import CatalogError

    monkeypatch.setitem(sys.modules, "planetary_computer", None)
    with pytest.raises(CatalogError, match=r"pip install 'changemap\[pc\]'"):
        choose.signer("https://planetarycomputer.microsoft.com/api/stac/v1")
    assert choose.signer("https://earth-search.aws.element84.com/v1") is None
