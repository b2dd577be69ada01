"""The stream on a two-node Ray cluster on 127.0.0.1: CPU stages run on both nodes, the map equals one node's."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.config import MapSpec, RunOptions
from tests import helpers
from tests.conftest import REPO


def _stop(proc: subprocess.Popen) -> None:
    """Stop a node by its own process group (never `ray stop`, which would end every Ray on the machine)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _wait_for(log: Path, text: bytes, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(1)


# A head and a second node on 127.0.0.1, in one process the test starts in its own session. Ray's own
# multi-node test harness (ray.cluster_utils.Cluster) starts the nodes without `ray start`, whose
# worker-node path would first look for the machine's network address: every address stays loopback.
CLUSTER = """
import os, sys, time
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
from ray.cluster_utils import Cluster
node = dict(num_cpus=2, object_store_memory=100 * 1024**2, node_ip_address="127.0.0.1")
cluster = Cluster(initialize_head=True, head_node_args=dict(include_dashboard=False, **node))
cluster.add_node(**node)
cluster.wait_for_nodes()
print("ADDRESS", cluster.address, flush=True)
time.sleep(3600)
"""


def _tall_pair(synthetic, folder: Path) -> dict[str, str]:
    """The synthetic pair three times over, one above the other: 11 rows of 64-px tiles, so 11 decode tasks.

    SPREAD places each task on a node with room at that moment in the head's view of the cluster,
    which lags under load: with the 4 rows of the pair itself, a loaded CI once saw every decode on one node.
    """
    pair = {}
    for date in ("before", "after"):
        with rasterio.open(synthetic[date]) as src:
            data = src.read()
        pair[date] = helpers.write_tif(folder / f"{date}.tif", np.concatenate([data] * 3, axis=1))
    return pair


@pytest.mark.slow
def test_two_nodes_share_the_cpu_stages_and_make_the_same_map(synthetic, tmp_path, ray_local, prefect_api_env):
    pair = _tall_pair(synthetic, tmp_path)
    env = {**prefect_api_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "cluster.log"
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(log, b"ADDRESS", cluster)
        address = log.read_text().split("ADDRESS", 1)[1].split()[0]
        assert address.startswith("127.0.0.1:")
        args = [pair["before"], pair["after"], "--tile", "64", "--halo", "16",
                "--probability", "float32", "--json"]
        cluster_out = tmp_path / "cluster.tif"
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args, "-o", str(cluster_out),
                               "--ray-address", address, "--workdir", str(tmp_path / "w"), "--keep-workdir"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads([x for x in done.stdout.splitlines() if x.startswith("{")][-1])
        assert summary["ray_cluster"] == address
        assert cluster.poll() is None  # the run left the cluster it attached to running
    finally:
        _stop(cluster)
    # The decode tasks (read, warp, zarr encode) ran on both nodes: each record names its node.
    records = list((tmp_path / "w").glob("changemap-*/records/ingest/*"))
    assert len(records) == summary["chunks_decoded"] == 11 * 5
    assert len({r.read_text() for r in records}) == 2
    # The same map as on one local node (this process's).
    spec = MapSpec(before=pair["before"], after=pair["after"], tile=64, halo=16,
                   probability="float32")
    run = RunOptions(output=str(tmp_path / "local.tif"), workdir=str(tmp_path / "local"))
    helpers.make_map(spec, run)
    with rasterio.open(cluster_out) as a, rasterio.open(run.output) as b:
        np.testing.assert_array_equal(a.read(), b.read())
