"""``python -m pipeline.benchmark schedule``: the stream's scheduling alone, its stages paced by sleeps.

The stream's driver (:func:`pipeline.engine.stream.run_stream`) and the model pool
(:class:`pipeline.engine.inference.PredictorPool`) run as they are, on a local runtime that claims
``cpus`` CPUs and ``gpus`` GPUs. What they drive is replaced by stand-ins that sleep as long as
each piece of work would take at given rates: the decode tasks (read, warp and ``input.zarr``),
the model actors (host work per window, and forward passes one at a time per lane), the
``output.zarr`` tasks and the map writer. Sleeps run side by side whatever the real cores, so a
2-core machine can show whether the scheduler keeps a fast GPU fed on a node of many CPUs: the
stream's time against the lower bound the work sets (the decode's seconds spread over the free
CPUs, or the model's passes, whichever is longer), and how busy the model's lanes were.

It assumes each running task has a core of its own: the peak of tasks running at once is
printed to check that against the node's cores. Object-store traffic is real (zero-filled
segments and results of the scene's sizes); compute is not.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray

from pipeline.engine import stream
from pipeline.grid import Alignment, Grid
from pipeline.progress import Progress
from pipeline.tiling import Tile, make_tiles


@dataclass(frozen=True)
class Pace:
    """Rates of the paced stages, in megapixels of the scene per second (both dates, every band).

    Defaults from one lent machine (NVIDIA H200, 16 cores): the null-model run's decode tasks did
    67 MP in 6.8 busy seconds (10 MP/s each, ``input.zarr`` writes included), TinyCD's forward
    passes ran at 85 MP/s in batches of 16. ``host_ms`` (a model actor's own work per window) was
    not measured there. On the 2-core development machine, batches of sixteen 640² windows, the
    parts a GPU actor shares took 0.7 ms a window (cutting it from its segments 0.35-0.43,
    handing its core on 0.08, serialising the results 0.21-0.25); 1 ms leaves some for the
    pinned copy and the probabilities' copy back.
    """

    decode_mpps: float = 10.0  # per decode task
    model_mpps: float = 85.0  # forward passes of one lane (core pixels)
    host_ms: float = 1.0  # per window, in the actor, one thread at a time (the interpreter lock)
    store_mpps: float = 150.0  # per output.zarr task
    writer_mpps: float = 150.0  # the map writer (one actor)


def _mp(tiles) -> float:
    return sum(t.height * t.width for t in tiles) / 1e6


def _log(path: str, kind: str, start: float) -> None:
    with open(path, "a") as f:  # one short line per append: lines of concurrent writers do not mix
        f.write(f"{kind} {start:.6f} {time.time():.6f}\n")


@ray.remote
def _paced_decode(pace: Pace, log: str, job: stream.SceneStream, tiles: tuple[Tile, ...], done: frozenset):
    start = time.time()
    h, w = tiles[0].height, tiles[-1].x0 + tiles[-1].width - tiles[0].x0
    time.sleep(h * w / 1e6 / pace.decode_mpps)
    image = np.zeros((2, len(job.bands), h, w), job.alignment.dtype)
    valid = np.ones((h, w), bool)
    _log(log, "decode", start)
    return image, valid


@ray.remote
def _paced_store(pace: Pace, log: str, job: stream.SceneStream, results: list) -> int:
    start = time.time()
    time.sleep(_mp([t for t, _, _ in results]) / pace.store_mpps)
    _log(log, "store", start)
    return len(results)


class _Submit:
    """Stands for a stream task (``.remote(...)`` as the stream calls it), placed as the stream places its own."""

    def __init__(self, fn, pace: Pace, log: str, **options) -> None:
        self.fn, self.pace, self.log = fn.options(num_cpus=stream.TASK_CPUS, **options), pace, log

    def remote(self, *args):
        return self.fn.remote(self.pace, self.log, *args)


class PacedPredictor:
    """A model actor that sleeps: host work per window one thread at a time, passes one per lane."""

    def __init__(self, model_name: str, weights, *, batch_size: int = 4, device: str | None = None,
                 threads: int | None = None, lanes: int = 1, model_args: dict | None = None, compile: bool = False,
                 pace: Pace = Pace(), log: str = "") -> None:
        import pipeline.engine.inference  # noqa: F401  (torch and the stream's types: loaded as a real predictor has them)

        self.pace, self.log, self.device = pace, log, device or "cpu"
        self.lanes = threading.Semaphore(max(1, lanes))
        self.host = threading.Lock()

    def describe(self) -> dict[str, str]:
        """As :meth:`pipeline.engine.inference.TilePredictor.describe`."""
        return {"device": self.device, "model": "paced", "threads": "1", "size_divisor": "32"}

    def warm_up(self, shape: tuple[int, ...], dtype: str) -> float:
        """Nothing to warm."""
        return 0.0

    def phase_seconds(self) -> dict[str, float]:
        """No phases: the spans log has the passes."""
        return {}

    def predict_chunks(self, job, tiles, keys, *segments) -> tuple[int, list]:
        """As :meth:`pipeline.engine.inference.TilePredictor.predict_chunks`, in sleeps; zero probabilities."""
        host = len(tiles) * self.pace.host_ms / 1e3 / 2  # half to build the batch, half to hand the cores on
        with self.host:
            time.sleep(host)
        with self.lanes:
            start = time.time()
            time.sleep(_mp(tiles) / self.pace.model_mpps)
            _log(self.log, "forward", start)
        with self.host:
            time.sleep(host)
        return len(tiles), [(t, np.zeros((t.height, t.width), "float32"), np.ones((t.height, t.width), bool))
                            for t in tiles]


@ray.remote
class PacedWriter:
    """The map writer: one tile at a time, at ``writer_mpps``."""

    def __init__(self, pace: Pace, log: str) -> None:
        self.pace, self.log = pace, log

    def put(self, results: list) -> int:
        """Take the tiles' results as long as writing them would take."""
        start = time.time()
        time.sleep(_mp([t for t, _, _ in results]) / self.pace.writer_mpps)
        _log(self.log, "writer", start)
        return len(results)


@contextmanager
def paced(cpus: int, gpus: int, pace: Pace, log: str) -> Iterator[None]:
    """The stream's and the pool's stand-ins installed, and a local runtime claiming ``cpus`` and ``gpus``."""
    from pipeline.engine import inference  # torch: not in the paced tasks' workers, as not in the stream's own
    from pipeline.engine.ray_runtime import ensure_ray, shutdown_if_started

    if ray.is_initialized():  # its claims would not apply
        raise RuntimeError("the paced stream starts a runtime of its own: run it where Ray is not initialised")
    saved = ray.init, inference.RemotePredictor, stream._decode, stream._store
    init = ray.init

    def claimed_init(*args, **kwargs):
        return init(*args, **{**kwargs, "num_cpus": cpus, "num_gpus": gpus})

    actor = ray.remote(PacedPredictor)

    class Placed:
        def __init__(self, options: dict) -> None:
            self.placed = actor.options(**options)

        def remote(self, *args, **kwargs):
            return self.placed.remote(*args, **kwargs, pace=pace, log=log)

    class Actors:
        def options(self, **options) -> Placed:
            return Placed(options)

    ray.init = claimed_init
    started = False
    try:
        started = ensure_ray(None)
        inference.RemotePredictor = Actors()
        stream._decode = _Submit(_paced_decode, pace, log, scheduling_strategy="SPREAD")
        stream._store = _Submit(_paced_store, pace, log)
        yield
    finally:
        ray.init, inference.RemotePredictor, stream._decode, stream._store = saved
        shutdown_if_started(started)


@dataclass(frozen=True)
class Schedule:
    """What one paced stream did, against the lower bound its work sets."""

    seconds: float  # the stream, from its first submission to its last result
    bound: float  # max(the decode's work over the free CPUs, the model's passes over its lanes or host work)
    decode_bound: float
    model_bound: float
    lanes_busy: float  # the model lanes' forward seconds / (lanes x seconds): a GPU's utilisation
    decode_mean: float  # decode tasks running at once, on average over the stream
    decode_peak: int
    tasks_peak: int  # paced tasks (decode, store, writer) running at once
    spans: dict[str, list[tuple[float, float]]]  # (start, end) seconds from the stream's start, per stage

    @property
    def efficiency(self) -> float:
        """The bound over the stream's time: 1 is a scheduler that loses nothing."""
        return self.bound / self.seconds


def _concurrency(spans: list[tuple[float, float]], begin: float, end: float) -> tuple[float, int]:
    """Mean (over ``begin..end``) and peak of how many ``spans`` ran at once."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return sum(e - s for s, e in spans) / max(end - begin, 1e-9), peak


def run_schedule(size: int, pace: Pace, *, cpus: int, gpus: int, tile: int = 512, halo: int = 64,
                 batch_size: int | None = None, bands: int = 3, height: int | None = None) -> Schedule:
    """Stream a ``size`` wide (``height`` or ``size`` high) scene with paced stages on a claimed node; its figures."""
    from pipeline.engine.inference import InferenceJob, PredictorPool

    with tempfile.TemporaryDirectory(prefix="changemap-schedule-") as tmp:
        log = str(Path(tmp) / "spans.log")
        Path(log).touch()
        with paced(cpus, gpus, pace, log):
            height = height or size
            grid = Grid("", (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), size, height)
            job = stream.SceneStream(Alignment(grid, None, None, False, "uint8"), "", "paced", tmp, tile,
                                     tuple(range(1, bands + 1)))
            infer_job = InferenceJob("", "paced", halo, job.bands, shape=(height, size, tile))
            pool = PredictorPool("paced", None, batch_size=batch_size)
            try:
                writer = PacedWriter.options(num_cpus=stream.TASK_CPUS).remote(pace, log)
                ray.get(writer.put.remote([]))
                # the stream's workers, started before it is timed: a run warms them beside Prefect's API
                ray.get(stream.warm_workers(pool.lanes))
                quiet = Progress("schedule", stream=open(os.devnull, "w"))
                begin = time.time()
                stream.run_stream(job, pool, infer_job, writer, progress=quiet)
                end = time.time()
                lanes, actors = pool.lanes, pool.workers
            finally:
                pool.close()
        spans: dict[str, list[tuple[float, float]]] = {}
        for line in Path(log).read_text().splitlines():
            kind, s, e = line.split()
            spans.setdefault(kind, []).append((float(s) - begin, float(e) - begin))
    end -= begin
    tiles = make_tiles(height, size, tile)
    segments = stream.make_segments(tiles, tile).values()
    free = cpus - (gpus if gpus else 0)
    cpu_work = (sum(_mp(s) for s in segments) / pace.decode_mpps + _mp(tiles) / pace.store_mpps
                + _mp(tiles) / pace.writer_mpps)
    decode_bound = cpu_work / max(free, 1)
    # each lane's passes, or each actor's host work (one thread at a time), whichever takes longer
    model_bound = max(_mp(tiles) / pace.model_mpps / lanes, len(tiles) * pace.host_ms / 1e3 / actors)
    decode_mean, decode_peak = _concurrency(spans.get("decode", []), 0.0, end)
    tasks = [s for k in ("decode", "store", "writer") for s in spans.get(k, []) if s[0] >= 0]  # not the warm-up's
    forward = sum(e - s for s, e in spans.get("forward", []))
    return Schedule(end, max(decode_bound, model_bound), decode_bound, model_bound, forward / (lanes * end),
                    decode_mean, decode_peak, _concurrency(tasks, 0.0, end)[1], spans)


def add_parser(sub) -> None:
    """``schedule`` options."""
    p = sub.add_parser("schedule", help="the stream's scheduling alone, its stages paced by sleeps on a claimed node")
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--height", type=int, default=None, help="the scene's height (default --size)")
    p.add_argument("--node", default="16:1", metavar="CPUS:GPUS", help="the node the local runtime claims (default 16:1)")
    p.add_argument("--batch", type=int, default=None, help="windows per pass (default: the run's own for the node)")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--runs", type=int, default=2, help="streams per setting; each is printed")
    p.add_argument("--json", action="store_true", help="each run as one line of JSON, with every stage's spans")
    p.add_argument("--decodes-per-lane", type=int, default=stream.DECODES_PER_LANE,
                   help=f"the stream's bound on decodes ahead of need, per lane (the run's: {stream.DECODES_PER_LANE})")
    p.add_argument("--lookahead-batches", type=int, default=stream.LOOKAHEAD_BATCHES,
                   help=f"batches looked ahead per actor slot (the run's: {stream.LOOKAHEAD_BATCHES})")
    for name, value in vars(Pace()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=value)


def schedule(args: argparse.Namespace) -> None:
    """Print each paced stream's figures."""
    from pipeline.throughput import parse_node

    cpus, gpus = parse_node(args.node)
    stream.DECODES_PER_LANE, stream.LOOKAHEAD_BATCHES = args.decodes_per_lane, args.lookahead_batches  # this driver's
    pace = Pace(**{k: getattr(args, k) for k in vars(Pace())})
    if not args.json:
        print(f"paced stream of a {args.size} x {args.height or args.size} scene on a claimed {cpus}-CPU, "
              f"{gpus}-GPU node, {stream.DECODES_PER_LANE} decodes ahead per lane, {stream.LOOKAHEAD_BATCHES} "
              f"batches looked ahead per slot; {pace}", flush=True)
    for _ in range(args.runs):
        r = run_schedule(args.size, pace, cpus=cpus, gpus=gpus, tile=args.tile, halo=args.halo, batch_size=args.batch,
                         height=args.height)
        if args.json:
            print(json.dumps({**asdict(r), "efficiency": r.efficiency}), flush=True)
            continue
        print(f"stream {r.seconds:.2f} s against a bound of {r.bound:.2f} s (decode {r.decode_bound:.2f}, model "
              f"{r.model_bound:.2f}) = {r.efficiency:.2f} of the bound; model lanes busy {100 * r.lanes_busy:.0f} %; "
              f"decode tasks at once: mean {r.decode_mean:.1f}, peak {r.decode_peak}; paced tasks at once: peak "
              f"{r.tasks_peak}", flush=True)
