"""Run folders: one run at a time in a folder, whoever holds it; a dead holder frees it."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipeline.config import MapSpec, RunOptions
from pipeline.engine import workdir
from pipeline.io import fs
from tests.conftest import REPO


def _paths(tmp_path):
    spec = MapSpec(before="b.tif", after="a.tif", tile=256)
    return workdir.paths_for(spec, RunOptions(output="o.tif", workdir=str(tmp_path / "w")))


def test_a_second_run_of_the_same_map_is_refused_while_the_first_holds_its_folder(tmp_path):
    paths = _paths(tmp_path)
    with workdir.locked(paths):
        with pytest.raises(workdir.WorkFolderBusyError, match="another run is making the same map in .* now") as err:
            with workdir.locked(paths):
                pass
        assert '"pid"' in str(err.value)  # the holder is named
    with workdir.locked(paths):  # released: the next run takes it
        pass


def test_a_killed_holder_frees_the_folder(tmp_path):
    """The lock of a process killed outright (SIGKILL) goes with it: the next run is not refused."""
    paths = _paths(tmp_path)
    code = ("import sys, time\nfrom pipeline.engine import workdir\nfrom pipeline.engine.workdir import RunPaths\n"
            f"paths = RunPaths({paths.run_dir!r}, '', '', False)\n"
            "with workdir.locked(paths):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir.WorkFolderBusyError, match=f"'pid': {holder.pid}|\"pid\": {holder.pid}"):
            with workdir.locked(paths):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workdir.locked(paths):
        pass


def test_a_remote_folder_is_locked_by_an_object_that_goes_stale(tmp_path, monkeypatch):
    """In object storage the lock is an object naming its holder; one not refreshed for long is taken over."""
    paths = workdir.RunPaths("memory://changemap-lock-test/work/changemap-0123", "", "", False)
    lock = paths.run_dir + "/" + workdir.LOCK_NAME
    with workdir.locked(paths):
        held = json.loads(fs.read_text(lock))
        assert held["host"] and held["pid"] and held["refreshed"] <= time.time()
        with pytest.raises(workdir.WorkFolderBusyError, match="another run is making the same map"):
            with workdir.locked(paths):
                pass
    assert not fs.exists(lock)  # released
    fs.write_text(lock, json.dumps({"host": "elsewhere", "pid": 1, "refreshed": time.time() - 3600}))
    with workdir.locked(paths):  # a holder that stopped refreshing an hour ago died
        assert json.loads(fs.read_text(lock))["host"] != "elsewhere"
