"""A session: what one command or flow holds for its length, passed to whatever needs it.

A :class:`Session` owns the run's storage options (in force inside it), the Ray runtime (started
on 127.0.0.1, or attached to with ``--ray-address``; stopped at the end only if started here),
the model actors (of one model, weights and batch size at a time: an archive loads its model
once; a run of another model closes them first), the map writer actors (one per map being
written, reused by the next),
and the checked plans and loaded models (checked once, however many steps ask). The CLI opens
one around a command and hands it to the flow; a flow called without one opens its own.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.config import ArchiveOptions, MapSpec, RunOptions
from pipeline.errors import ChangemapError

if TYPE_CHECKING:  # Ray and torch are imported when a run starts, not by a command line with a typo
    from models import LoadedWeights, WeightsMeta
    from pipeline.archive.pairs import Plan
    from pipeline.checks import RunPlan
    from pipeline.engine.pool import PredictorPool

# Ray's raylet deletes released objects from the object store in batches, by default once a second:
# a second of the stream's segments then stays in the store after use, and the store's pages touched
# by a run grew with it (null model, 8192²: peak of the process tree 2,149-2,153 MiB against
# 1,957-2,012 MiB at 20 ms). Set for a local runtime here, and in the cluster image (infra/ray).
FREE_OBJECTS_PERIOD_MS = 20
DEFAULT_OBJECT_STORE = 512 * 1024**2  # a local runtime's, unless the session is given one


def start_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
              object_store_memory: int = DEFAULT_OBJECT_STORE) -> bool:
    """Attach to ``address`` or start a local runtime on 127.0.0.1; True if this call started or attached it.

    The local runtime stays on loopback because ``pipeline/__init__`` sets
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before anything imports ray. ``num_cpus`` and
    ``num_gpus`` are what the local runtime claims (default: what the machine has).
    """
    import ray

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
    import pipeline

    if pipeline.RAY_UNPINNED:
        raise ChangemapError(
            "a local Ray runtime would listen on this machine's network address: ray was imported before pipeline "
            "(which keeps a local runtime on 127.0.0.1); import pipeline first, set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
            "before ray is imported, or attach to a cluster with --ray-address")
    os.environ.setdefault("RAY_free_objects_period_milliseconds", str(FREE_OBJECTS_PERIOD_MS))  # read by the raylet
    ray.init(address="local",  # always a new runtime: never a cluster found through /tmp/ray/ray_current_cluster
             num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, object_store_memory=object_store_memory,
             logging_level=logging.WARNING, log_to_driver=True)
    return True


def _prefect_api() -> float:
    """Start Prefect's ephemeral API (when no ``PREFECT_API_URL`` is set) and wait until it answers; its seconds.

    The flow's own client finds the same server, which lives as long as the process.
    """
    from prefect.client.orchestration import get_client

    begin = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.api_healthcheck()
    return time.perf_counter() - begin


class Session:
    """What one command or flow holds for its length (see the module docstring).

    Args:
        run: how the run goes: the Ray address, the actors' count and batch size, the storage options.
        predictor: the model actor class (tests pass a subclass that fails on purpose).
        device: run the actors on this device whatever they are placed for (a benchmark's simulated node).
        num_cpus, num_gpus: what a local runtime claims (default: what the machine has).
        object_store_memory: a local runtime's object store (default :data:`DEFAULT_OBJECT_STORE`).
    """

    def __init__(self, run: RunOptions | None = None, *, predictor: type | None = None, device: str | None = None,
                 num_cpus: int | None = None, num_gpus: int | None = None,
                 object_store_memory: int = DEFAULT_OBJECT_STORE) -> None:
        self.run = run or RunOptions()
        self.storage = storage.StorageOptions.from_json(self.run.storage_json())
        self.predictor, self.device = predictor, device
        self.num_cpus, self.num_gpus, self.object_store_memory = num_cpus, num_gpus, object_store_memory
        self._plans: dict[str, RunPlan] = {}
        self._archives: dict[str, Plan] = {}
        self._models: dict[tuple, tuple[LoadedWeights | None, WeightsMeta]] = {}
        self._pools: dict[str, PredictorPool] = {}
        self._writers: dict[str | None, list[Any]] = {}  # idle map writer actors by node (None: any)
        self._lock = threading.Lock()  # an archive's pairs run in threads
        self._ray_started = False
        self._stack = ExitStack()

    @classmethod
    @contextmanager
    def borrow(cls, session: Session | None, run: RunOptions) -> Iterator[Session]:
        """``session`` if one is given (not closed here), else a session of this ``run``'s own, closed at the end."""
        if session is not None:
            with storage.using(session.storage if session.storage else None):
                yield session
            return
        with cls(run) as own:
            yield own

    def __enter__(self) -> Session:
        self._stack.enter_context(storage.using(self.storage if self.storage else None))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def plan(self, spec: MapSpec, run: RunOptions) -> RunPlan:
        """The checked plan of a run (:func:`pipeline.checks.preflight`), checked once in this session."""
        from pipeline import checks

        key = spec.to_json() + run.to_json()
        if key not in self._plans:
            self._plans[key] = checks.preflight(spec, run, session=self)
        return self._plans[key]

    def pairs(self, options: ArchiveOptions) -> Plan:
        """An archive's pairs (:func:`pipeline.archive.pairs.plan_pairs`), listed or searched once in this session."""
        from pipeline.archive.sources import plan_pairs

        key = options.to_json()
        if key not in self._archives:
            self._archives[key] = plan_pairs(options)
        return self._archives[key]

    def model(self, name: str, weights: str | None, in_channels: int | None, statistics: str, tile: int,
              halo: int) -> tuple[LoadedWeights | None, WeightsMeta]:
        """A model built once with its weights (they must fit) and checked for ``statistics``; its weights and metadata."""
        from pipeline.checks import build_checked

        key = (name, weights, in_channels, statistics, tile, halo)
        with self._lock:
            if key not in self._models:
                self._models[key] = build_checked(name, weights, in_channels, statistics, tile, halo)
            return self._models[key]

    def start_ray(self, object_store_memory: int | None = None) -> None:
        """Start (or attach to) Ray for this session, once."""
        with self._lock:
            if start_ray(self.run.ray_address, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                         object_store_memory=object_store_memory or self.object_store_memory):
                self._ray_started = True

    def pool(self, plan: RunPlan) -> PredictorPool:
        """The model actors of ``plan``'s model, started once in this session (Ray too, if it is not up)."""
        return self.pool_for(plan.meta, plan.loaded)

    def pool_for(self, meta: WeightsMeta, loaded: LoadedWeights | None) -> PredictorPool:
        """The model actors of a model with these weights, started once in this session.

        A scene-fitted model's actors serve scenes of any band count (each scene's fit builds its
        own model), so one pool serves an archive whose scenes differ.
        """
        from models.registry import get_entry

        sha = loaded.meta.sha256 if loaded is not None else "random"
        run = self.run
        args = dict(meta.model_args)
        if get_entry(meta.model).kind == "scene-fitted":
            args.pop("in_channels", None)
        key = json.dumps([meta.model, sha, run.batch_size, run.workers, args, run.compile], sort_keys=True, default=str)
        self.start_ray()
        with self._lock:
            if key not in self._pools:
                from pipeline.engine.pool import PredictorPool

                # One model's actors at a time: another's would hold the CPUs (or GPUs) the stream needs.
                for other in self._pools.values():
                    other.close()
                self._pools.clear()

                extra: dict[str, Any] = {"predictor": self.predictor} if self.predictor else {}
                self._pools[key] = PredictorPool(meta.model, loaded, workers=run.workers, batch_size=run.batch_size,
                                                 model_args=dict(meta.model_args), compile=run.compile,
                                                 device=self.device, **extra)
            return self._pools[key]

    @contextmanager
    def map_writer(self, node: str | None = None) -> Iterator[Any]:
        """A map writer actor (:class:`pipeline.engine.mapwriter.MapWriterHost`) on Ray node ``node`` for one map.

        This session's idle one if it has one there, else a new one; it is kept for the next map
        when the block ends cleanly, and killed when it ends in an error (it may be what failed).
        """
        from pipeline.engine import mapwriter

        self.start_ray()
        with self._lock:
            idle = self._writers.get(node)
            writer = idle.pop() if idle else None
        if writer is None:
            writer = mapwriter.start_host(node)
        try:
            yield writer
        except BaseException:
            import ray

            ray.kill(writer)
            raise
        with self._lock:
            self._writers.setdefault(node, []).append(writer)

    def start(self, plan: RunPlan | None = None, object_store_memory: int | None = None) -> dict[str, float]:
        """Start Prefect's API, Ray and ``plan``'s model actors at the same time; the seconds each took.

        Each takes seconds to start: one after the other they were most of a small run's time.
        Prefect's ephemeral API (no ``PREFECT_API_URL``) starts in a thread while Ray and the
        actors start here; the stream's workers are warmed too. A flow run then finds all of it up;
        on an ephemeral API it sends no heartbeats (nobody would read them).
        """
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
            PREFECT_SERVER_EPHEMERAL_ENABLED,
            temporary_settings,
        )

        startup: dict[str, float] = {}
        ephemeral = not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value()
        if ephemeral:
            # Heartbeats let a server notice a crashed flow run; an ephemeral API ends with this process,
            # and stopping the heartbeat thread cost up to a second at the end of every flow run.
            self._stack.enter_context(temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))

        def api() -> None:
            try:
                startup["prefect api"] = _prefect_api()
            except Exception:  # noqa: BLE001 - the flow starts it itself and reports what fails
                pass

        thread = threading.Thread(target=api, name="prefect-api", daemon=True)
        if ephemeral:
            thread.start()
        if plan is not None and object_store_memory is None:
            from pipeline.engine.stream import object_store_for

            object_store_memory = object_store_for(plan)
        begin = time.perf_counter()
        self.start_ray(object_store_memory)
        startup["ray"] = time.perf_counter() - begin
        if plan is not None:
            from pipeline.engine import stream
            from pipeline.io import store

            begin = time.perf_counter()
            imports = threading.Thread(target=store.preload, name="store-imports", daemon=True)
            imports.start()  # the stores' modules (xarray, dask: a second) while the actors load
            stream.warm_workers(self.pool(plan).lanes)
            imports.join()
            startup["model actors"] = time.perf_counter() - begin
        if ephemeral:
            thread.join()
        return startup

    def close(self) -> None:
        """Release the actors, stop Ray if this session started it, and leave the storage options' scope."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
        writers, self._writers = [w for idle in self._writers.values() for w in idle], {}
        if writers:
            import ray

            for writer in writers:
                ray.kill(writer)
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False
        self._stack.close()
