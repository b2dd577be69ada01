"""Archive planning: manifests, glob pairing, the completeness check of existing outputs, the summary."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from pipeline import archive
from pipeline.archive import ManifestError, Pair, PairResult
from pipeline.config import MapSpec
from pipeline.io import fs, raster


def test_csv_manifest_with_relative_entries_and_default_outputs():
    text = "id,before,after,output\nt1,a/1.tif,s3://b/after/1.tif,\nt2,/abs/2.tif,b/2.tif,s3://maps/custom.tif\n"
    plan = archive.parse_manifest(text, "s3://bucket/lists/manifest.csv", "s3://maps/run1")
    assert plan.pairs == (
        Pair("t1", "s3://bucket/lists/a/1.tif", "s3://b/after/1.tif", "s3://maps/run1/t1.tif"),
        Pair("t2", "/abs/2.tif", "s3://bucket/lists/b/2.tif", "s3://maps/custom.tif"),
    )


def test_jsonl_manifest():
    text = '{"id": "x", "before": "b.tif", "after": "a.tif"}\n\n{"id": "y", "before": "c.tif", "after": "d.tif"}\n'
    plan = archive.parse_manifest(text, "/data/m.jsonl", "/out")
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
        archive.parse_manifest(text, "m.csv", "/out")


def test_pairing_by_stem_reports_unpaired_files():
    before = ["s3://b/2019/T1.tif", "s3://b/2019/T2.tif", "s3://b/2019/T9.tif"]
    after = ["s3://b/2023/T1.tif", "s3://b/2023/T2.tif", "s3://b/2023/T3.tif"]
    plan = archive.pair_files(before, after, "stem", "s3://maps")
    assert [(p.id, p.before, p.after, p.output) for p in plan.pairs] == [
        ("T1", before[0], after[0], "s3://maps/T1.tif"), ("T2", before[1], after[1], "s3://maps/T2.tif")]
    assert [u for u, _ in plan.unpaired] == ["s3://b/2019/T9.tif", "s3://b/2023/T3.tif"]


def test_pairing_by_regex_named_group():
    before = ["/d/S2_T33UVP_20190701.tif", "/d/S2_T33UVQ_20190701.tif"]
    after = ["/e/S2_T33UVQ_20230703.tif", "/e/S2_T33UVP_20230703.tif", "/e/readme.txt"]
    plan = archive.pair_files(before, after, r"_(?P<tile>T\d{2}[A-Z]{3})_", "/out")
    assert [(p.id, p.before, p.after) for p in plan.pairs] == [
        ("T33UVP", before[0], after[1]), ("T33UVQ", before[1], after[0])]
    assert [(u, why.split(" --pair-by")[0]) for u, why in plan.unpaired] == [
        ("/e/readme.txt", "AFTER file does not match")]


@pytest.mark.parametrize("rule, message", [("(", "neither 'stem' nor a valid regex"), (r"T\d+", "named group")])
def test_bad_pairing_rules(rule, message):
    with pytest.raises(ManifestError, match=message):
        archive.pair_files(["/a/T1.tif"], ["/b/T1.tif"], rule, "/out")


def test_pairing_rule_that_merges_files_is_an_error():
    with pytest.raises(ManifestError, match="same key"):
        archive.pair_files(["/a/T1_x.tif", "/a/T1_y.tif"], ["/b/T1.tif"], r"(?P<k>T\d)", "/out")


def _changemap_output(path, synthetic, spec: MapSpec) -> None:
    info = raster.read_info(str(synthetic["before"]))
    g = info.grid
    block = ((0, 0, g.height, g.width), np.zeros((1, g.height, g.width), "uint8"), np.ones((g.height, g.width), bool))
    raster.write_cog(str(path), g, 1, "uint8", [block], tags={"CHANGEMAP_CONFIG": json.dumps(spec.stamp())})


def test_existing_outputs_are_checked_not_assumed(synthetic, tmp_path):
    out = tmp_path / "t1.tif"
    pair = Pair("t1", str(synthetic["before"]), str(synthetic["after"]), str(out))
    cfg = MapSpec(before=pair.before, after=pair.after)
    assert archive.existing_output(pair, cfg)[0] == "missing"
    _changemap_output(out, synthetic, cfg)
    state, reason, mp = archive.existing_output(pair, cfg)
    assert (state, reason) == ("complete", "") and mp == pytest.approx(0.069)
    other = MapSpec(before=pair.before, after=pair.after, model="changer-r18", threshold=0.3, statistics="scene")
    state, reason, _ = archive.existing_output(pair, other)
    assert state == "foreign" and "model, threshold, statistics differ" in reason
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # someone else's truncated file under our name
    state, reason, _ = archive.existing_output(pair, cfg)
    assert state == "foreign" and "cannot be read" in reason
    raster.write_cog(str(out), raster.read_info(str(synthetic["before"])).grid, 3, "uint8",
                     [], tags={})  # a valid COG, but not a changemap map
    assert "not written by changemap" in archive.existing_output(pair, cfg)[1]


def test_summary_files_and_message(tmp_path):
    results = [PairResult("a", "succeeded", 3.2, 1.0, "https://u:p@h/maps/a.tif?sig=1", tiles=4),
               PairResult("b", "failed", 0.5, 0.0, "/m/b.tif", "InputRasterError: corrupt"),
               PairResult("c", "skipped", 0.0, 1.0, "/m/c.tif"),
               PairResult("x.tif", "unpaired", error="/b/x.tif: no AFTER file")]
    msg = archive.summary_message(results)
    assert msg == "3 pairs: 1 succeeded, 1 failed, 1 skipped (complete); 1 unpaired file(s)"
    csv_url, json_url = archive.write_summary(results, str(tmp_path), {"seconds": 4.0})
    rows = list(csv.DictReader(io.StringIO(fs.read_text(csv_url))))
    assert [r["status"] for r in rows] == ["succeeded", "failed", "skipped", "unpaired"]
    assert rows[0]["output"] == "https://***@h/maps/a.tif?***"  # no credentials in the summary
    doc = json.loads(fs.read_text(json_url))
    assert doc["message"] == msg and doc["counts"]["failed"] == 1 and doc["seconds"] == 4.0
