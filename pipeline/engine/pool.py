"""The model actors of a run: one per GPU (``num_gpus=1``), else CPU actors, lent out slot by slot.

An actor whose process died is replaced by a new one with the same weights (:meth:`PredictorPool.lost`),
and the :class:`~pipeline.engine.scheduler.Scheduler` sends the lost calls' batches again. Ray's own
actor restarts would re-run the constructor with the weights in the object store, which Ray warns
on every actor it starts may fail (ray-project/ray#53727); a replacement started here is the same
constructor call, made when it is needed.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

import ray
from ray.exceptions import RayActorError

from models import LoadedWeights
from models.errors import UnknownModelError
from pipeline import loader
from pipeline.engine.predictor import TilePredictor, cpu_lanes
from pipeline.errors import ChangemapError

# Windows per forward pass when --batch-size is not given: on one H200 (fp16 autocast, 640² windows) the
# fastest of 4-64 for TinyCD and ChangerEx MiT-b0 (docs/benchmarks). On the CPU the lanes already share
# the cores, and a larger batch only holds more windows. A scene-fitted model's work is per pixel (and a
# local mean): a batch gains it nothing on the CPU, while every window of a batch in flight pins the row
# segments under it, three rows of them: one window per pass took a 13-band Sentinel-2 tile's peak memory
# from 1.183 to 1.009 x a 2048² pair's (docs/benchmarks).
GPU_BATCH_SIZE = 16
CPU_BATCH_SIZE = 4
CPU_BATCH_SIZE_FITTED = 1
RELEASE_WAIT_S = 10.0  # how long a pool waits for CPUs that killed actors have yet to give back


def default_batch_size(gpus: int, kind: str = "deep") -> int:
    """Windows per forward pass when none is asked for: on GPUs :data:`GPU_BATCH_SIZE`, else by the model's kind.

    :data:`CPU_BATCH_SIZE` for a ``deep`` model, :data:`CPU_BATCH_SIZE_FITTED` for a ``scene-fitted`` one.
    """
    if gpus:
        return GPU_BATCH_SIZE
    return CPU_BATCH_SIZE_FITTED if kind == "scene-fitted" else CPU_BATCH_SIZE


def free_cpus(wanted: int = 0) -> int:
    """The cluster's free CPUs (at least 1), waiting up to :data:`RELEASE_WAIT_S` for ``wanted`` of them.

    It waits only while fewer than ``wanted`` are free but the cluster has that many: a pool closed
    just before (its actors killed) gives its CPUs back a moment later, and a run that follows one
    in the same process would otherwise be refused.
    """
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        cpus = max(1, int(ray.available_resources().get("CPU", 1)))
        if cpus >= wanted or wanted > ray.cluster_resources().get("CPU", 0) or time.monotonic() > deadline:
            return cpus
        time.sleep(0.1)


def _kind(model_name: str) -> str:
    """The kind of a registered model; ``deep`` for a name the registry does not know.

    Only a ``predictor`` class of the caller's own (a benchmark's paced stand-in) gets that far:
    a :class:`TilePredictor` fails on an unknown model as it loads.
    """
    try:
        return loader.model_kind(model_name)
    except UnknownModelError:
        return "deep"


class PredictorPool:
    """Model actors placed on the Ray cluster: one per GPU (``num_gpus=1``), else CPU actors.

    Args:
        model_name, weights, model_args, compile: what each actor loads (:class:`TilePredictor`).
        workers: actors (default: one per GPU, else one).
        batch_size: windows per forward pass (default :func:`default_batch_size`).
        predictor: the actor class, :class:`TilePredictor` or a subclass (tests inject faults with one).
        device: run the actors on this device whatever they were placed for (default: CUDA when they
            have a GPU); a benchmark places GPU actors on a simulated node and runs them on the CPU.
    """

    def __init__(self, model_name: str, weights: LoadedWeights | None, *, workers: int | None = None,
                 batch_size: int | None = None, model_args: dict | None = None, compile: bool = False,
                 predictor: type = TilePredictor, device: str | None = None) -> None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.batch_size = batch_size or default_batch_size(gpus, _kind(model_name))
        cpus = free_cpus(workers if workers and not gpus else 0)
        if workers and workers > (gpus or cpus):  # actors that cannot be placed would wait forever
            kind = "GPU" if gpus else "free CPU"
            raise ChangemapError(
                f"--workers {workers} asks for more inference actors than the Ray cluster has {kind}s "
                f"({gpus or cpus}); use --workers {gpus or cpus} or fewer, or attach a bigger cluster")
        if gpus:
            self.workers, self.device = workers or gpus, "cuda"
            options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
            threads, lanes = None, 1
        else:
            self.workers, self.device = workers or 1, "cpu"
            # An actor lives on one node: no more CPUs than the largest node has.
            largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=cpus)
            per_actor = max(1, min(cpus // self.workers, int(largest)))
            # Torch uses all the actor's cores, but one logical CPU of each (half of a 1-CPU node) is
            # left to the stream's decode tasks, which would otherwise never be placed.
            options = {"num_cpus": per_actor - 1 if per_actor > 1 else 0.5}
            lanes, threads = cpu_lanes(per_actor)
        # A GPU actor takes one more call than it has lanes: the next batch is cut and copied to the
        # device while the current one runs. A CPU actor's lanes already use its cores, so a batch
        # waiting there gains nothing and holds its windows.
        waiting = 1 if gpus else 0
        options["max_concurrency"] = lanes + waiting
        weights_ref = ray.put(weights)  # kept: a replacement loads the same weights
        remote = ray.remote(predictor).options(**options)
        self._spawn = lambda: remote.remote(model_name, weights_ref, batch_size=self.batch_size,
                                            device=device or self.device, threads=threads, lanes=lanes,
                                            model_args=model_args, compile=compile)
        self.actors = [self._spawn() for _ in range(self.workers)]
        self._replaced: dict[int, Any] = {}  # id of a lost actor's handle -> its replacement
        self._lost: list = []
        self._lock = threading.Lock()
        described = ray.get([a.describe.remote() for a in self.actors])  # fail here if the model cannot load
        self.size_divisor = int(described[0]["size_divisor"])
        self.slots = (lanes + waiting) * len(self.actors)  # calls the pool takes at once
        self.lanes = lanes * len(self.actors)  # forward passes the pool runs at once
        self._idle: queue.Queue = queue.Queue()
        for actor in self.actors * (lanes + waiting):
            self._idle.put(actor)

    def acquire(self, timeout: float = 0.0):
        """A free actor slot, or None when none frees up within ``timeout`` seconds."""
        try:
            actor = self._idle.get(timeout=timeout) if timeout else self._idle.get_nowait()
        except queue.Empty:
            return None
        with self._lock:
            while id(actor) in self._replaced:  # a slot of a lost actor now belongs to its replacement
                actor = self._replaced[id(actor)]
        return actor

    def lost(self, actor) -> None:
        """Start a replacement for an actor whose process died (once, however many of its calls report it)."""
        with self._lock:
            if id(actor) not in self._replaced:
                new = self._spawn()
                self.actors = [new if a is actor else a for a in self.actors]
                self._replaced[id(actor)] = new
                self._lost.append(actor)  # kept, so that its id is never reused by another handle

    def release(self, actor) -> None:
        """Give a slot back."""
        self._idle.put(actor)

    def call_one(self, method: str, *args: Any) -> Any:
        """Call ``method`` on one free actor and return its result."""
        actor = self._idle.get()
        try:
            return ray.get(getattr(actor, method).remote(*args))
        finally:
            self._idle.put(actor)

    def warm_up(self, shape: tuple[int, ...], dtype: str) -> None:
        """Start a pass of the run's batch ``shape`` on each GPU actor (:meth:`TilePredictor.warm_up`); not waited for.

        CPU actors are not warmed: a pass there is seconds of real work, and nothing loads lazily.
        """
        if self.device == "cuda":
            for actor in self.actors:
                actor.warm_up.remote(shape, dtype)

    def phase_seconds(self) -> dict[str, float]:
        """Seconds the pool's actors have spent in each phase of prediction, summed over actors and lanes.

        An actor answers between calls, as its calls take its slots; a lost actor's seconds are gone
        (a figure, not worth failing a run for).
        """
        total: dict[str, float] = {}
        for ref in [a.phase_seconds.remote() for a in self.actors]:
            try:
                seconds = ray.get(ref)
            except RayActorError:
                continue
            for phase, s in seconds.items():
                total[phase] = total.get(phase, 0.0) + s
        return total

    def close(self) -> None:
        """Release the actors (and their GPU memory)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
