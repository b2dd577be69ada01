"""The session: a local Ray on loopback only, attaching to a cluster, what it starts at once and owns until it ends."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _fresh_process(code: str) -> dict:
    """Run ``code`` in a new Python process as a user's run would start (no Ray settings inherited); its last JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180, check=True).stdout
    return json.loads([x for x in out.splitlines() if x.startswith("{")][-1])


PROBE = """
import json, os, subprocess
from pipeline.session import start_ray
import ray
started = start_ray(num_cpus=1, object_store_memory=80 * 1024**2)
pid = str(os.getpid())
listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout.splitlines()
ours = [line.split()[3] for line in listening if "raylet" in line or "gcs_server" in line]
print(json.dumps({"started": started, "nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
                  "ip": ray.util.get_node_ip_address(), "sockets": ours,
                  "task": ray.get(ray.remote(lambda: 1).remote())}))
ray.shutdown()
"""


@pytest.mark.slow
def test_local_ray_started_by_the_pipeline_is_on_loopback():
    """On 127.0.0.1 only: its node, and every port its raylet and GCS listen on; Ray runs tasks."""
    found = _fresh_process(PROBE)
    assert found["started"] is True and found["nodes"] == ["127.0.0.1"] and found["ip"] == "127.0.0.1"
    assert found["task"] == 1 and found["sockets"]
    assert all(s.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for s in found["sockets"]), found["sockets"]


FREED = """
import json, time
from pipeline.session import start_ray
import numpy as np, ray
started = start_ray(num_cpus=1, object_store_memory=256 * 1024**2)
for i in range(8):  # 32 MiB objects released 0.1 s after their put, like a stream's segments
    ref = ray.put(np.full(32 * 2**20, i, np.uint8))
    del ref
    time.sleep(0.1)
with open("/proc/self/smaps_rollup") as f:  # the store's pages this process has touched
    touched = sum(int(line.split()[1]) for line in f if line.startswith("Pss_Shmem")) // 1024
print(json.dumps({"touched_mib": touched}))
ray.shutdown()
"""


@pytest.mark.slow
def test_released_objects_leave_the_store_soon_so_its_space_is_reused():
    """With Ray's default (frees flushed once a second) the eight puts touched 191-223 MiB of the store; here 32-63."""
    found = _fresh_process(FREED)
    assert 32 <= found["touched_mib"] <= 4 * 32


def test_a_local_runtime_is_refused_when_ray_was_imported_first_unpinned():
    """ray imported before pipeline, nothing set: a local runtime would listen on the network, so none starts."""
    code = ("import json, ray\nfrom pipeline.errors import ChangemapError\nfrom pipeline.session import start_ray\n"
            "try:\n    start_ray(num_cpus=1)\n    said = None\nexcept ChangemapError as exc:\n    said = str(exc)\n"
            "print(json.dumps({'said': said, 'up': ray.is_initialized()}))")
    found = _fresh_process(code)
    assert found["up"] is False and "import pipeline first" in found["said"]


def test_an_explicit_cluster_address_is_not_pinned_to_loopback():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_ADDRESS"] = "ray://head.invalid:10001"  # only read here, never contacted
    code = "import os, pipeline; print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "None"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_run_attaches_to_an_existing_cluster_with_ray_address(synthetic, tmp_path, prefect_api_env):
    """A head node started here on 127.0.0.1 (stopped by its own process id, never `ray stop`)."""
    import signal
    import time

    port = _free_port()
    import secrets

    # Ray 2.5x+ heads use token authentication: the driver needs the same token.
    env = {**prefect_api_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # its own session folder; short (socket paths <108)
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", f"--object-store-memory={100 * 1024**2}",
         f"--temp-dir={ray_tmp}"],
        env=env, stdout=(tmp_path / "head.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        out = tmp_path / "change.tif"
        cmd = [sys.executable, "-m", "pipeline.cli", "run", str(synthetic["before"]), str(synthetic["after"]),
               "-o", str(out), "--tile", "128", "--halo", "16", "--ray-address", address, "--json"]
        deadline = time.monotonic() + 60
        while b"Ray runtime started" not in (tmp_path / "head.log").read_bytes():  # ready for drivers
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(1)
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads([x for x in done.stdout.splitlines() if x.startswith("{")][-1])
        assert summary["ray_cluster"] == address and summary["device"] == "cpu" and out.exists()
        assert head.poll() is None  # the run detached without stopping the cluster it attached to
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(2)  # a graceful shutdown takes ~30 s: the whole process group is killed after 2
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


WARM_PROBE = """
import json, ray
from pipeline.config import MapSpec, RunOptions
from pipeline.session import Session
seen = {}
spec = MapSpec(before="examples/levir_test_1_A.tif", after="examples/levir_test_1_B.tif")
run = RunOptions(output="/tmp/changemap-warm-probe-never-written.tif", batch_size=2)
with Session(run) as session:
    plan = session.plan(spec, run)
    seen["ray_up_after_plan"] = ray.is_initialized()
    startup = session.start(plan)
    seen["startup"] = {k: v > 0 for k, v in startup.items()}
    seen["pool_up"] = len(session.pool(plan).actors) == 1
    seen["the_map_borrows_the_warm_pool"] = session.pool(plan) is session.pool(plan)
    from prefect.settings import get_current_settings
    seen["heartbeat"] = get_current_settings().flows.heartbeat_frequency
    seen["ray_up_in_session"] = ray.is_initialized()
seen["ray_up_at_end"] = ray.is_initialized()
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_a_session_starts_the_model_actors_that_the_run_then_borrows():
    """``Session.start(plan)``: actors started while Prefect's API starts are the ones the map uses; all stop with it."""
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # a set API: none is started, none contacted
    out = subprocess.run([sys.executable, "-c", WARM_PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    seen = json.loads([x for x in out.splitlines() if x.startswith("{")][-1])
    assert not seen["ray_up_after_plan"]  # the checks start nothing
    assert seen["pool_up"] and seen["the_map_borrows_the_warm_pool"] and seen["ray_up_in_session"]
    assert not seen["ray_up_at_end"]
    assert seen["heartbeat"] is not None  # a real API server keeps its flow-run heartbeats
    assert seen["startup"] == {"ray": True, "model actors": True}  # seconds to start each; no API was started


EPHEMERAL_PROBE = """
import json
from pipeline.session import Session
from prefect.settings import get_current_settings
with Session() as session:
    startup = session.start()
    print(json.dumps({"heartbeat": get_current_settings().flows.heartbeat_frequency,
                      "started": sorted(k for k, v in startup.items() if v > 0)}))
"""


@pytest.mark.slow
def test_flow_runs_on_an_ephemeral_api_send_no_heartbeats(tmp_path):
    """The API ends with the process: nobody would read the heartbeats, and stopping them cost up to a second."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    out = subprocess.run([sys.executable, "-c", EPHEMERAL_PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert json.loads([x for x in out.splitlines() if x.startswith("{")][-1]) == {"heartbeat": None,
                                                                                "started": ["prefect api", "ray"]}


def test_a_session_hands_its_idle_map_writer_to_the_next_map(ray_local):
    """An actor start is a process start: the next map on a node gets the session's idle writer there, one that
    failed is never handed out again, and closing the session ends them all."""
    import ray

    from pipeline.session import Session

    node = ray.get_runtime_context().get_node_id()
    with Session() as session:
        with session.map_writer(node) as first:
            ray.get(first.abort.remote())
        with session.map_writer(node) as again, session.map_writer(node) as concurrent:
            assert again == first and concurrent != first  # two maps at once: two writers
        with pytest.raises(ValueError), session.map_writer(node) as failing:
            raise ValueError("the map failed")
        with session.map_writer(node) as after:
            assert after != failing
    for writer in (first, concurrent, after):
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(writer.abort.remote(), timeout=60)
