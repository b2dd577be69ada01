"""The checks before a run: cheapest first, one named user error each, nothing left behind."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline import checks, storage
from pipeline.config import MapSpec, RunOptions
from pipeline.errors import (
    EndpointUnreachableError,
    MissingRasterError,
    NoValidPixelsError,
    OutputExistsError,
    OutputLocationError,
    UnknownProtocolError,
    storage_failure,
)
from pipeline.io import fs, read
from tests import helpers
from tests.conftest import REPO


@pytest.mark.parametrize("detail,kind", [
    ("CURL error: Failed to connect to 127.0.0.1 port 1 after 0 ms: Could not connect to server", "unreachable"),
    ("CURL error: Could not resolve host: minio.invalid", "unreachable"),
    ("CURL error: Couldn't resolve host 'x'", "unreachable"),
    ("[Errno 111] Connection refused", "unreachable"),
    ('EndpointConnectionError: Could not connect to the endpoint URL: "http://127.0.0.1:1/b/k"', "unreachable"),
    ("HTTP response code: 403", "denied"),
    ("HTTP response code: 401", "denied"),
    ("An error occurred (403) when calling the HeadObject operation: Forbidden", "denied"),
    ("InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our records", "denied"),
    ("HTTP response code: 404", "missing"),
    ("The specified key does not exist.", "missing"),
    ("NoSuchBucket: The specified bucket does not exist", "missing"),
    ("HTTP response code: 503", "server"),
    ("t.tif: TIFFReadDirectory: Failed to read directory at offset 14031", None),  # 403 in an offset is no HTTP 403
    ("ZIPDecode:Decoding error at scanline 256", None),
    ("'x.tif' not recognized as being in a supported file format", None),
])
def test_storage_messages_are_told_apart(detail, kind):
    assert storage_failure(detail) == kind


# --- coverage: a pair without a pixel valid in both dates is refused --------------------------------

@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("coverage")
    rng = np.random.default_rng(3)
    full = rng.integers(1, 255, (3, 400, 500), dtype="uint8")
    empty = np.zeros_like(full)
    left, right = full.copy(), full.copy()
    left[:, :, 250:] = 0
    right[:, :, :250] = 0
    speck = np.zeros((3, 1200, 1500), dtype="uint8")
    speck[:, 150:153, 180:183] = 9  # 3 x 3 valid pixels between the sample windows
    paths = {name: helpers.write_tif(d / f"{name}.tif", data) for name, data in
             (("full", full), ("empty", empty), ("left", left), ("right", right))}
    paths["speck"] = helpers.write_tif(d / "speck.tif", speck, compress="deflate")
    paths["full_large"] = helpers.write_tif(d / "full_large.tif", np.full_like(speck, 7), compress="deflate")
    return paths


@pytest.mark.parametrize("before,after,text", [
    ("empty", "full", "BEFORE raster .*empty.tif has no valid pixel where it overlaps AFTER.*nodata = 0"),
    ("full", "empty", "AFTER raster .*empty.tif has no valid pixel where it overlaps BEFORE"),
    ("left", "right", "both have data, but never at the same pixel"),
])
def test_a_pair_without_common_valid_pixels_is_refused(scenes, before, after, text):
    with pytest.raises(NoValidPixelsError, match=text):
        checks.check_coverage(checks.plan_grid(scenes[before], scenes[after]))


def test_coverage_looks_at_a_sample_first_and_scans_only_when_it_finds_nothing(scenes, monkeypatch):
    windows = []
    masks = read.AlignedPairReader.masks
    monkeypatch.setattr(read.AlignedPairReader, "masks",
                        lambda self, *w: windows.append(w) or masks(self, *w))
    checks.check_coverage(checks.plan_grid(scenes["full"], scenes["full"]))
    assert len(windows) == 1  # the first sample window already has data in both dates
    windows.clear()
    checks.check_coverage(checks.plan_grid(scenes["speck"], scenes["full_large"]))  # the full scan finds it
    assert len(windows) == 64 + 1
    assert read.overlap_coverage(checks.plan_grid(scenes["speck"], scenes["speck"])).both


def test_coverage_of_a_warped_after_is_looked_for_in_its_footprint(synthetic):
    alignment = checks.plan_grid(str(synthetic["before"]), str(synthetic["after_4326"]))
    assert alignment.warp_after and read.overlap_coverage(alignment) == read.Coverage(True, True, True)


# --- places -------------------------------------------------------------------------------------

def test_an_endpoint_that_refuses_connections_is_named_at_once():
    port = helpers.free_port()
    options = storage.StorageOptions.from_json(json.dumps({"endpoint_url": f"http://127.0.0.1:{port}"}))
    start = time.perf_counter()
    with storage.using(options), pytest.raises(EndpointUnreachableError) as exc:
        checks.check_endpoint("s3://bucket/out.tif", "--output")
    assert time.perf_counter() - start < 3.5
    message = str(exc.value)
    assert f"http://127.0.0.1:{port} cannot be reached (Connection refused)" in message
    assert "endpoint_url in --storage-options" in message and "network" in message


def test_unknown_protocols_and_missing_drivers_are_one_class():
    with pytest.raises(UnknownProtocolError, match="unknown protocol foo://"):
        checks.check_protocol("foo://b/a.tif", "--output")
    with pytest.raises(UnknownProtocolError, match="needs the gs:// driver"):
        checks.check_protocol("gs://b/a.tif", "BEFORE raster")


@pytest.mark.parametrize("extra,text", [
    ({"stats": "{out}"}, "--stats .* would overwrite an input or another output"),
    ({"vector": "{tmp}/a.gpkg", "stats": "{tmp}/a.gpkg"}, "--stats .* would overwrite"),
    ({"workdir": "{tmp}/file/work"}, "--workdir .* is a file; choose a folder"),
    ({"quicklook": "{tmp}/file/q.png"}, "--quicklook .* is a file, not a folder"),
])
def test_every_place_a_run_writes_is_checked(synthetic, tmp_path, extra, text):
    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "out.tif")
    run = RunOptions(output=out, **{k: v.format(tmp=tmp_path, out=out) for k, v in extra.items()})
    with pytest.raises((OutputLocationError,), match=text):
        checks.check_places(MapSpec(before=str(synthetic["before"]), after=str(synthetic["after"])), run)


def test_the_cheap_checks_come_before_the_model(synthetic, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(checks, "check_model", lambda *a: built.append(a))
    spec = MapSpec(before=str(tmp_path / "nope.tif"), after=str(synthetic["after"]), model="unet-9000")
    with pytest.raises(MissingRasterError):
        checks.preflight(spec, RunOptions(output=str(tmp_path / "o.tif")))
    assert built == []


def test_remote_outputs_need_their_bucket_and_leave_no_probe(s3_server):
    options = storage.StorageOptions.from_json(json.dumps(s3_server))
    with storage.using(options):
        s3, _ = fs.filesystem("s3://checks-out")
        if not s3.exists("checks-out"):
            s3.mkdir("checks-out")
        with pytest.raises(OutputLocationError, match="the bucket s3://no-such-bucket does not exist"):
            checks.check_output("s3://no-such-bucket/maps/a.tif", overwrite=False)
        checks.check_output("s3://checks-out/maps/a.tif", overwrite=False)
        assert s3.find("checks-out") == []  # the write probe was removed
        s3.pipe_file("checks-out/maps/a.tif", b"old")
        with pytest.raises(OutputExistsError, match="pass --overwrite"):
            checks.check_output("s3://checks-out/maps/a.tif", overwrite=False)
        checks.check_output("s3://checks-out/maps/a.tif", overwrite=True)
        assert s3.find("checks-out") == ["checks-out/maps/a.tif"]
        s3.rm("checks-out", recursive=True)


def test_a_refused_run_imports_neither_torch_nor_prefect_nor_ray(tmp_path):
    """The CLI's whole way to a user error that needs no model: no torch, no Prefect, no Ray."""
    code = ("import sys; from pipeline.cli import main; "
            f"code = main(['run', {str(tmp_path / 'nope.tif')!r}, {str(tmp_path / 'b.tif')!r}, '-o', 'x.tif']); "
            "print(code, sorted(m for m in ('torch', 'prefect', 'ray', 'models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2 []", out.stderr
    assert "does not exist" in out.stderr
