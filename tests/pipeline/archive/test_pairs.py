"""Archive planning: manifests, glob pairing, the completeness check of existing outputs, the summary."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from pipeline.archive import pairs, report, skip
from pipeline.archive.pairs import ManifestError, Pair
from pipeline.archive.report import PairResult
from pipeline.cli.run import PER_PAIR
from pipeline.config import ArchiveOptions, MapSpec, ProductSettings, RunOptions
from pipeline.io import cog, fs, raster
from pipeline.products import stac


def test_csv_manifest_with_relative_entries_and_default_outputs():
    text = "id,before,after,output\nt1,a/1.tif,s3://b/after/1.tif,\nt2,/abs/2.tif,b/2.tif,s3://maps/custom.tif\n"
    plan = pairs.parse_manifest(text, "s3://bucket/lists/manifest.csv", "s3://maps/run1")
    assert plan.pairs == (
        Pair("t1", "s3://bucket/lists/a/1.tif", "s3://b/after/1.tif", "s3://maps/run1/t1.tif"),
        Pair("t2", "/abs/2.tif", "s3://bucket/lists/b/2.tif", "s3://maps/custom.tif"),
    )


def test_jsonl_manifest():
    text = '{"id": "x", "before": "b.tif", "after": "a.tif"}\n\n{"id": "y", "before": "c.tif", "after": "d.tif"}\n'
    plan = pairs.parse_manifest(text, "/data/m.jsonl", "/out")
    assert [p.id for p in plan.pairs] == ["x", "y"] and plan.pairs[0].before == "/data/b.tif"


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("name,before,after\nx,a,b\n", "lacks the column"),
    ("id,before,after\nx,a,\n", "has no 'after'"),
    ("id,before,after\nx,a,b\nx,c,d\n", "appears twice"),
    ("id,before,after\nbad/id,a,b\n", "must be letters"),
    ('{"id": "x", "before": "a"\n', "not JSON"),
    ("id,before,after\n", "lists no pairs"),
])
def test_bad_manifests_name_the_problem(text, message):
    with pytest.raises(ManifestError, match=message):
        pairs.parse_manifest(text, "m.csv", "/out")


def test_pairing_by_stem_reports_unpaired_files():
    before = ["s3://b/2019/T1.tif", "s3://b/2019/T2.tif", "s3://b/2019/T9.tif"]
    after = ["s3://b/2023/T1.tif", "s3://b/2023/T2.tif", "s3://b/2023/T3.tif"]
    plan = pairs.pair_files(before, after, "stem", "s3://maps")
    assert [(p.id, p.before, p.after, p.output) for p in plan.pairs] == [
        ("T1", before[0], after[0], "s3://maps/T1.tif"), ("T2", before[1], after[1], "s3://maps/T2.tif")]
    assert [u for u, _ in plan.unpaired] == ["s3://b/2019/T9.tif", "s3://b/2023/T3.tif"]


def test_pairing_by_regex_named_group():
    before = ["/d/S2_T33UVP_20190701.tif", "/d/S2_T33UVQ_20190701.tif"]
    after = ["/e/S2_T33UVQ_20230703.tif", "/e/S2_T33UVP_20230703.tif", "/e/readme.txt"]
    plan = pairs.pair_files(before, after, r"_(?P<tile>T\d{2}[A-Z]{3})_", "/out")
    assert [(p.id, p.before, p.after) for p in plan.pairs] == [
        ("T33UVP", before[0], after[1]), ("T33UVQ", before[1], after[0])]
    assert [(u, why.split(" --pair-by")[0]) for u, why in plan.unpaired] == [
        ("/e/readme.txt", "AFTER file does not match")]


@pytest.mark.parametrize("rule, message", [("(", "neither 'stem' nor a valid regex"), (r"T\d+", "named group")])
def test_bad_pairing_rules(rule, message):
    with pytest.raises(ManifestError, match=message):
        pairs.pair_files(["/a/T1.tif"], ["/b/T1.tif"], rule, "/out")


def test_pairing_rule_that_merges_files_is_an_error():
    with pytest.raises(ManifestError, match="same key"):
        pairs.pair_files(["/a/T1_x.tif", "/a/T1_y.tif"], ["/b/T1.tif"], r"(?P<k>T\d)", "/out")


def _changemap_output(path, synthetic, spec: MapSpec) -> None:
    info = raster.read_info(str(synthetic["before"]))
    g = info.grid
    block = ((0, 0, g.height, g.width), np.zeros((1, g.height, g.width), "uint8"), np.ones((g.height, g.width), bool))
    cog.write_cog(str(path), g, 1, "uint8", [block], tags={"CHANGEMAP_CONFIG": json.dumps(spec.stamp())})


def test_existing_outputs_are_checked_not_assumed(synthetic, tmp_path):
    out = tmp_path / "t1.tif"
    pair = Pair("t1", str(synthetic["before"]), str(synthetic["after"]), str(out))
    cfg = MapSpec(before=pair.before, after=pair.after)
    assert skip.existing_output(pair, cfg)[0] == "missing"
    _changemap_output(out, synthetic, cfg)
    state, reason, mp = skip.existing_output(pair, cfg)
    assert (state, reason) == ("complete", "") and mp == pytest.approx(0.069)
    other = MapSpec(before=pair.before, after=pair.after, model="changer-r18", threshold=0.3, statistics="scene")
    state, reason, _ = skip.existing_output(pair, other)
    assert state == "foreign" and "model, threshold, statistics differ" in reason
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # someone else's truncated file under our name
    state, reason, _ = skip.existing_output(pair, cfg)
    assert state == "foreign" and "cannot be read" in reason
    cog.write_cog(str(out), raster.read_info(str(synthetic["before"])).grid, 3, "uint8",
                     [], tags={})  # a valid COG, but not a changemap map
    assert "not written by changemap" in skip.existing_output(pair, cfg)[1]


def test_pair_outputs_live_under_the_prefix_named_by_the_id():
    pair = Pair("T1", "s3://b/2019/T1.tif", "s3://b/2023/T1.tif", "s3://elsewhere/custom.tif")
    plain = pairs.pair_outputs(pair, ArchiveOptions(output_prefix="s3://maps/run1"))
    assert plain == {"output": "s3://elsewhere/custom.tif", "stats": "s3://maps/run1/T1.stats.json",
                     "vector": None, "quicklook": None, "stac": None}
    # Run options of one pair: the CLI takes none of them for a whole archive.
    assert set(plain) <= set(RunOptions.model_fields) and set(plain) <= set(PER_PAIR)
    every = pairs.pair_outputs(pair, ArchiveOptions(output_prefix="s3://maps/run1/", vector_format="gpkg",
                                                      quicklooks=True, stac=True))
    assert (every["vector"], every["quicklook"], every["stac"]) == (
        "s3://maps/run1/T1.gpkg", "s3://maps/run1/T1.png", "s3://maps/run1/T1/T1.json")


def test_a_complete_map_without_a_requested_extra_output_has_its_products_made_again(synthetic, tmp_path):
    """A missing product, or products stamped with other product settings: the products are made again, not the map."""
    pair = Pair("t1", str(synthetic["before"]), str(synthetic["after"]), str(tmp_path / "t1.tif"))
    cfg = MapSpec(before=pair.before, after=pair.after)
    _changemap_output(tmp_path / "t1.tif", synthetic, cfg)
    extras = pairs.pair_outputs(pair, ArchiveOptions(output_prefix=str(tmp_path), quicklooks=True))
    stats = {"valid_area_km2": 1.0, "made_with": {"map": cfg.stamp(), "products": ProductSettings().to_dict()}}
    (tmp_path / "t1.stats.json").write_text(json.dumps(stats))
    state, reason, _ = skip.existing_output(pair, cfg, extras)
    assert (state, reason) == ("products", "it lacks its quicklook")
    (tmp_path / "t1.png").write_bytes(b"png")
    assert skip.existing_output(pair, cfg, extras)[0] == "complete"
    state, reason, _ = skip.existing_output(pair, cfg, extras, ProductSettings(min_area=50))
    assert (state, reason) == ("products", "its products were made with other settings (min_area differ)")
    (tmp_path / "t1.stats.json").write_text('{"valid_area_km2": 1.0}')  # an older run's, unstamped
    assert skip.existing_output(pair, cfg, extras)[:2] == ("products", "its products carry no stamp of what made them")
    assert skip.read_statistics(extras["stats"]) == {"valid_area_km2": 1.0}
    assert skip.read_statistics(str(tmp_path / "absent.json")) == {}


def test_summary_change_columns_and_totals(tmp_path):
    change = {"valid_area_km2": 0.3222301, "changed_area_km2": 0.0037084, "changed_percent_of_valid": 1.150834,
              "regions": 11, "nodata_fraction": 0.0}
    results = [PairResult("a", "succeeded", 3.0, 0.07, "/m/a.tif", change=change),
               PairResult("b", "skipped", 0.0, 0.07, "/m/b.tif", change={**change, "regions": 4,
                                                                         "changed_area_km2": 0.0062916}),
               PairResult("c", "failed", 0.5, 0.0, "/m/c.tif", "InputRasterError: corrupt")]
    totals = report.summary_totals(results)
    assert totals == {"pairs_with_statistics": 2, "valid_area_km2": 0.64446, "changed_area_km2": 0.01,
                      "changed_percent": pytest.approx(1.5517, abs=1e-4), "regions": 15}
    assert report.totals_message(totals) == ("changed 0.010000 km² of 0.644460 km² valid (1.55 %), 15 regions, "
                                              "over 2 pairs")
    csv_url, json_url = report.write_summary(results, str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(fs.read_text(csv_url))))
    assert list(rows[0]) == list(report.SUMMARY_COLUMNS)
    assert (rows[0]["valid_area_km2"], rows[0]["changed_percent"], rows[0]["regions"]) == ("0.32223", "1.1508", "11")
    assert rows[2]["changed_area_km2"] == rows[2]["regions"] == ""  # no statistics: blank, not 0
    assert json.loads(fs.read_text(json_url))["totals"] == totals
    # Without polygons no pair counts regions, and the total says so.
    assert report.summary_totals([PairResult("a", "succeeded", change={**change, "regions": None})])["regions"] is None


def test_collection_gathers_the_pairs_items_under_their_ids(tmp_path, synthetic):
    grid = raster.read_info(str(synthetic["before"])).grid
    for pid, name in (("p1", "p1"), ("p2", "custom")):  # a manifest output named otherwise than its pair
        item = stac.map_item(str(tmp_path / f"{name}.tif"), grid, before="b.tif", after="a.tif", model="tinycd",
                             weights_sha256=None, threshold=0.5)
        stac.write_item(item, str(tmp_path / pid / f"{pid}.json"))
    items = [("p1", str(tmp_path / "p1" / "p1.json")), ("p2", str(tmp_path / "p2" / "p2.json")),
             ("gone", str(tmp_path / "gone" / "gone.json"))]
    url = report.write_collection(items, str(tmp_path))
    assert url == str(tmp_path / "collection.json")
    doc = json.loads((tmp_path / "collection.json").read_text())
    assert sorted(link["href"] for link in doc["links"] if link["rel"] == "item") == ["./p1/p1.json", "./p2/p2.json"]
    again = json.loads((tmp_path / "p2" / "p2.json").read_text())
    assert again["id"] == "p2" and again["collection"] == "changemap"
    assert report.write_collection(items, str(tmp_path)) == url  # items already in a collection: same result
    assert report.write_collection([("gone", str(tmp_path / "gone.json"))], str(tmp_path / "x")) is None


def test_summary_files_and_message(tmp_path):
    results = [PairResult("a", "succeeded", 3.2, 1.0, "https://u:p@h/maps/a.tif?sig=1", tiles=4),
               PairResult("b", "failed", 0.5, 0.0, "/m/b.tif", "InputRasterError: corrupt"),
               PairResult("c", "skipped", 0.0, 1.0, "/m/c.tif"),
               PairResult("x.tif", "unpaired", error="/b/x.tif: no AFTER file")]
    msg = report.summary_message(results)
    assert msg == "3 pairs: 1 succeeded, 1 failed, 1 skipped (complete); 1 unpaired file(s)"
    csv_url, json_url = report.write_summary(results, str(tmp_path), {"seconds": 4.0})
    rows = list(csv.DictReader(io.StringIO(fs.read_text(csv_url))))
    assert [r["status"] for r in rows] == ["succeeded", "failed", "skipped", "unpaired"]
    assert rows[0]["output"] == "https://***@h/maps/a.tif?***"  # no credentials in the summary
    doc = json.loads(fs.read_text(json_url))
    assert doc["message"] == msg and doc["counts"]["failed"] == 1 and doc["seconds"] == 4.0
