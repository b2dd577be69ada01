"""Archives from a STAC search, end to end: a live STAC API (rustac serve) on 127.0.0.1, band-per-file COGs in a
local S3 (moto), the pairs chosen per tile, mapped, equal to the same bands stacked by hand; dry run, rerun, errors."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pydantic import SecretStr

from pipeline.archive.search import CatalogError
from pipeline.archive.windows import WindowError
from pipeline.cli import main
from pipeline.cli.run import run_archive, run_pair
from pipeline.config import ArchiveOptions, MapSettings, MapSpec, RunOptions
from pipeline.errors import ChangemapError
from pipeline.io.items import ItemError
from tests.helpers import stac as sf

pytestmark = [pytest.mark.usefixtures("prefect_harness", "ray_local"), pytest.mark.timeout(600)]

KEYS = ("red", "green", "blue", "nir", "swir16")  # four 10 m bands and a 20 m one
# CVA over every chosen band, its probability as float32 so that maps compare to 1e-6.
SETTINGS = dict(model="cva", tile=64, halo=16, probability="float32", mask=True)


def _run(s3_server, **kw) -> RunOptions:
    return RunOptions(storage_options=SecretStr(json.dumps({"s3": s3_server})), batch_size=2, **kw)


def _search(world: sf.StacWorld, prefix: Path, source: str = "api", **kw) -> ArchiveOptions:
    options = dict(catalog=getattr(world, source), collections=(sf.COLLECTION,), bbox=world.bbox,
                   before_dates=sf.BEFORE, after_dates=sf.AFTER, max_cloud=50, output_prefix=str(prefix))
    return ArchiveOptions(**{**options, **kw})


def _probability(path) -> tuple[np.ndarray, np.ndarray]:
    """Band 1 of a map and where it has data."""
    with rasterio.open(path) as src:
        return src.read(1), src.read_masks(1) > 0


def _refuse(*args, **kwargs):
    raise AssertionError(f"a raster was opened: {args[:1]}")


@pytest.fixture
def no_pixel_read(monkeypatch):
    """Any raster opened fails the test: what may run reads JSON only."""
    monkeypatch.setattr(rasterio, "open", _refuse)


@pytest.mark.slow
def test_a_search_maps_one_pair_per_tile_equal_to_its_bands_stacked_by_hand(stac_world, s3_server, tmp_path,
                                                                              monkeypatch):
    prefix = tmp_path / "maps"
    settings = MapSettings(assets=KEYS, cloud_mask=True, **SETTINGS)
    archive = _search(stac_world, prefix, stac=True)

    # the dry run: the pairs and a manifest, and not one pixel read
    with monkeypatch.context() as m:
        m.setattr(rasterio, "open", _refuse)
        dry = run_archive(archive.model_copy(update={"dry_run": True}), settings, _run(s3_server))
    expected = sf.expected_pairs(50)
    assert [(r["tile"], r["before"], r["after"]) for r in dry["pairs"]] == expected
    assert sorted(p.name for p in prefix.iterdir()) == ["search-pairs.csv"]
    manifest = list(csv.DictReader(io.StringIO((prefix / "search-pairs.csv").read_text())))
    assert [(row["id"], row["before"].rsplit("/", 1)[1], row["after"].rsplit("/", 1)[1]) for row in manifest] == [
        (f"{tile}_{b.split('_')[2]}_{a.split('_')[2]}", b, a) for tile, b, a in expected]
    assert all(row["before"].startswith(stac_world.api) for row in manifest)  # the API's item endpoints

    # the run: both pairs mapped on their own tile's grid, the search's choice kept beside them
    data = run_archive(archive, settings, _run(s3_server))
    assert data["counts"]["succeeded"] == 2 and data["counts"]["failed"] == 0, data["pairs"]
    for row in manifest:
        pid = row["id"]
        tile = pid.split("_")[0][1:]
        before_id, after_id = row["before"].rsplit("/", 1)[1], row["after"].rsplit("/", 1)[1]
        # the same bands, stacked by hand into one GeoTIFF per date, through the ordinary raster path
        stacked = [sf.write_stacked(tmp_path / f"{iid}.tif", stac_world.local[iid], KEYS, cloud_mask=True)
                   for iid in (before_id, after_id)]
        by_hand = run_pair(MapSpec.of(str(stacked[0]), str(stacked[1]), MapSettings(**SETTINGS)),
                           _run(s3_server, output=str(tmp_path / f"{pid}.by-hand.tif")))
        assert by_hand.tiles == 1
        got, got_valid = _probability(prefix / f"{pid}.tif")
        want, want_valid = _probability(tmp_path / f"{pid}.by-hand.tif")
        with rasterio.open(prefix / f"{pid}.tif") as a, rasterio.open(stacked[0]) as b:
            assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
            assert a.transform.c == sf.TILES[tile][0]  # each map on its own tile's grid
        np.testing.assert_array_equal(got_valid, want_valid)
        assert np.abs(got[got_valid] - want[got_valid]).max() <= 1e-6
        # a cloud (SCL 9) and a shadow (SCL 3) of either date are nodata in the map; the clear rest is mapped
        assert not got_valid[8:16, 8:16].any() and not got_valid[24:28, 40:48].any()
        assert got_valid.sum() == 64 * 64 - 64 - 32 - 1  # and the one nodata pixel of 'red'
        item = json.loads((prefix / pid / f"{pid}.json").read_text())
        sources = sorted(link["href"] for link in item["links"] if link["rel"] == "derived_from")
        assert sources == sorted([row["before"], row["after"]])

    # a second run over the same search skips every finished pair
    again = run_archive(archive, settings, _run(s3_server))
    assert again["counts"]["skipped"] == 2 and again["counts"]["succeeded"] == 0 and again["tiles_inferred"] == 0


def test_a_tile_without_an_acceptable_item_is_an_unpaired_row_and_the_sources_agree(stac_world, s3_server, tmp_path,
                                                                                   no_pixel_read, capsys):
    settings = MapSettings(assets=KEYS, **SETTINGS)
    chosen = {}
    for source in ("api", "static", "geoparquet"):
        data = run_archive(_search(stac_world, tmp_path / source, source, max_cloud=20, dry_run=True), settings,
                           _run(s3_server))
        chosen[source] = [(r["tile"], r.get("before"), r.get("after"), r["status"]) for r in data["pairs"]]
    assert chosen["api"] == chosen["static"] == chosen["geoparquet"] == [
        *[(t, b, a, "chosen") for t, b, a in sf.expected_pairs(20)], ("T33UUP", None, None, "unpaired")]
    assert "least cloudy 33 %" in data["pairs"][-1]["error"]
    # the command line: the same search, the table printed
    code = main(["archive", "--catalog", stac_world.api, "--collections", sf.COLLECTION,
                 "--bbox", ",".join(map(str, stac_world.bbox)), "--before-dates", sf.BEFORE, "--after-dates", sf.AFTER,
                 "--max-cloud", "20", "--dry-run", "--model", "cva", "--assets", "red,nir",
                 "--output-prefix", str(tmp_path / "cli"),
                 "--storage-options", json.dumps({"s3": s3_server})])
    out = capsys.readouterr().out
    assert code == 0
    assert "T33UVP: S2B_33UVP_20230612_0_L2A (2023-06-12, cloud 4 %) -> S2B_33UVP_20240615_0_L2A (2024-06-15, cloud 9 %)" in out
    assert "T33UUP: no pair: no item in the after window" in out and "search-pairs.csv" in out


@pytest.mark.slow
def test_a_pair_across_the_sentinel2_baseline_change_shows_no_change(tmp_path, ray_local):
    """The same surface before (baseline 03.01) and after (05.09, DN + 1000, Earth Search's offset): no change."""
    bands = {k: sf.BANDS[k] for k in ("red", "green", "blue")}
    urls = []
    for name, baseline, dn_offset, raster_bands in [("old", "03.01", 0, "scale-only"), ("new", "05.09", 1000, "earth-search")]:
        files = sf.write_scene(tmp_path / name, "33UVP", seed=7, dn_offset=dn_offset, bands=bands, with_scl=False)
        item = sf.make_item(f"S2B_33UVP_{name}", "33UVP", "2021-06-20" if name == "old" else "2024-06-20", 3.0, 22,
                            {k: str(p) for k, p in files.items()}, baseline=baseline, raster_bands=raster_bands)
        (tmp_path / f"{name}.json").write_text(json.dumps(item))
        urls.append(str(tmp_path / f"{name}.json"))
    maps = {}
    for name, after in (("across", urls[1]), ("same", urls[0])):
        summary = run_pair(MapSpec(before=urls[0], after=after, model="tinycd", threshold=0.5, tile=64, halo=16,
                                   probability="float32"),
                           RunOptions(output=str(tmp_path / f"{name}.tif"), batch_size=2))
        maps[name] = _probability(tmp_path / f"{name}.tif")
        assert summary.change["pixels"]["changed"] == 0 and summary.change["pixels"]["valid"] == 64 * 64 - 1, (
            name, summary.change)
    # the map across the change is the map of the scene against itself
    np.testing.assert_array_equal(maps["across"][1], maps["same"][1])
    valid = maps["same"][1]
    assert np.abs(maps["across"][0][valid] - maps["same"][0][valid]).max() <= 1e-6


@pytest.mark.parametrize("change, error, words", [
    (dict(catalog="http://127.0.0.1:9/stac"), CatalogError, "cannot be reached"),
    (dict(before_dates="2010-06-01/2010-06-30", after_dates="2011-06-01/2011-06-30"), CatalogError, "gave no pair"),
    (dict(collections=("sentinel-3-olci",)), CatalogError, "has no collection 'sentinel-3-olci'"),
    (dict(before_dates="2023-06-01"), WindowError, "is not a date range"),
    (dict(before_dates=sf.AFTER, after_dates=sf.BEFORE), WindowError, "does not end before the AFTER window"),
    (dict(before_dates=None), ChangemapError, "needs --before-dates"),
    (dict(manifest="pairs.csv"), ChangemapError, "give one source of pairs"),
])
def test_bad_searches_are_one_paragraph_fast_and_write_nothing(stac_world, s3_server, tmp_path, no_pixel_read,
                                                               change, error, words):
    prefix = tmp_path / "maps"
    start = time.monotonic()
    with pytest.raises(error, match=words) as exc:
        run_archive(_search(stac_world, prefix, **change), MapSettings(assets=KEYS, **SETTINGS), _run(s3_server))
    assert time.monotonic() - start < 15 and "\n" not in str(exc.value)
    assert not prefix.exists()


def test_an_item_without_the_asked_bands_is_refused_before_anything_runs(stac_world, s3_server, tmp_path,
                                                                         no_pixel_read):
    prefix = tmp_path / "maps"
    with pytest.raises(ItemError, match="'B99'") as exc:
        run_archive(_search(stac_world, prefix), MapSettings(**{**SETTINGS, "assets": ("red", "B99")}), _run(s3_server))
    assert "--assets" in str(exc.value) and "\n" not in str(exc.value)
    assert not prefix.exists()
