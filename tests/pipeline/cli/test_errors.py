"""A bad run is answered at once, in one paragraph, and leaves nothing behind.

The table holds bad options and inputs. Each must end with exit code 2 and one line on stderr
(``changemap: error: ...``) containing the expected words, no traceback, no secret, and no file
at or beside the output (locally or in the S3 bucket). The flow is replaced by a stub that fails
the test if reached: every case in the table is caught by the checks before Prefect and Ray.
A few cases run as real processes, so that the time counts Python's imports too; two faults
that can only show once the flow runs (a corrupt tile in the middle of a raster, an S3 object
that disappears) run the real flow.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import checks, storage
from pipeline.cli import main
from pipeline.io import fs
from tests.conftest import REPO
from tests.helpers import free_port, tiled_with_corrupt_middle, write_tif

BUCKET = "cli-errors"
SECRET_MARK = "sEcReT"  # part of the S3 test secret: must never reach stderr
PRE_FLOW_SECONDS = 5.0


@pytest.fixture(scope="module")
def world(synthetic, tmp_path_factory, s3_server, status_server):
    """Every bad input the table refers to, by name."""
    d = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(7)
    scene = rng.integers(1, 255, (3, 230, 300), dtype="uint8")
    left, right = scene.copy(), scene.copy()
    left[:, :, 150:] = 0
    right[:, :, :150] = 0
    (d / "not_a_raster.tif").write_text("id,before,after\n")
    (d / "a_folder.tif").mkdir()
    (d / "blocker").write_text("a file, not a folder")
    (d / "bad.pth").write_bytes(b"\x00garbage")
    torch.save({"head.weight": torch.zeros(2, 2)}, d / "foreign.pth")
    paths = {name: str(synthetic[name]) for name in synthetic}
    paths.update({
        "all_nodata": write_tif(d / "all_nodata.tif", np.zeros_like(scene)),
        "left_half": write_tif(d / "left_half.tif", left),
        "right_half": write_tif(d / "right_half.tif", right),
        "not_a_raster": str(d / "not_a_raster.tif"), "a_folder": str(d / "a_folder.tif"),
        "blocker": str(d / "blocker"), "bad_pth": str(d / "bad.pth"), "foreign_pth": str(d / "foreign.pth"),
        "http": status_server, "refused": f"http://127.0.0.1:{free_port()}",
        "s3_options": json.dumps(s3_server, separators=(",", ":")),  # one argument: no blanks
    })
    with storage.using(storage.StorageOptions.from_json(paths["s3_options"])):
        s3, _ = fs.filesystem(f"s3://{BUCKET}")
        if not s3.exists(BUCKET):
            s3.mkdir(BUCKET)
        for name in ("before", "after"):
            s3.put_file(paths[name], f"{BUCKET}/scenes/{name}.tif")
        s3.pipe_file(f"{BUCKET}/maps/taken.tif", b"an earlier map")
    return paths


def _s3_keys(world) -> list[str]:
    with storage.using(storage.StorageOptions.from_json(world["s3_options"])):
        s3, _ = fs.filesystem(f"s3://{BUCKET}")
        s3.invalidate_cache()
        return sorted(s3.find(BUCKET))


@dataclass(frozen=True)
class Case:
    args: str  # after `changemap run`; {name} = a path of `world`, {out} = the output, {tmp} = the test's folder
    text: str  # expected in the one paragraph


S3 = "--storage-options {s3_options}"
PAIR = "{before} {after} -o {out}"
CASES = {
    # options: ranges, choices, spelling
    "tile not a multiple of 16": Case(f"{PAIR} --tile 100", "--tile must be a multiple of 16"),
    "halo as large as the tile": Case(f"{PAIR} --tile 256 --halo 256", "--halo must be between 0 and the tile size"),
    "threshold out of range": Case(f"{PAIR} --threshold 1.5", "--threshold must lie strictly between 0 and 1"),
    "zero batch size": Case(f"{PAIR} --batch-size 0", "--batch-size must be at least 1"),
    "zero workers": Case(f"{PAIR} --workers 0", "--workers must be at least 1"),
    "band 0": Case(f"{PAIR} --bands 0,1,2", "--bands are 1-based band numbers"),
    "negative min area": Case(f"{PAIR} --min-area -5", "--min-area must be 0 or more"),
    "unknown statistics": Case(f"{PAIR} --statistics global", "argument --statistics: invalid choice: 'global'"),
    "tile not a number": Case(f"{PAIR} --tile big", "argument --tile: invalid int value: 'big'"),
    "misspelt option": Case(f"{PAIR} --tiel 512", "unrecognized arguments: --tiel 512 (did you mean --tile?)"),
    "vector format": Case(f"{PAIR} --vector {{tmp}}/changes.shp", "the format comes from the extension"),
    "memory workdir": Case(f"{PAIR} --workdir memory://work", "--workdir memory:// lives inside one process"),
    "storage options not JSON": Case(f"{PAIR} --storage-options {{{{bad", "--storage-options is not valid JSON"),
    "no output": Case("{before} {after}", "--output is required"),
    # places: protocols, output location
    "unknown protocol": Case("foo://bucket/a.tif {after} -o {out}", "uses the unknown protocol foo://"),
    "unknown output protocol": Case("{before} {after} -o bar://maps/a.tif", "--output bar://maps/a.tif uses the unknown protocol bar://"),
    "unknown weights protocol": Case(f"{PAIR} --weights baz://w.pth", "--weights baz://w.pth uses the unknown protocol baz://"),
    "driver not installed": Case("gs://scenes/a.tif {after} -o {out}", "needs the gs:// driver, which is not installed"),
    "output is an input": Case("{before} {after} -o {before}", "would overwrite an input"),
    "output under a file": Case("{before} {after} -o {blocker}/change.tif", "is a file, not a folder"),
    "output is a folder": Case("{before} {after} -o {tmp}", "is a folder; give a file name"),
    "output exists": Case("{before} {after} -o {tmp}/taken.tif", "already exists; pass --overwrite"),
    "stats over the output": Case(f"{PAIR} --stats {{out}}", "--stats {out} would overwrite an input or another output"),
    "workdir under a file": Case(f"{PAIR} --workdir {{blocker}}/work", "is a file; choose a folder"),
    # inputs: existence, readability, grid, content
    "missing before": Case("{tmp}/nope.tif {after} -o {out}", "BEFORE raster {tmp}/nope.tif does not exist; check the path"),
    "missing after": Case("{before} {tmp}/nope.tif -o {out}", "AFTER raster {tmp}/nope.tif does not exist"),
    "truncated tiff": Case("{before} {corrupt} -o {out}", "corrupt, truncated or not a GeoTIFF"),
    "not a raster": Case("{not_a_raster} {after} -o {out}", "cannot be read as a raster"),
    "a folder as input": Case("{a_folder} {after} -o {out}", "is a folder; give the raster file inside it"),
    "no crs": Case("{no_crs} {after} -o {out}", "has no CRS"),
    "no overlap": Case("{before} {far} -o {out}", "the footprints do not overlap"),
    "band count mismatch": Case("{before} {four_band} -o {out}", "band count mismatch"),
    "before all nodata": Case("{all_nodata} {after} -o {out}",
                              "BEFORE raster {all_nodata} has no valid pixel where it overlaps AFTER"),
    "valid areas apart": Case("{left_half} {right_half} -o {out}", "both have data, but never at the same pixel"),
    # remote inputs and outputs: each failure named for what it is
    "endpoint refuses connections": Case(
        "s3://cli-errors/scenes/before.tif {after} -o {out} --storage-options "
        '{{"key":"k","secret":"' + SECRET_MARK + '-x","endpoint_url":"{refused}"}}',
        "the storage endpoint {refused} cannot be reached (Connection refused); check endpoint_url"),
    "access denied": Case("{http}/403/before.tif {after} -o {out}", "is not readable with the given credentials"),
    "missing http object": Case("{http}/404/before.tif {after} -o {out}", "does not exist (HTTP response code: 404)"),
    "missing s3 object": Case(f"s3://{BUCKET}/scenes/gone.tif {{after}} -o {{out}} {S3}",
                              "does not exist (The specified key does not exist"),
    "missing output bucket": Case(f"s3://{BUCKET}/scenes/before.tif s3://{BUCKET}/scenes/after.tif "
                                  f"-o s3://no-such-bucket/maps/a.tif {S3}", "the bucket s3://no-such-bucket does not exist"),
    "s3 output exists": Case(f"s3://{BUCKET}/scenes/before.tif {{after}} -o s3://{BUCKET}/maps/taken.tif {S3}",
                             "already exists; pass --overwrite"),
    # model and weights
    "unknown model": Case(f"{PAIR} --model unet-9000", "unknown model 'unet-9000'"),
    "unknown weights": Case(f"{PAIR} --weights imagenet", "neither a known name"),
    "missing weights file": Case(f"{PAIR} --weights {{tmp}}/nope.pth", "nope.pth"),
    "not a checkpoint": Case(f"{PAIR} --weights {{bad_pth}}", "not a readable PyTorch checkpoint"),
    "weights of another model": Case(f"{PAIR} --weights {{foreign_pth}}", "do not fit model 'tinycd'"),
    "scene statistics, attention model": Case(f"{PAIR} --model changeformer-mit-b0 --weights none --statistics scene",
                                              "MultiheadAttention x8"),
}


def _args(case: Case, world, tmp: Path) -> tuple[list[str], str]:
    names = {**world, "out": str(tmp / "out" / "change.tif"), "tmp": str(tmp)}
    return [a.format(**names) for a in case.args.split(" ")], case.text.format(**names)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def no_flow(monkeypatch):
    """The flow module replaced by one whose flow fails the test: these cases must stop before it."""
    def detect_changes(*args, **kwargs):
        raise AssertionError("the flow started: this error was not caught by the checks before Prefect and Ray")

    monkeypatch.setitem(sys.modules, "flows.change_detection", types.SimpleNamespace(detect_changes=detect_changes))
    monkeypatch.setattr("pipeline.session.Session.start", lambda session, plan=None, object_store_memory=None: {})


def assert_one_paragraph(err: str, text: str) -> str:
    """stderr holds one `changemap: error:` line with ``text``, nothing else that matters, no traceback or secret."""
    lines = [line for line in err.splitlines() if line.strip()]
    message = [line for line in lines if line.startswith("changemap: error: ")]
    assert len(message) == 1 and text in message[0], err
    assert len(lines) <= 4 and "Traceback" not in err and SECRET_MARK not in err, err
    return message[0]


def test_the_table_is_long_enough():
    assert len(CASES) >= 25


@pytest.mark.usefixtures("no_flow")
@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_run_is_refused_before_the_flow_in_one_paragraph(name, world, tmp_path, capsys):
    args, text = _args(CASES[name], world, tmp_path)
    (tmp_path / "taken.tif").write_bytes(b"an earlier map")
    local, remote = _tree(tmp_path), _s3_keys(world)
    capsys.readouterr()
    start = time.perf_counter()
    code = main(["run", *args])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert_one_paragraph(captured.err, text)
    assert captured.out == ""
    assert seconds < PRE_FLOW_SECONDS
    assert _tree(tmp_path) == local and _s3_keys(world) == remote  # nothing at or beside the output
    assert (tmp_path / "taken.tif").read_bytes() == b"an earlier map"


@pytest.mark.parametrize("name", ["tile not a number", "unknown protocol", "missing before"])
def test_a_bad_run_is_answered_within_seconds_by_a_fresh_process(name, world, tmp_path):
    """Timed as a user sees it: Python starting, the CLI's imports, the checks (torch is not imported)."""
    args, text = _args(CASES[name], world, tmp_path)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    assert_one_paragraph(done.stderr, text)
    assert seconds < PRE_FLOW_SECONDS, f"{name}: {seconds:.1f} s"
    assert _tree(tmp_path) == []


# --- faults that show only once the flow runs ---------------------------------------------------

@pytest.mark.usefixtures("prefect_harness", "ray_local")
def test_a_corrupt_tile_in_the_middle_of_a_raster_ends_in_one_paragraph(tmp_path, capfd):
    bad, clean = tiled_with_corrupt_middle(tmp_path)  # header, last tile and masks read fine: the checks pass
    out = tmp_path / "out" / "change.tif"
    code = main(["run", bad, clean, "-o", str(out), "--weights", "none", "--tile", "256", "--halo", "32"])
    err = capfd.readouterr().err
    assert code == 2, err
    message = assert_one_paragraph(err, f"BEFORE raster {bad} cannot be read at rows 256-512, columns 256-512")
    assert "Decoding error" in message and "re-download or re-export it" in message
    assert not out.exists()
    _no_leftovers_beside(out)


def _no_leftovers_beside(out: Path) -> None:
    left = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert left == [], f"left beside the output: {left}"


@pytest.mark.usefixtures("prefect_harness", "ray_local")
@pytest.mark.parametrize("deleted_after", ["the CLI's checks", "the flow's start"])
def test_an_s3_object_that_disappears_ends_in_one_paragraph(deleted_after, world, tmp_path, monkeypatch, capfd):
    """AFTER is deleted once the checks passed (before Prefect starts, or once the flow has found the work
    folder): the stream's reads in Ray tasks find it gone, and say so once."""
    from pipeline.engine import workdir

    key = f"{BUCKET}/vanishing/{tmp_path.name}.tif"
    options = storage.StorageOptions.from_json(world["s3_options"])
    with storage.using(options):
        fs.upload(world["after"], f"s3://{key}")
    real, calls, real_paths = checks.preflight, [], workdir.paths_for

    def delete() -> None:
        with storage.using(options):
            fs.remove_tree(f"s3://{key}")

    def preflight_then_delete(spec, run, **kw):
        result = real(spec, run, **kw)
        calls.append(spec)
        if deleted_after == "the CLI's checks":
            delete()
        return result

    def paths_then_delete(spec, run):
        delete()
        return real_paths(spec, run)

    monkeypatch.setattr(checks, "preflight", preflight_then_delete)
    if deleted_after == "the flow's start":
        monkeypatch.setattr(workdir, "paths_for", paths_then_delete)
    out = tmp_path / "out" / "change.tif"
    code = main(["run", world["before"], f"s3://{key}", "-o", str(out), "--weights", "none", "--tile", "128",
                 "--halo", "16", "--storage-options", world["s3_options"]])
    err = capfd.readouterr().err
    assert code == 2, err
    assert len(calls) == 1  # the flow takes the plan the CLI's session checked: the checks run once
    assert_one_paragraph(err, f"AFTER raster s3://{key} does not exist")
    assert "deleted or replaced it meanwhile" in err
    assert not out.exists()
    _no_leftovers_beside(out)
