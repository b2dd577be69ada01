"""``python -m benchmarks.schedule``: the stream's scheduling alone, its stages paced by sleeps.

The stream's driver (:func:`pipeline.engine.stream.run_stream`), its scheduler and the model pool
(:class:`pipeline.engine.pool.PredictorPool`) run as they are, on a local runtime that claims
``cpus`` CPUs and ``gpus`` GPUs. What they drive is passed in as stand-ins that sleep as long as
each piece of work would take at given rates: the decode tasks (read, warp and ``input.zarr``),
the model actors (host work per window, and forward passes one at a time per lane) and the map
writer (``output.zarr`` and the map's blocks). Sleeps run side by side whatever the real cores, so a
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

# isort: off
import pipeline  # noqa: F401  (first: it keeps a local Ray on 127.0.0.1, which must be set before ray is imported)
import ray
# isort: on

from benchmarks.common import parse_node
from pipeline.engine import stream
from pipeline.engine.scheduler import TUNING, StreamTuning
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
    store_mpps: float = 150.0  # the map writer's output.zarr writes (its calls, one at a time)
    writer_mpps: float = 150.0  # the map writer's blocks (its own thread)


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


class _Submit:
    """Stands for the decode task (``.remote(job, tiles, done)`` as the stream calls it), placed as the stream's own."""

    def __init__(self, fn, pace: Pace, log: str, **options) -> None:
        self.fn, self.pace, self.log = fn.options(**options), pace, log

    def remote(self, *args):
        """Submit the paced task with this run's pace and log."""
        return self.fn.remote(self.pace, self.log, *args)


class PacedPredictor:
    """A model actor that sleeps: host work per window one thread at a time, passes one per lane.

    The pool builds it as it builds a :class:`~pipeline.engine.predictor.TilePredictor`; its pace
    and log are class attributes of a subclass made per run (:func:`paced_predictor`).
    """

    pace: Pace = Pace()
    log: str = ""

    def __init__(self, model_name: str, weights, *, batch_size: int = 4, device: str | None = None,
                 threads: int | None = None, lanes: int = 1, model_args: dict | None = None, compile: bool = False
                 ) -> None:
        import pipeline.engine.predictor  # noqa: F401  (torch and the stream's types: loaded as a real predictor has them)

        self.device = device or "cpu"
        self.lanes = threading.Semaphore(max(1, lanes))
        self.host = threading.Lock()

    def describe(self) -> dict[str, str]:
        """As :meth:`pipeline.engine.predictor.TilePredictor.describe`."""
        return {"device": self.device, "model": "paced", "threads": "1", "size_divisor": "32"}

    def warm_up(self, shape: tuple[int, ...], dtype: str) -> float:
        """Nothing to warm."""
        return 0.0

    def phase_seconds(self) -> dict[str, float]:
        """No phases: the spans log has the passes."""
        return {}

    def predict_chunks(self, job, tiles, keys, *segments) -> tuple[int, list]:
        """As :meth:`pipeline.engine.predictor.TilePredictor.predict_chunks`, in sleeps; zero probabilities."""
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


def paced_predictor(pace: Pace, log: str) -> type:
    """The model actor class of one paced run."""
    return type("Paced", (PacedPredictor,), {"pace": pace, "log": log})


@ray.remote(max_concurrency=2)
class PacedWriter:
    """The map writer: its calls keep the tiles (``store_mpps``), its thread writes the blocks (``writer_mpps``)."""

    def __init__(self, pace: Pace, log: str) -> None:
        self.pace, self.log = pace, log
        self.blocks = threading.Lock()

    def put(self, results: list, kept: bool = False) -> int:
        """Take the tiles' results as long as keeping them would take; write their blocks in the writer's thread."""
        start = time.time()
        if not kept:
            time.sleep(_mp([t for t, _, _ in results]) / self.pace.store_mpps)
            _log(self.log, "store", start)
        threading.Thread(target=self._blocks, args=(_mp([t for t, _, _ in results]),)).start()
        return len(results)

    def _blocks(self, mp: float) -> None:
        with self.blocks:
            start = time.time()
            time.sleep(mp / self.pace.writer_mpps)
            _log(self.log, "writer", start)


@contextmanager
def claimed_runtime(cpus: int, gpus: int) -> Iterator[None]:
    """A local Ray runtime claiming ``cpus`` CPUs and ``gpus`` GPUs, for the length of the block."""
    from pipeline.session import start_ray

    if ray.is_initialized():  # its claims would not apply
        raise RuntimeError("the paced stream starts a runtime of its own: run it where Ray is not initialised")
    start_ray(None, num_cpus=cpus, num_gpus=gpus)
    try:
        yield
    finally:
        ray.shutdown()


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
                 batch_size: int | None = None, bands: int = 3, height: int | None = None,
                 tuning: StreamTuning = TUNING) -> Schedule:
    """Stream a ``size`` wide (``height`` or ``size`` high) scene with paced stages on a claimed node; its figures."""
    from pipeline.engine.pool import PredictorPool
    from pipeline.engine.predictor import InferenceJob

    height = height or size
    with tempfile.TemporaryDirectory(prefix="changemap-schedule-") as tmp:
        log = str(Path(tmp) / "spans.log")
        Path(log).touch()
        with claimed_runtime(cpus, gpus):
            grid = Grid("", (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), size, height)
            job = stream.SceneStream(Alignment(grid, None, None, False, "uint8"), "", "paced", tmp, tile,
                                     tuple(range(1, bands + 1)))
            infer_job = InferenceJob("", "paced", halo, job.bands, shape=(height, size, tile))
            pool = PredictorPool("paced", None, batch_size=batch_size, predictor=paced_predictor(pace, log))
            try:
                writer = PacedWriter.options(num_cpus=tuning.task_cpus).remote(pace, log)
                ray.get(writer.put.remote([], kept=True))
                # the stream's workers, started before it is timed: a run warms them beside Prefect's API
                ray.get(stream.warm_workers(pool.lanes, tuning))
                quiet = Progress("schedule", stream=open(os.devnull, "w"))
                decode = _Submit(_paced_decode, pace, log, num_cpus=tuning.task_cpus, scheduling_strategy="SPREAD")
                begin = time.time()
                stream.run_stream(job, pool, infer_job, writer, tuning=tuning, decode=decode, progress=quiet)
                end = time.time()
                lanes, actors = pool.lanes, pool.workers
            finally:
                pool.close()
        spans: dict[str, list[tuple[float, float]]] = {}
        for line in Path(log).read_text().splitlines():
            kind, s, e = line.split()
            spans.setdefault(kind, []).append((float(s) - begin, float(e) - begin))
    return _schedule(end - begin, spans, pace, make_tiles(height, size, tile), tile, cpus, gpus, lanes, actors, tuning)


def _schedule(seconds: float, spans: dict, pace: Pace, tiles: list[Tile], tile: int, cpus: int, gpus: int, lanes: int,
              actors: int, tuning: StreamTuning) -> Schedule:
    """A paced stream's figures against the lower bound of its work."""
    segments = stream.make_segments(tiles, tile, tuning.segment_width).values()
    decode_bound = sum(_mp(s) for s in segments) / pace.decode_mpps / max(cpus - gpus, 1)
    # the writer: its calls keep the tiles while its thread writes the blocks, one process
    writer_bound = max(_mp(tiles) / pace.store_mpps, _mp(tiles) / pace.writer_mpps)
    # each lane's passes, or each actor's host work (one thread at a time), whichever takes longer
    model_bound = max(_mp(tiles) / pace.model_mpps / lanes, len(tiles) * pace.host_ms / 1e3 / actors)
    decode_mean, decode_peak = _concurrency(spans.get("decode", []), 0.0, seconds)
    tasks = [s for k in ("decode", "store", "writer") for s in spans.get(k, []) if s[0] >= 0]  # not the warm-up's
    forward = sum(e - s for s, e in spans.get("forward", []))
    return Schedule(seconds, max(decode_bound, model_bound, writer_bound), decode_bound, model_bound,
                    forward / (lanes * seconds), decode_mean, decode_peak, _concurrency(tasks, 0.0, seconds)[1], spans)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--height", type=int, default=None, help="the scene's height (default --size)")
    p.add_argument("--node", default="16:1", metavar="CPUS:GPUS", help="the node the local runtime claims (default 16:1)")
    p.add_argument("--batch", type=int, default=None, help="windows per pass (default: the run's own for the node)")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--runs", type=int, default=2, help="streams per setting; each is printed")
    p.add_argument("--json", action="store_true", help="each run as one line of JSON, with every stage's spans")
    p.add_argument("--decodes-per-lane", type=int, default=TUNING.decodes_per_lane,
                   help=f"the stream's bound on decodes ahead of need, per lane (the run's: {TUNING.decodes_per_lane})")
    p.add_argument("--lookahead-batches", type=int, default=TUNING.lookahead_batches,
                   help=f"batches looked ahead per actor slot (the run's: {TUNING.lookahead_batches})")
    for name, value in vars(Pace()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=value)


def schedule(args: argparse.Namespace) -> None:
    """Print each paced stream's figures."""
    cpus, gpus = parse_node(args.node)
    tuning = replace(TUNING, decodes_per_lane=args.decodes_per_lane, lookahead_batches=args.lookahead_batches)
    pace = Pace(**{k: getattr(args, k) for k in vars(Pace())})
    if not args.json:
        print(f"paced stream of a {args.size} x {args.height or args.size} scene on a claimed {cpus}-CPU, "
              f"{gpus}-GPU node, {tuning.decodes_per_lane} decodes ahead per lane, {tuning.lookahead_batches} "
              f"batches looked ahead per slot; {pace}", flush=True)
    for _ in range(args.runs):
        r = run_schedule(args.size, pace, cpus=cpus, gpus=gpus, tile=args.tile, halo=args.halo, batch_size=args.batch,
                         height=args.height, tuning=tuning)
        if args.json:
            print(json.dumps({**asdict(r), "efficiency": r.efficiency}), flush=True)
            continue
        print(f"stream {r.seconds:.2f} s against a bound of {r.bound:.2f} s (decode {r.decode_bound:.2f}, model "
              f"{r.model_bound:.2f}) = {r.efficiency:.2f} of the bound; model lanes busy {100 * r.lanes_busy:.0f} %; "
              f"decode tasks at once: mean {r.decode_mean:.1f}, peak {r.decode_peak}; paced tasks at once: peak "
              f"{r.tasks_peak}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.schedule [options]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.schedule", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    schedule(parser.parse_args(argv))


if __name__ == "__main__":
    main()
