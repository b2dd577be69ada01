"""A local pipeline Ray listens on loopback only (checked in a fresh process, as a user runs it)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import pipeline.ray_runtime as rt, ray, json
started = rt.ensure_ray(num_cpus=1, object_store_memory=80 * 1024**2)
print(json.dumps({"started": started, "nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
                  "ip": ray.util.get_node_ip_address()}))
rt.shutdown_if_started(started)
"""


def test_local_ray_started_by_the_pipeline_is_on_loopback():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180, check=True).stdout
    line = [x for x in out.splitlines() if x.startswith("{")][-1]
    assert '"started": true' in line and '"nodes": ["127.0.0.1"]' in line and '"ip": "127.0.0.1"' in line


def test_an_explicit_cluster_address_is_not_pinned_to_loopback():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_ADDRESS"] = "ray://head.invalid:10001"  # only read here, never contacted
    code = "import os, pipeline; print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "None"
