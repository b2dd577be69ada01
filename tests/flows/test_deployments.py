"""Deployments: the shipped prefect.yaml builds, and a served deployment's triggered run executes the flow."""
from __future__ import annotations

import datetime
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import typing

import pytest

from flows.archive import process_archive
from flows.deployments import DeploymentFileError, read_definitions, to_deployment
from tests.conftest import LEVIR_1024, REPO, require
from tests.data.levir_archive import make_levir_archive

PREFECT_YAML = REPO / "infra" / "prefect" / "prefect.yaml"


def test_shipped_deployments_build_with_schedules_and_valid_parameters():
    entries = read_definitions(PREFECT_YAML)
    assert {e["name"] for e in entries} == {"nightly-archive", "yearly-mosaic", "weekly-sentinel2"}
    flow_params = set(inspect.signature(process_archive.fn).parameters)
    for entry in entries:
        dep = to_deployment(entry)
        assert dep.flow_name == "process_archive" and dep.entrypoint == "flows.archive.process_archive"
        assert [s.schedule.cron for s in dep.schedules] == [entry["schedules"][0]["cron"]]
        assert set(dep.parameters) <= flow_params
        assert entry["work_pool"]["name"] == "gpu-pool"  # what `prefect deploy` registers against
        assert not {"storage_options", "key", "secret"} & set(dep.parameters)  # no credentials in parameters
        assert "storage_options" not in (dep.parameters.get("run") or {})
        # Each parameter object validates as the flow's own (unknown fields would be refused).
        hints = typing.get_type_hints(process_archive.fn)
        for name, value in dep.parameters.items():
            hints[name](**value)


def test_the_weekly_stac_deployment_searches_a_rolling_window_a_year_apart():
    from pipeline.archive.windows import check_windows, parse_window
    from pipeline.checks import check_source
    from pipeline.config import ArchiveOptions

    entry = next(e for e in read_definitions(PREFECT_YAML) if e["name"] == "weekly-sentinel2")
    options = ArchiveOptions(**to_deployment(entry).parameters["archive_options"])
    check_source(options)  # a catalog, its collections, both windows in order
    now = datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc)
    before, after = parse_window(options.before_dates, now=now), parse_window(options.after_dates, now=now)
    check_windows(before, after)
    assert after == (now - datetime.timedelta(days=30), now)
    assert before == (now - datetime.timedelta(days=395), now - datetime.timedelta(days=365))
    assert options.catalog.startswith("https://") and options.collections == ("sentinel-2-l2a",)


def test_bad_deployment_files_are_clear_errors(tmp_path):
    with pytest.raises(DeploymentFileError, match="does not exist"):
        read_definitions(tmp_path / "missing.yaml")
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: flows/archive.py:no_such_flow\n")
    with pytest.raises(DeploymentFileError, match="does not name a flow"):
        to_deployment(read_definitions(bad)[0])


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_served_deployment_run_processes_an_archive(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    records = make_levir_archive(require(LEVIR_1024), tmp_path / "data", per_tile=1)[:2]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,before,after\n" + "".join(f"{r['id']},{r['before']},{r['after']}\n" for r in records))
    out = tmp_path / "maps"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--file", str(PREFECT_YAML), "--deployment",
           "nightly-archive", "--param", f"manifest={manifest}", "--param", f"output_prefix={out}",
           "--param", "workdir=null", "--param", "tile=256", "--param", "halo=32"]
    served = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.read_deployment_by_name("process_archive/nightly-archive")
                    break
                except Exception:  # noqa: BLE001 - the server may not answer yet
                    assert served.poll() is None, served.stdout.read().decode()[-3000:]
                    assert time.monotonic() < deadline, "changemap serve did not register the deployment"
                    time.sleep(1)
        run = run_deployment("process_archive/nightly-archive", timeout=400, poll_interval=2)
        assert run.state.is_completed(), (run.state, served.stdout and "")
        assert run.state.message == "2 pairs: 2 succeeded, 0 failed, 0 skipped (complete)"
        summary = json.loads((out / "archive-summary.json").read_text())
        assert summary["counts"]["succeeded"] == 2
        assert sorted(p.name for p in out.glob("*.tif")) == sorted(f"{r['id']}.tif" for r in records)
    finally:
        os.killpg(served.pid, signal.SIGINT)
        try:
            served.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait()
