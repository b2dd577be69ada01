"""process_archive end to end against a real S3 API (moto on 127.0.0.1) with real LEVIR-CD pairs."""
from __future__ import annotations

import csv
import io
import json

import pyogrio
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, TaskRunFilter
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort
from pydantic import SecretStr

from flows.archive import process_archive
from pipeline import storage
from pipeline.config import ArchiveOptions, MapSettings, RunOptions
from pipeline.errors import InputRasterError
from pipeline.io import cog, fs, raster, read
from pipeline.learn.evaluate import evaluate_pair
from pipeline.learn.metrics import Confusion
from tests.conftest import LEVIR_1024, require
from tests.data.levir_archive import make_corrupt_pair, make_levir_archive

pytestmark = [pytest.mark.usefixtures("prefect_harness", "ray_local"), pytest.mark.slow]

BUCKET = "s3://scenes"
GOOD = 6  # real pairs: the two crops with the most change of each of the three LEVIR-CD test tiles (+ a corrupt pair)


@pytest.fixture(scope="module")
def s3_archive(s3_server, tmp_path_factory):
    """Six real pairs and one corrupt pair uploaded to the S3 server, with a CSV manifest."""
    local = tmp_path_factory.mktemp("levir-archive")
    records = make_levir_archive(require(LEVIR_1024), local, per_tile=2)
    assert len(records) == GOOD
    records.append(make_corrupt_pair(records[0], local))
    storage.install(s3_server)
    s3, _ = fs.filesystem(BUCKET)
    if not s3.exists("scenes"):
        s3.mkdir("scenes")  # no region: moto refuses a LocationConstraint for us-east-1
    rows = ["id,before,after"]
    for rec in records:
        for key, year in (("before", "2019"), ("after", "2023")):
            s3.put_file(rec[key], f"scenes/archive/{year}/{rec['id']}.tif")
        # relative entries resolve against the manifest's own prefix
        rows.append(f"{rec['id']},2019/{rec['id']}.tif,{BUCKET}/archive/2023/{rec['id']}.tif")
    s3.put_file(records[0]["before"], "scenes/archive/2023/extra_only_after.tif")  # unpaired in the glob form
    s3.pipe_file("scenes/archive/manifest.csv", ("\n".join(rows) + "\n").encode())
    s3.pipe_file("scenes/archive/manifest-good.jsonl", "".join(  # the JSON-lines form, without the corrupt pair
        json.dumps({"id": r["id"], "before": f"2019/{r['id']}.tif", "after": f"2023/{r['id']}.tif"}) + "\n"
        for r in records if r["id"] != "corrupt_pair").encode())
    yield {"records": {r["id"]: r for r in records}, "options": s3_server}
    storage.install(None)


def _run(s3_archive, prefix, *, overwrite=False, workdir=None, batch_size=4, **kw):
    run = RunOptions(storage_options=SecretStr(json.dumps(s3_archive["options"])), overwrite=overwrite,
                     workdir=workdir, batch_size=batch_size)
    state = process_archive(ArchiveOptions(output_prefix=prefix, concurrency=2, **kw), MapSettings(tile=256, halo=32),
                            run, return_state=True)
    return state, state.result(raise_on_failure=False)


def _check_maps(s3_archive, data, tmp_path):
    """Each succeeded map, read back from the bucket, is on its BEFORE grid; summed F1 >= 0.90."""
    total = Confusion(0, 0, 0, 0)
    for row in data["pairs"]:
        if row["status"] not in ("succeeded", "skipped"):
            continue
        rec = s3_archive["records"][row["id"]]
        local = tmp_path / f"{row['id']}.tif"
        fs.download(row["output"], str(local))
        assert raster.read_info(str(local)).grid == raster.read_info(rec["before"]).grid
        assert cog.cog_problems(str(local)) == []
        total = total + evaluate_pair(str(local), rec["label"])
    assert total.f1 >= 0.90, total.as_dict()


def _assert_no_secret(s3_archive, texts):
    secret = s3_archive["options"]["secret"]
    for text in texts:
        assert secret not in text


def test_manifest_archive_in_s3_rerun_and_overwrite(s3_archive, tmp_path, capfd, caplog):
    prefix = f"{BUCKET}/maps"
    state, data = _run(s3_archive, prefix, manifest=f"{BUCKET}/archive/manifest.csv", workdir=f"{BUCKET}/work")
    assert state.is_failed() and state.message == f"{GOOD + 1} pairs: {GOOD} succeeded, 1 failed, 0 skipped (complete)"
    assert data["counts"] == {"succeeded": GOOD, "failed": 1, "skipped": 0, "updated": 0, "unpaired": 0}
    assert data["tiles_inferred"] == GOOD and data["model_actors"] == 1
    failed = [r for r in data["pairs"] if r["status"] == "failed"]
    assert [r["id"] for r in failed] == ["corrupt_pair"] and "corrupt" in failed[0]["error"]
    assert not fs.exists(f"{prefix}/corrupt_pair.tif")  # nothing half-written under the final key
    assert fs.glob(f"{BUCKET}/work/**") == []  # work stores in S3 removed after each success
    _check_maps(s3_archive, data, tmp_path)

    summary_csv = fs.read_text(f"{prefix}/archive-summary.csv")
    rows = list(csv.DictReader(io.StringIO(summary_csv)))
    assert [r["status"] for r in rows].count("succeeded") == GOOD and rows[-1]["id"] == "corrupt_pair"
    assert rows[0]["output"] == f"{prefix}/{rows[0]['id']}.tif" and float(rows[0]["megapixels"]) > 0
    summary_json = fs.read_text(f"{prefix}/archive-summary.json")
    assert json.loads(summary_json)["counts"]["failed"] == 1

    # Second run, with another batch size (how a map is made, not what it is): the six complete maps are
    # checked and skipped, nothing is inferred.
    state2, data2 = _run(s3_archive, prefix, manifest=f"{BUCKET}/archive/manifest.csv", batch_size=2)
    assert data2["counts"] == {"succeeded": 0, "failed": 1, "skipped": GOOD, "updated": 0, "unpaired": 0}
    assert data2["tiles_inferred"] == 0

    # With every map complete, nothing starts: no model actor, no inference.
    state_ok, data_ok = _run(s3_archive, prefix, manifest=f"{BUCKET}/archive/manifest-good.jsonl")
    assert state_ok.is_completed() and data_ok["counts"]["skipped"] == GOOD
    assert data_ok["model_actors"] == 0 and data_ok["tiles_inferred"] == 0

    # --overwrite redoes them.
    state3, data3 = _run(s3_archive, prefix, manifest=f"{BUCKET}/archive/manifest.csv", overwrite=True)
    assert data3["counts"]["succeeded"] == GOOD and data3["tiles_inferred"] == GOOD

    # The secret key never reaches logs, summaries, map tags, artifacts or stored parameters.
    tags, _ = read.read_metadata(f"{prefix}/{rows[0]['id']}.tif")
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=200)
        stored = [json.dumps(r.parameters, default=str) for r in runs]
        artifacts = [json.dumps(a.data, default=str) + str(a.description) for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(), flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC, limit=200, offset=0)]
        logs = [log.message for log in client.read_logs(limit=200, offset=0, sort=LogSort.TIMESTAMP_DESC)]
    archive_runs = [r for r in runs if (r.parameters.get("run") or {}).get("storage_options") is not None]
    assert len(archive_runs) >= 3, [r.parameters for r in runs]
    assert all(r.parameters["run"]["storage_options"] == "**********" for r in archive_runs), archive_runs[0].parameters
    assert any("archive-summary" in a or "corrupt_pair" in a for a in artifacts)
    out, err = capfd.readouterr()
    _assert_no_secret(s3_archive, [summary_csv, summary_json, json.dumps(tags), out, err, caplog.text,
                                   *stored, *artifacts, *logs])


def test_glob_form_pairs_by_stem_and_reports_unpaired_with_every_output(s3_archive, tmp_path):
    prefix = f"{BUCKET}/maps-glob"
    extras = dict(before=f"{BUCKET}/archive/2019/*.tif", after=f"{BUCKET}/archive/2023/*.tif", pair_by="stem",
                  vector_format="gpkg", quicklooks=True, stac=True)
    state, data = _run(s3_archive, prefix, **extras)
    assert data["counts"] == {"succeeded": GOOD, "failed": 1, "skipped": 0, "updated": 0, "unpaired": 1}
    unpaired = [r for r in data["pairs"] if r["status"] == "unpaired"]
    assert unpaired[0]["id"] == "extra_only_after.tif" and "no BEFORE file" in unpaired[0]["error"]
    _check_maps(s3_archive, data, tmp_path)

    # Every succeeded pair's outputs, read back from the bucket; the summary agrees with its statistics.
    succeeded = [r["id"] for r in data["pairs"] if r["status"] == "succeeded"]
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(fs.read_text(f"{prefix}/archive-summary.csv")))}
    for pid in succeeded:
        stats = json.loads(fs.read_text(f"{prefix}/{pid}.stats.json"))
        fs.download(f"{prefix}/{pid}.gpkg", str(tmp_path / f"{pid}.gpkg"))
        assert pyogrio.read_info(str(tmp_path / f"{pid}.gpkg"))["features"] == stats["regions"]  # some crops have none
        fs.download(f"{prefix}/{pid}.png", str(tmp_path / f"{pid}.png"))
        with Image.open(tmp_path / f"{pid}.png") as png:
            png.load()
            assert png.width >= 2 * png.height  # BEFORE | AFTER | changes, side by side
        row = rows[pid]
        assert float(row["valid_area_km2"]) == pytest.approx(stats["valid_area_km2"], abs=1e-6)
        assert float(row["changed_area_km2"]) == pytest.approx(stats["changed_area_km2"], abs=1e-6)
        assert float(row["changed_percent"]) == pytest.approx(stats["changed_percent_of_valid"], abs=1e-4)
        assert int(row["regions"]) == stats["regions"]
        assert float(row["nodata_fraction"]) == pytest.approx(stats["nodata_fraction"], abs=1e-6)
    assert rows["corrupt_pair"]["valid_area_km2"] == "" and not fs.exists(f"{prefix}/corrupt_pair.stats.json")
    totals = data["totals"]
    assert totals["pairs_with_statistics"] == GOOD and totals["regions"] > 0
    assert totals["regions"] == sum(int(rows[p]["regions"]) for p in succeeded)
    assert totals["changed_area_km2"] == pytest.approx(sum(float(rows[p]["changed_area_km2"]) for p in succeeded),
                                                       abs=1e-5)
    assert json.loads(fs.read_text(f"{prefix}/archive-summary.json"))["totals"] == totals
    # The STAC Collection lists one Item per pair with a map; each Item's assets are that pair's outputs.
    assert data["collection"] == f"{prefix}/collection.json"
    collection = json.loads(fs.read_text(f"{prefix}/collection.json"))
    assert sorted(link["href"] for link in collection["links"] if link["rel"] == "item") == sorted(
        f"./{p}/{p}.json" for p in succeeded)
    item = json.loads(fs.read_text(f"{prefix}/{succeeded[0]}/{succeeded[0]}.json"))
    assert item["id"] == succeeded[0] and item["assets"]["polygons"]["href"] == f"{prefix}/{succeeded[0]}.gpkg"
    assert {"data", "statistics", "thumbnail"} <= set(item["assets"])

    # A re-run with an output missing makes only that pair's products again, from its kept map (no tile is
    # predicted); the skipped pairs' statistics keep the totals whole.
    s3, _ = fs.filesystem(BUCKET)
    s3.rm(f"scenes/maps-glob/{succeeded[0]}.png")
    state2, data2 = _run(s3_archive, prefix, **extras)
    assert data2["counts"] == {"succeeded": 0, "failed": 1, "skipped": GOOD - 1, "updated": 1, "unpaired": 1}
    assert [r["id"] for r in data2["pairs"] if r["status"] == "updated"] == [succeeded[0]]
    assert fs.exists(f"{prefix}/{succeeded[0]}.png") and data2["tiles_inferred"] == 0
    assert data2["totals"] == pytest.approx(totals)


def test_http_urls_are_read_in_place(s3_archive):
    """http(s):// inputs go through GDAL's /vsicurl/ (range requests), here against the S3 server's plain URLs."""
    rec = next(iter(s3_archive["records"].values()))
    s3, _ = fs.filesystem(BUCKET)
    with open(rec["before"], "rb") as f:
        s3.pipe_file("scenes/public/before.tif", f.read(), ACL="public-read")
    base = s3_archive["options"]["endpoint_url"]
    info = raster.read_info(f"{base}/scenes/public/before.tif", "BEFORE")
    assert info.grid == raster.read_info(rec["before"]).grid and info.count == 3
    with pytest.raises(InputRasterError, match="not readable with the given credentials"):
        raster.read_info(f"{base}/scenes/archive/2019/{rec['id']}.tif", "BEFORE")  # private object
