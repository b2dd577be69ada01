"""The cluster definitions and the image (Docker/Kubernetes are not available here): parse them and check
the fields the code relies on."""
from __future__ import annotations

import re

import tomllib
import yaml

from tests.conftest import REPO

RAY_DIR = REPO / "infra" / "ray"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/changemap/changemap:{VERSION}"


def _dockerfile() -> list[tuple[str, str]]:
    text = (RAY_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_builds_the_package_on_a_gpu_ray_image():
    steps = _dockerfile()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG")
    base = next(a for k, a in steps if k == "FROM").replace("${RAY_VERSION}", args["RAY_VERSION"])
    assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py311-gpu", base), base
    copied = " ".join(a for k, a in steps if k == "COPY")
    for needed in ("pyproject.toml", "constraints.txt", "pipeline", "flows", "models"):
        assert needed in copied
    installs = [a for k, a in steps if k == "RUN" and "pip install" in a]
    assert installs and all("-c constraints.txt" in a for a in installs)  # torch pinned, as in CI
    assert f"-t {IMAGE}" in (RAY_DIR / "Dockerfile").read_text()  # the documented build tag
    assert any(k == "CMD" and "changemap" in a for k, a in steps)
    env = " ".join(a for k, a in steps if k == "ENV").split()
    from pipeline.session import FREE_OBJECTS_PERIOD_MS  # cluster nodes free objects as a local runtime does

    assert f"RAY_free_objects_period_milliseconds={FREE_OBJECTS_PERIOD_MS}" in env


def test_cluster_launcher_config_runs_gpu_workers_from_the_image():
    cfg = yaml.safe_load((RAY_DIR / "cluster.yaml").read_text())
    assert cfg["docker"]["image"] == IMAGE
    types = cfg["available_node_types"]
    head, workers = types[cfg["head_node_type"]], [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # inference actors (num_gpus=1) never land on the head
    assert workers and all(w["resources"]["GPU"] >= 1 and w["max_workers"] >= 1 for w in workers)
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    worker_cmd = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head --port=6379" in head_cmd and "--num-gpus=0" in head_cmd
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_cmd
    assert "ray stop" not in head_cmd + worker_cmd


def test_kuberay_cluster_has_a_gpu_worker_group_on_the_same_image():
    doc = yaml.safe_load((RAY_DIR / "raycluster.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = doc["spec"]
    ray_version = dict(a.split("=", 1) for k, a in _dockerfile() if k == "ARG")["RAY_VERSION"]
    assert spec["rayVersion"] == ray_version
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_containers = head["template"]["spec"]["containers"]
    assert [c["image"] for c in head_containers] == [IMAGE]
    assert {p["containerPort"] for p in head_containers[0]["ports"]} >= {6379, 10001}
    gpu_groups = [g for g in spec["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus") == "1"]
    assert gpu_groups
    for group in gpu_groups:
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == IMAGE
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        # storage credentials come from a secret, never from the manifest itself
        assert container["envFrom"][0]["secretRef"]["name"]
        assert "env" not in container or not any("SECRET" in e["name"] for e in container["env"])
