"""The changemap CLI: listing models, and one clear paragraph (no output file) for each bad input."""
from __future__ import annotations

import json
import logging
import sys
import types

import pytest
import torch

from pipeline import cli
from pipeline.cli import errors, main
from pipeline.engine import stream
from pipeline.errors import CorruptRasterError, InputRasterError, MissingRasterError


def test_models_lists_tinycd_with_size_and_weights(capsys):
    assert main(["models", "--json"]) == 0
    infos = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert infos["tinycd"]["parameters"] == 285_128 and infos["tinycd"]["weights"] == ["levir", "whu"]


@pytest.fixture
def not_a_checkpoint(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"\x00garbage")
    return path


@pytest.fixture
def foreign_checkpoint(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"head.weight": torch.zeros(2, 2)}, path)
    return path


CASES = {
    "missing file": (lambda s, t: [str(t / "nope.tif"), str(s["after"])], "does not exist"),
    "corrupt tiff": (lambda s, t: [str(s["before"]), str(s["corrupt"])], "corrupt, truncated or not a GeoTIFF"),
    "no crs": (lambda s, t: [str(s["no_crs"]), str(s["after"])], "has no CRS"),
    "no overlap": (lambda s, t: [str(s["before"]), str(s["far"])], "footprints do not overlap"),
    "band mismatch": (lambda s, t: [str(s["before"]), str(s["four_band"])], "band count mismatch"),
    "unknown model": (lambda s, t: [str(s["before"]), str(s["after"]), "--model", "unet-9000"], "unknown model"),
    "unknown weights": (lambda s, t: [str(s["before"]), str(s["after"]), "--weights", "imagenet"],
                        "neither a known name"),
    "not a checkpoint": (lambda s, t: [str(s["before"]), str(s["after"]), "--weights", str(t / "bad.pth")],
                         "not a readable PyTorch checkpoint"),
    "wrong weights": (lambda s, t: [str(s["before"]), str(s["after"]), "--weights", str(t / "foreign.pth")],
                      "do not fit model 'tinycd'"),
    "unknown protocol": (lambda s, t: ["foo://bucket/a.tif", str(s["after"])], "unknown protocol foo://"),
    "bad tile": (lambda s, t: [str(s["before"]), str(s["after"]), "--tile", "100"], "--tile must be a multiple of 16"),
    "scene statistics, attention model": (
        lambda s, t: [str(s["before"]), str(s["after"]), "--model", "changeformer-mit-b0", "--weights", "none",
                      "--statistics", "scene"], "MultiheadAttention x8"),
    "scene statistics, off-grid halo": (
        lambda s, t: [str(s["before"]), str(s["after"]), "--statistics", "scene", "--halo", "60"],
        "multiples of the model's size divisor 8"),
}


@pytest.mark.usefixtures("prefect_harness", "not_a_checkpoint", "foreign_checkpoint")
@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_end_with_one_clear_error_and_no_output(case, synthetic, tmp_path, capsys):
    make_args, text = CASES[case]
    out = tmp_path / "out" / "change.tif"
    code = main(["run", *make_args(synthetic, tmp_path), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert text in err
    message = [line for line in err.splitlines() if line.startswith("changemap: error:")]
    assert len(message) == 1, err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


@pytest.mark.usefixtures("prefect_harness")
def test_an_existing_output_is_not_replaced_without_overwrite(synthetic, tmp_path, capsys):
    out = tmp_path / "change.tif"
    out.write_bytes(b"precious")
    assert main(["run", str(synthetic["before"]), str(synthetic["after"]), "-o", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("args, message", [
    (["--output-prefix", "{tmp}/maps"], "needs its pairs: a MANIFEST, both --before and --after"),
    (["{tmp}/missing.csv", "--output-prefix", "{tmp}/maps"], "missing.csv does not exist"),
    (["--before", "{tmp}/none/*.tif", "--after", "{tmp}/none/*.tif", "--output-prefix", "{tmp}/maps"],
     "no files match"),
    (["{tmp}/m.csv", "--output-prefix", "{tmp}/maps", "--storage-options", '{"secret": "s3cr3t-value"'],
     "--storage-options is not valid JSON"),
])
def test_archive_input_errors_are_one_clear_line(args, message, tmp_path, capsys, monkeypatch):
    """Said before anything starts: the pairs are listed by the checks (a missing manifest took 10 s of Ray and retries)."""
    from pipeline.session import Session

    def start(*_a, **_k):
        raise AssertionError("Prefect's API, Ray or the model actors started before the archive's pairs were listed")

    monkeypatch.setattr(Session, "start", start)
    monkeypatch.setattr(Session, "start_ray", start)
    (tmp_path / "m.csv").write_text("id,before,after\n")
    code = main(["archive", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "s3cr3t-value" not in err
    assert not (tmp_path / "maps").exists()


def test_an_output_under_a_file_is_refused_before_anything_runs(synthetic, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    code = main(["run", str(synthetic["before"]), str(synthetic["after"]), "-o", str(blocker / "change.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err
    assert blocker.read_text() == "x"


# --- in-flow errors: said once, by the CLI -------------------------------------------------------

def _record(msg: str, exc: BaseException | None = None, level: int = logging.ERROR, name: str = "prefect.task_runs"):
    return logging.LogRecord(name, level, __file__, 1, msg, None, (type(exc), exc, None) if exc else None)


@pytest.mark.parametrize("record,kept", [
    (_record("Task run failed with exception: X - Retries are exhausted", InputRasterError("gone")), False),
    (_record("Encountered exception during execution: X", CorruptRasterError("bad block")), False),
    (_record("Finished in state Failed('Task run encountered an exception CorruptRasterError: AFTER raster ...')"),
     False),
    (_record("Finished in state Failed('Task run encountered an exception RayTaskError(MissingRasterError): ...')"),
     False),
    (_record("Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): ray::decode_chunk() (pid=1)\n"
             "  File ...\npipeline.errors.CorruptRasterError: BEFORE raster ...", name="ray._private.worker"), False),
    (_record("Finished in state Failed('Task run encountered an exception RuntimeError: boom')"), True),
    (_record("Task run failed with exception: X", RuntimeError("a bug")), True),
    (_record("Finished in state Completed()", level=logging.INFO), True),
])
def test_engine_logs_about_a_user_error_are_dropped_and_others_kept(record, kept):
    assert errors._QuietUserErrors().filter(record) is kept


def test_the_filter_sits_on_the_engines_loggers():
    errors.quiet_user_errors()
    errors.quiet_user_errors()  # once is enough, twice does not stack
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine",
                 "ray._private.worker"):
        assert logging.getLogger(name).filters.count(errors._QUIET) == 1


def test_a_user_error_wrapped_by_ray_is_told_by_its_own_message():
    from ray.exceptions import RayTaskError

    cause = MissingRasterError("AFTER raster s3://b/a.tif does not exist")
    wrapped = RayTaskError("decode_chunk", "Traceback (most recent call last):\n  ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, MissingRasterError) and str(wrapped) != str(cause)  # Ray's header, not the message
    assert cli.user_error(wrapped) is cause
    assert cli.user_error(RuntimeError("a bug")) is None


@pytest.mark.parametrize("raised,code", [
    (CorruptRasterError("BEFORE raster a.tif cannot be read at rows 0-512\n(GDAL: bad block)"), 2),
    (RuntimeError("a bug keeps its traceback"), None),
])
def test_errors_from_inside_the_flow(raised, code, synthetic, tmp_path, monkeypatch, capsys):
    def detect_changes(*args, **kwargs):
        raise raised

    monkeypatch.setitem(sys.modules, "flows.change_detection", types.SimpleNamespace(detect_changes=detect_changes))
    asked = {}

    def start(session, plan=None, object_store_memory=None):
        from pipeline.engine.stream import object_store_for

        asked.update(object_store_memory=object_store_memory or object_store_for(plan))
        return {}

    monkeypatch.setattr("pipeline.session.Session.start", start)
    args = ["run", str(synthetic["before"]), str(synthetic["after"]), "-o", str(tmp_path / "c.tif")]
    store = stream.object_store_bytes(3, 1, 512)  # Ray's object store sized for the pair: 3 uint8 bands, 512² tiles
    if code is None:
        with pytest.raises(RuntimeError, match="a bug"):
            main(args)
        return
    assert main(args) == code
    assert asked == {"object_store_memory": store}
    err = capsys.readouterr().err
    assert err == "changemap: error: BEFORE raster a.tif cannot be read at rows 0-512 (GDAL: bad block)\n"


def test_the_console_script_answers_like_main_and_leaves_no_final_collection(capsys):
    """``changemap`` is :func:`main` then ``gc.freeze()``: the exit code is main's, every object is frozen."""
    import gc

    from pipeline.cli import console

    try:
        assert console(["models", "--json"]) == 0
        assert gc.get_freeze_count() > 0
        assert console(["run", "--no-such-option"]) == 2
    finally:
        gc.unfreeze()
    assert "tinycd" in capsys.readouterr().out

