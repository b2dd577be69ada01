"""Starting, attaching to and stopping Ray for a pipeline run."""
from __future__ import annotations

import logging
import os

import ray

from pipeline.errors import ChangemapError


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None,
               object_store_memory: int = 512 * 1024**2) -> bool:
    """Attach to ``address`` or start a local runtime on loopback; True if this call started it.

    A local runtime listens on 127.0.0.1 only: ``pipeline/__init__`` sets
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before anything imports ray (setting it here
    would be too late).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except ConnectionError as exc:
            raise ChangemapError(
                f"cannot attach to the Ray cluster at {address} ({exc}); check the address (HEAD:6379, or "
                "ray://HEAD:10001 for Ray Client), that the cluster is up and reachable, and, if the cluster uses "
                "token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) here too"
            ) from None
        return True
    ray.init(
        address="local",  # always a new runtime: never a cluster found through /tmp/ray/ray_current_cluster
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=object_store_memory,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return True


def shutdown_if_started(started: bool) -> None:
    """Shut Ray down if :func:`ensure_ray` started (or attached) it in this process."""
    if started and ray.is_initialized():
        ray.shutdown()
