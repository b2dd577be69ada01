"""Starting, attaching to and stopping Ray for a pipeline run."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

import ray

from pipeline.errors import ChangemapError

# Ray's raylet deletes released objects from the object store in batches, by default once a
# second: a second of the stream's segments and results then stays in the store after use, and
# the store's pages touched by the run grew with it (null model, 8192² pair: the peak of the process
# tree 2,149-2,153 MiB, against 1,957-2,012 MiB at 20 ms; its shared memory 300 against 160 MiB at 50 ms).
FREE_OBJECTS_PERIOD_MS = 20
DEFAULT_OBJECT_STORE = 512 * 1024**2  # a local runtime's, unless the run sizes it (pipeline.engine.stream.object_store_bytes)
TASK_EVENTS_REPORT_S = 1.5  # a little over Ray's task_events_report_interval_ms (1000)


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None,
               object_store_memory: int = DEFAULT_OBJECT_STORE) -> bool:
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
        _system_config={"free_objects_period_milliseconds": FREE_OBJECTS_PERIOD_MS},
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return True


def shutdown_if_started(started: bool) -> None:
    """Shut Ray down if :func:`ensure_ray` started (or attached) it in this process."""
    if started and ray.is_initialized():
        if os.environ.get("CHANGEMAP_TIMELINE"):  # the benchmark's per-stage busy time, outside the timed flow
            # Workers report their task events once a second: a short run's last calls would be missing.
            time.sleep(TASK_EVENTS_REPORT_S)
            ray.timeline(filename=os.environ["CHANGEMAP_TIMELINE"])
        _stop_autoscaler_monitor()
        ray.shutdown()


def _stop_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of a runtime this process started, before ``ray.shutdown``.

    ``ray.shutdown`` stops the GCS before the monitor; the monitor's SIGTERM handler then reports
    to the stopped GCS and hangs until it is killed a second later (Ray 2.60: 1.0 of the 1.35 s
    the shutdown took). A local runtime has no autoscaler to tell, so it is killed at once. Ray
    keeps its processes in a private table: if it moves, this does nothing and Ray stops it.
    """
    node = getattr(ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", None)
    if not isinstance(processes, dict) or not getattr(node, "is_head", lambda: False)():
        return
    for info in processes.get("monitor", []):
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def services(address: str | None = None,
             warm: Callable[[], AbstractContextManager] | None = None,
             object_store_memory: int = DEFAULT_OBJECT_STORE) -> Iterator[dict[str, float]]:
    """Prefect's API and Ray started at the same time, Ray stopped at the end if started here.

    Each takes seconds to start; started one after the other they are most of a small run's
    time. Prefect's ephemeral API (no ``PREFECT_API_URL``) starts in a thread while Ray starts
    here, and then ``warm`` (e.g. the run's model actors, see :func:`pipeline.engine.scene.warm_start`)
    is entered while the API is still starting; a flow run inside the block finds all of it up.
    Flow runs on an ephemeral API send no heartbeats (the API ends with this process).

    Yields the seconds each took to start: ``ray``, ``model actors`` (``warm``) and ``prefect
    api`` (the ephemeral API, in its thread, at the same time as the other two).
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    ephemeral = not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value()
    startup: dict[str, float] = {}

    def prefect_api() -> None:
        if ephemeral:
            from prefect.server.api.server import SubprocessASGIServer

            begin = time.perf_counter()
            try:
                SubprocessASGIServer().start()
            except Exception:  # noqa: BLE001 - the flow starts it itself and reports what fails
                pass
            startup["prefect api"] = time.perf_counter() - begin

    thread = threading.Thread(target=prefect_api, name="prefect-api", daemon=True)
    thread.start()
    started = False
    # Heartbeats let a server notice a crashed flow run; an ephemeral API ends with this process,
    # and stopping the heartbeat thread costs up to a second at the end of every flow run.
    quiet = temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}) if ephemeral else nullcontext()
    try:
        begin = time.perf_counter()
        started = ensure_ray(address, object_store_memory=object_store_memory)
        startup["ray"] = time.perf_counter() - begin
        with ExitStack() as stack:
            if warm is not None:
                begin = time.perf_counter()
                stack.enter_context(warm())
                startup["model actors"] = time.perf_counter() - begin
            stack.enter_context(quiet)
            thread.join()
            yield startup
    finally:
        shutdown_if_started(started)
