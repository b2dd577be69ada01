"""Pairs from a STAC search: the same choice over a STAC API, a static catalog and stac-geoparquet; reasons; errors."""
from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline import storage
from pipeline.archive import choose, search
from pipeline.archive.pairs import parse_manifest
from pipeline.archive.search import CatalogError, CatalogUnreachableError
from pipeline.archive.windows import parse_window
from pipeline.io.items import is_item, load_item
from tests.helpers import stac as sf

pytestmark = pytest.mark.timeout(120)

BEFORE, AFTER = parse_window(sf.BEFORE), parse_window(sf.AFTER)
SOURCES = ["api", "static", "geoparquet"]


def _plan(world: sf.StacWorld, source: str, max_cloud: float | None, **kw) -> choose.SearchPlan:
    catalog = search.open_catalog(getattr(world, source), **kw)
    return choose.search_pairs(catalog, sf.COLLECTION, before=BEFORE, after=AFTER, max_cloud=max_cloud, bbox=world.bbox)


def test_the_same_search_gives_the_same_pairs_over_api_static_catalog_and_geoparquet(stac_world, run_storage):
    plans = {source: _plan(stac_world, source, 50) for source in SOURCES}
    chosen = {source: [(p.tile, p.before.id, p.after.id) for p in plan.pairs] for source, plan in plans.items()}
    assert chosen["api"] == chosen["static"] == chosen["geoparquet"] == sf.expected_pairs(50)
    assert [p.id for p in plans["api"].pairs] == ["T33UUP_20230605_20240622", "T33UVP_20230612_20240615"]
    assert all(not plan.skipped for plan in plans.values())
    uvp = plans["static"].pairs[1]
    assert (uvp.before.cloud_cover, uvp.before.relative_orbit, uvp.after.cloud_cover, uvp.after.relative_orbit) == (4, 122, 9, 122)
    # each source names the Item by where its JSON lives: the API's item endpoint, the catalog's (and parquet's self) s3:// URL
    assert plans["api"].pairs[1].before.href == f"{stac_world.api}/collections/{sf.COLLECTION}/items/{uvp.before.id}"
    assert uvp.before.href == plans["geoparquet"].pairs[1].before.href == stac_world.static_items[uvp.before.id]


@pytest.mark.parametrize("source", SOURCES)
def test_a_tile_without_an_acceptable_item_is_reported_with_the_reason(stac_world, run_storage, source):
    plan = _plan(stac_world, source, 20)
    assert [(p.tile, p.before.id, p.after.id) for p in plan.pairs] == sf.expected_pairs(20)
    assert plan.skipped == (("T33UUP", "no item in the after window 2024-06-01/2024-06-30 with cloud cover <= 20 % "
                                       "(3 items, least cloudy 33 %)"),)
    assert "T33UUP: no item in the after window" in plan.report()[-1]


@pytest.mark.parametrize("source", SOURCES)
def test_an_unknown_collection_is_named_with_the_catalogs_collections(stac_world, run_storage, source):
    catalog = search.open_catalog(getattr(stac_world, source))
    t0 = time.monotonic()
    with pytest.raises(CatalogError) as exc:
        catalog.search(["sentinel-2-l3a"], bbox=stac_world.bbox, datetime=BEFORE)
    message = str(exc.value)
    assert "no collection 'sentinel-2-l3a'" in message and "collections are sentinel-2-l2a" in message and "\n" not in message
    assert time.monotonic() - t0 < 5


def test_an_unreachable_api_is_one_paragraph_raised_fast():
    url = f"http://127.0.0.1:{sf.free_port()}"
    t0 = time.monotonic()
    with pytest.raises(CatalogUnreachableError) as exc:
        search.open_catalog(url)
    assert time.monotonic() - t0 < 10
    message = str(exc.value)
    assert f"STAC API {url} cannot be reached" in message and "\n" not in message and "Connection refused" in message


def test_a_source_that_is_no_catalog_is_refused(stac_world, run_storage, tmp_path):
    with pytest.raises(CatalogError, match="neither a STAC API URL"):
        search.open_catalog(str(tmp_path))
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(CatalogError, match="is not a Parquet file"):
        search.open_catalog(str(tmp_path / "x.parquet"))
    with pytest.raises(CatalogError, match="does not exist"):
        search.open_catalog(f"s3://{stac_world.bucket}/nope/catalog.json")
    with pytest.raises(CatalogError, match="answered 'not found'"):
        search.open_catalog(f"{stac_world.api}/nope")


def test_an_api_search_pages_through_every_result(stac_world):
    body = json.dumps({"collections": [sf.COLLECTION], "limit": 3}).encode()
    request = urllib.request.Request(f"{stac_world.api}/search", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as r:
        first = json.load(r)
    assert len(first["features"]) == 3 and any(link["rel"] == "next" for link in first["links"])  # the server pages
    found = search.open_catalog(stac_world.api, page_size=3).search(sf.COLLECTION)
    assert len(found) == len(sf.SCENES) == len({i.id for i in found})
    window = search.open_catalog(stac_world.api, page_size=2).search([sf.COLLECTION], bbox=stac_world.bbox, datetime=sf.AFTER)
    assert sorted(i.id for i in window) == sorted(sf.item_id(t, d) for t, d, _, _ in sf.SCENES if d.startswith("2024-06"))


def _flaky_proxy(upstream: str, status: int) -> ThreadingHTTPServer:
    """A proxy to ``upstream`` that answers every second request with ``status`` (Retry-After: 0)."""
    counter = itertools.count()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0)) if method == "POST" else None
            if next(counter) % 2 == 1:
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            request = urllib.request.Request(upstream + self.path, data=body, method=method,
                                             headers={"content-type": "application/json"})
            with urllib.request.urlopen(request) as r:
                data = r.read().replace(upstream.encode(), f"http://127.0.0.1:{self.server.server_port}".encode())
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._answer("GET")

        def do_POST(self):
            self._answer("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_server_errors_are_retried(stac_world, status):
    proxy = _flaky_proxy(stac_world.api, status)
    try:
        catalog = search.open_catalog(f"http://127.0.0.1:{proxy.server_port}", page_size=4)
        assert len(catalog.search(sf.COLLECTION, datetime=sf.AFTER)) == sum(d.startswith("2024-06") for _, d, _, _ in sf.SCENES)
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_the_manifest_parses_into_the_same_pairs_and_its_items_load(stac_world, run_storage, tmp_path):
    for source in ("api", "static"):
        plan = _plan(stac_world, source, 50)
        url = str(tmp_path / f"{source}.csv")
        text = choose.write_manifest(plan, url, "s3://maps/out")
        assert text.splitlines()[0] == "id,before,after"
        parsed = parse_manifest(open(url).read(), url, "s3://maps/out")
        assert [(p.id, p.before, p.after, p.output) for p in parsed.pairs] == [
            (c.id, c.before.href, c.after.href, f"s3://maps/out/{c.id}.tif") for c in plan.pairs]
        for pair in parsed.pairs:
            assert is_item(pair.before) and is_item(pair.after)
        date = load_item(parsed.pairs[0].before, ["red"])  # the API's item endpoint over HTTP, or the s3:// JSON
        assert date.id == plan.pairs[0].before.id and date.bands[0].href.startswith(f"s3://{stac_world.bucket}/")


def test_an_empty_plan_is_not_written(tmp_path):
    plan = choose.SearchPlan((), (("T33UUP", "no item in the before window 2023-06-01/2023-06-30"),))
    with pytest.raises(CatalogError, match="gave no pair .* T33UUP: no item in the before window"):
        choose.write_manifest(plan, str(tmp_path / "m.csv"), "out")
    assert not (tmp_path / "m.csv").exists()


def test_flat_storage_options_are_the_buckets_and_an_http_item_still_loads(stac_world, s3_server):
    # Flat options (key, secret, endpoint) are meant for the bucket the bands are in; the item
    # itself is read over HTTP, whose client would refuse them: they are not given to it.
    url = f"{stac_world.api}/collections/{sf.COLLECTION}/items/{sf.item_id('33UVP', '2023-06-12')}"
    with storage.using(storage.StorageOptions.from_mapping(s3_server)):
        item = load_item(url)
        assert storage.options_for(url) == {}
        assert storage.options_for("s3://bucket/x.tif")["key"] == s3_server["key"]
    assert item.id == sf.item_id("33UVP", "2023-06-12")
