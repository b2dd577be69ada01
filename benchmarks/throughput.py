"""``python -m benchmarks.throughput``: how fast pixels move through a run, side by side.

One invocation prints, for an N x N 3-band pair (a mosaic of LEVIR-CD tiles): the raw decode
rate of the pair on all cores (rasterio, no pipeline), the model alone (forward passes on the
run's window size and batch), the whole run, the run with a negligible-compute model (the data
path alone), the fixed cost of a run (a tiny run's wall time), the busy seconds of each stream
stage (Ray's task timeline), the peak memory of the process tree (the data-path runs again,
sampled: sampling slows what it samples), the two ratios the data path is judged by, and on a
GPU machine the GPUs' utilisation during the whole run (``nvidia-smi``).
``--marginal M`` also runs an M x M pair so fixed costs cancel; ``--memory-base B`` also a
B x B pair, for the growth of the peak memory from B to N; ``--wide W`` a 2048 x W pair, for
the peak memory against the scene's width. ``--model a,b`` measures several models (each alone
and each one's whole run; ``--whole-marginal`` also at M, for the whole run's marginal rate),
``--skip-data-path`` leaves out the null-model, fixed-cost and memory runs. ``--simulate-node
CPUS:GPUS`` runs the null-model runs on a local runtime that claims that many CPUs and GPUs, its
"GPU" actors on the CPU: how many worker processes, and how much memory, a run takes on a node
of many CPUs, without one (times are not comparable: the real cores are shared).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import nullmodel
from benchmarks.common import parse_node, raw_decode_cpu
from benchmarks.nullmodel import NULL_MODEL

WIDE_HEIGHT = 2048  # the height of the --wide pair


def decode_rate(before: Path, after: Path, threads: int) -> float:
    """Megapixels of the pair per second read by rasterio on ``threads`` threads (both dates)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(before) as src:
        height, width = src.height, src.width
    rows = [(y, min(512, height - y)) for y in range(0, height, 512)]

    def read(path: Path, y: int, h: int) -> None:
        with rasterio.open(path) as src:
            src.read(window=Window(0, y, width, h))

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda job: read(*job), [(p, y, h) for p in (before, after) for y, h in rows]))
    return height * width / 1e6 / (time.perf_counter() - start)


def model_rate(model: str, tile: int, halo: int, batch: int, device: str, repeats: int = 2,
               gpu_seconds: float = 2.0) -> float:
    """Core megapixels per second of forward passes alone on the run's windows, run as the actors run them.

    On a GPU one pass at a time, after three warm-up passes (autotuning, allocator), for at least
    ``gpu_seconds``; on the CPU ``repeats`` passes per lane at once, the cores shared between the
    lanes (:func:`pipeline.engine.predictor.cpu_lanes`), as a CPU actor given all the cores would.
    """
    import torch

    from pipeline import loader
    from pipeline.engine.predictor import cpu_lanes
    from pipeline.engine.tile_engine import forward_probability
    from pipeline.tiling import window_size

    net, meta, _ = loader.build(model, None if model != NULL_MODEL else "none")
    net.to(device)
    lanes = 1
    if device != "cuda":
        lanes, threads = cpu_lanes(os.cpu_count() or 1)
        torch.set_num_threads(threads)
    side = window_size(tile, halo, net.size_divisor)
    xs = [torch.randn(batch, 2, meta.in_channels, side, side, device=device) for _ in range(lanes)]  # one per lane
    if device == "cuda":
        for _ in range(3):
            forward_probability(net, xs[0])  # each pass ends with its probabilities on the host
        passes, start = 0, time.perf_counter()
        while time.perf_counter() - start < gpu_seconds:
            forward_probability(net, xs[0])
            passes += 1
        rate = passes * batch * tile * tile / 1e6 / (time.perf_counter() - start)
        del net, xs
        torch.cuda.empty_cache()  # the whole runs' GPU memory is read off the whole GPU: hold none here
        return rate
    forward_probability(net, xs[0])  # warm-up

    def run(lane: int) -> None:
        for _ in range(repeats):
            forward_probability(net, xs[lane])

    start = time.perf_counter()
    with ThreadPoolExecutor(lanes) as ex:
        list(ex.map(run, range(lanes)))
    return lanes * repeats * batch * tile * tile / 1e6 / (time.perf_counter() - start)


def parse_gpu_samples(text: str) -> dict[int, dict[str, float]]:
    """Per GPU index: mean and max utilisation (%) and peak memory (MiB) from ``nvidia-smi`` CSV lines.

    Lines are ``index, utilization.gpu, memory.used`` (``--format=csv,noheader,nounits``);
    anything else (a header, ``[N/A]``) is skipped. ``active`` is the mean from the first to the
    last sample with any utilisation: the stream's stretch, without the run's start-up and end.
    """
    samples: dict[int, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            index, util, mem = int(parts[0]), float(parts[1]), float(parts[2])
        except (ValueError, IndexError):
            continue
        samples.setdefault(index, []).append((util, mem))

    def active(v: list[tuple[float, float]]) -> float:
        busy = [i for i, (u, _) in enumerate(v) if u > 0]
        stretch = v[busy[0]:busy[-1] + 1] if busy else v
        return sum(u for u, _ in stretch) / len(stretch)

    return {i: {"mean": sum(u for u, _ in v) / len(v), "max": max(u for u, _ in v), "memory": max(m for _, m in v),
                "active": active(v), "samples": len(v)} for i, v in samples.items()}


class GpuSampler:
    """``nvidia-smi``'s utilisation samples while a block runs; :attr:`summary` is None without a GPU."""

    def __init__(self, period_ms: int = 200) -> None:
        self.period_ms = period_ms
        self.summary: dict[int, dict[str, float]] | None = None
        self._proc = None

    def __enter__(self) -> GpuSampler:
        import shutil
        import subprocess

        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", str(self.period_ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            out, _ = self._proc.communicate(timeout=10)
            self.summary = parse_gpu_samples(out) or None


def stage_busy(timeline: Path) -> dict[str, float]:
    """Busy seconds per stage, summed over Ray's task timeline (Chrome trace events)."""
    names = {"decode_segment": "decode+ingest", "predict_chunks": "model (summed over lanes)",
             "put": "map writer's calls (output.zarr)", "load_tiles": "reload"}
    busy: dict[str, float] = {}
    for event in json.loads(timeline.read_text()):
        name = str(event.get("name", ""))
        for key, stage in names.items():
            if name.endswith(key) and event.get("ph") == "X":
                busy[stage] = busy.get(stage, 0.0) + float(event.get("dur", 0)) / 1e6
    return busy


STREAM_TASKS = ("decode_segment", "load_tiles")


def stream_workers(timeline: Path) -> int:
    """How many Ray worker processes ran the stream's CPU tasks (decode, reload).

    Each is a process of 150-220 MiB: on a node of many CPUs their number sets the run's memory.
    """
    return len({(e.get("pid"), e.get("tid")) for e in json.loads(timeline.read_text())
                if e.get("ph") == "X" and str(e.get("name", "")).endswith(STREAM_TASKS)})


def _run(pair: tuple[Path, Path], out: Path, model: str, args: argparse.Namespace, work: Path,
         timeline: bool = True, memory: bool = False, extra: tuple[str, ...] = ()) -> dict:
    """One ``changemap run`` in a child process; its summary and figures.

    ``timeline``: Ray's task timeline kept (per-stage busy time; written after the flow).
    ``memory``: the peak memory of its process tree sampled. Sampling reads every process's
    ``smaps_rollup``, which walks its page tables under its memory lock: TinyCD 4096² runs took
    91.7-93.0 s sampled and 78.0-78.5 s not, so runs that are timed are not sampled.
    """
    from benchmarks.common import run_with_cpu, run_with_peak_memory

    trace = work / f"timeline-{out.stem}.json"
    flags = ["--null"] if model == NULL_MODEL else []
    if model == NULL_MODEL and getattr(args, "simulate_node", None):
        flags += ["--simulate-node", args.simulate_node]
    if timeline:
        flags += ["--timeline", str(trace)]
    cmd = [sys.executable, "-m", "benchmarks.run_scene", *flags, "--", str(pair[0]), str(pair[1]), "-o", str(out),
           "--overwrite", "--tile", str(args.tile), "--halo", str(args.halo), "--model", model,
           "--workdir", str(work / "stores")]
    if args.batch:  # else the run's own default for its device
        cmd += ["--batch-size", str(args.batch)]
    if model == NULL_MODEL:
        cmd += ["--weights", "none"]
    cmd += list(extra)
    cpu: dict[str, float] = {}
    if memory:
        code, seconds, (rss, pss), output = run_with_peak_memory(cmd)
    else:  # the CPU seconds of its process tree by role, sampled (cheap: /proc/PID/stat)
        code, seconds, cpu, output = run_with_cpu(cmd)
        rss = pss = 0
    summary = next((json.loads(line) for line in output.splitlines() if line.startswith("{")), None)
    if code or summary is None:
        print(output[-3000:])
        raise SystemExit(f"run failed with exit code {code}")
    busy = stage_busy(trace) if timeline and trace.exists() else {}
    workers = stream_workers(trace) if timeline and trace.exists() else None
    # Beside the timeline, for reading later (e.g. copied off a lent GPU machine with the work folder)
    (work / f"summary-{out.stem}-{model}.json").write_text(json.dumps({**summary, "process_wall": seconds}))
    return {"summary": summary, "wall": seconds, "pss": pss, "rss": rss, "busy": busy, "workers": workers, "cpu": cpu}


def peak_memory(pair: tuple[Path, Path], out: Path, args: argparse.Namespace, work: Path) -> dict[str, int]:
    """The highest peak PSS (and RSS) of ``args.memory_runs`` sampled null-model runs of ``pair``.

    Samples come every quarter second or so: a 2048² run's stream lasts about a second, and one
    run's sampled peak moved by 150 MiB between runs (1,607-1,753 MiB), the 8192² run's less.
    """
    runs = [_run(pair, out, NULL_MODEL, args, work, timeline=False, memory=True) for _ in range(args.memory_runs)]
    return {"pss": max(r["pss"] for r in runs), "rss": max(r["rss"] for r in runs)}


def throughput(args: argparse.Namespace) -> None:
    """The benchmark (see the module docstring)."""
    from benchmarks.common import levir_mosaic_pair
    from pipeline.engine.pool import default_batch_size

    nullmodel.register()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="changemap-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder (mosaics, each run's summary and timeline): {work}", flush=True)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    data_path = not args.skip_data_path
    bases = sorted({s for s in (args.marginal, args.memory_base) if s})  # sizes the --size run is compared with
    sizes = sorted({args.size, *bases})
    whole_size = args.whole_size or args.size
    whole_sizes = [whole_size] + ([args.marginal] if args.whole_marginal and args.marginal else [])

    mosaic_pair = functools.partial(levir_mosaic_pair, Path(args.data), work)  # (height, width=None): made once

    pairs = {size: mosaic_pair(size) for size in sorted({*sizes, *whole_sizes, *([256] if data_path else [])})}
    wide = mosaic_pair(WIDE_HEIGHT, args.wide) if args.wide and data_path else None  # memory against the width
    cores = os.cpu_count() or 1
    say = functools.partial(print, flush=True)  # each figure as soon as it is measured
    batch = args.batch or default_batch_size(gpus=int(args.device == "cuda"))
    say(f"machine: {cores} CPU cores; device {args.device}; tile {args.tile} + halo {args.halo}, batch {batch}")
    if args.simulate_node:
        parse_node(args.simulate_node)
        say(f"null-model runs on a simulated node claiming {args.simulate_node} CPUs:GPUs (GPU actors on the CPU, "
            f"batches of a GPU's size): their processes and memory count, not their times")
    decode = decode_rate(*pairs[args.size], threads=cores)
    say(f"raw decode of the {args.size}² pair (rasterio, {cores} threads): {decode:.1f} MP/s")
    model_only = {}
    for m in models:
        model_only[m] = model_rate(m, args.tile, args.halo, batch, args.device)
        say(f"model alone ({m}, forward passes): {model_only[m]:.3f} MP/s")
        if args.batches:
            rates = {b: model_rate(m, args.tile, args.halo, b, args.device) for b in args.batches}
            say(f"model alone ({m}) by batch size: {', '.join(f'{b}: {r:.3f} MP/s' for b, r in rates.items())}")
    if data_path:
        for line in _data_path(args, work, pairs, sizes, bases, wide, decode):
            say(line)
    if args.sentinel2:
        for line in _sentinel2_cpu(args, work):
            say(line)
    if not args.skip_model_run:
        for m in models:
            runs, gpus = {}, {}
            for size in whole_sizes:
                gpu = GpuSampler()
                with gpu:  # utilisation of every GPU while the whole run lasts (start-up included)
                    runs[size] = _run(pairs[size], work / f"whole_{size}.tif", m, args, work)
                gpus[size] = gpu.summary
            run, rate = runs[whole_size], whole_size ** 2 / 1e6 / runs[whole_size]["summary"]["seconds"]
            say(f"whole run ({m}), {whole_size}²: {run['summary']['seconds']:.1f} s in the flow = {rate:.3f} MP/s; "
                f"stage busy s: {_seconds(dict(sorted(run['busy'].items())))} "
                f"({run.get('workers')} stream worker processes); model actor s: {_seconds(run['summary'].get('model_seconds'))}")
            say(f"whole run / min(model alone, decode) ({m}): {rate / min(model_only[m], decode):.3f}")
            if len(whole_sizes) > 1:
                small = runs[args.marginal]["summary"]["seconds"]
                marginal = (whole_size ** 2 - args.marginal ** 2) / 1e6 / (run["summary"]["seconds"] - small)
                say(f"whole run ({m}), marginal rate {args.marginal}² -> {whole_size}²: {marginal:.3f} MP/s = "
                    f"{marginal / model_only[m]:.3f} x model alone")
            say(f"GPU utilisation during the whole run ({m}, {whole_size}²): " + _gpu_line(gpus[whole_size]))
            null_map = work / f"null_{whole_size}.tif"
            if data_path and whole_size in sizes and null_map.exists():  # made by this invocation's null run
                a, b = null_map.stat().st_size, (work / f"whole_{whole_size}.tif").stat().st_size
                say(f"map size at {whole_size}²: null model {a / 2**20:.2f} MiB, {m} {b / 2**20:.2f} MiB; "
                    f"null / {m} = {a / b:.2f} (the null map must compress like a real one: within 2x)")


def _seconds(seconds: dict[str, float] | None) -> str:
    """``name seconds, ...`` in the dict's order (a phase clock's: the order the phases happen)."""
    return ", ".join(f"{k} {v:.1f}" for k, v in (seconds or {}).items()) or "-"


def _gpu_line(summary: dict[int, dict[str, float]] | None) -> str:
    """One line of :class:`GpuSampler`'s summary."""
    if not summary:
        return "no GPU (nvidia-smi not found)"
    return "; ".join(f"GPU {i}: mean {g['mean']:.0f} % ({g['active']:.0f} % from its first to its last busy sample), "
                     f"max {g['max']:.0f} %, peak memory {g['memory']:.0f} MiB" for i, g in sorted(summary.items()))


def _data_path(args: argparse.Namespace, work: Path, pairs: dict, sizes: list[int], bases: list[int],
               wide: tuple[Path, Path] | None, decode: float) -> list[str]:
    """The fixed cost, the null-model runs (time, stage busy time, peak memory) and their ratios: printed lines."""
    # The fixed cost: the best of two tiny runs (the first may also create Prefect's database).
    tiny = min((_run(pairs[256], work / "tiny.tif", NULL_MODEL, args, work, timeline=False) for _ in range(2)),
               key=lambda r: r["wall"])
    null = {s: _run(pairs[s], work / f"null_{s}.tif", NULL_MODEL, args, work) for s in sizes}
    for s in sizes:  # the same runs again, sampled for memory only
        null[s].update(peak_memory(pairs[s], work / f"null_{s}.tif", args, work))
    if wide:
        wide_run = _run(wide, work / "null_wide.tif", NULL_MODEL, args, work)
        wide_run.update(peak_memory(wide, work / "null_wide.tif", args, work))
    mp = {s: s * s / 1e6 for s in sizes}
    lines = [f"fixed cost (a 256² run with the null model, best of 2, process wall): {tiny['wall']:.1f} s "
             f"(inside the flow {tiny['summary']['seconds']:.1f} s; "
             f"start-up s: {_seconds(tiny['summary'].get('startup_seconds'))})"]
    for s in sizes:
        r = null[s]
        lines.append(f"data path alone (null model), {s}²: {r['summary']['seconds']:.1f} s in the flow = "
                     f"{mp[s] / r['summary']['seconds']:.2f} MP/s; process wall {r['wall']:.1f} s; "
                     f"peak PSS {r['pss'] / 2**20:.0f} MiB (RSS {r['rss'] / 2**20:.0f} MiB); "
                     f"stage busy s: {_seconds(dict(sorted(r['busy'].items())))} "
                     f"({r.get('workers')} stream worker processes); model actor s: {_seconds(r['summary'].get('model_seconds'))}")
    if args.marginal:
        a, b = null[args.marginal], null[args.size]
        marginal = (mp[args.size] - mp[args.marginal]) / (b["summary"]["seconds"] - a["summary"]["seconds"])
        lines.append(f"data path, marginal rate {args.marginal}² -> {args.size}²: {marginal:.2f} MP/s = "
                     f"{marginal / decode:.3f} x raw decode")
    for base in bases:
        lines.append(f"peak PSS {args.size}² / {base}²: {null[args.size]['pss'] / null[base]['pss']:.3f}")
    if wide:
        r, mp_wide = wide_run, WIDE_HEIGHT * args.wide / 1e6
        base = f" = {r['pss'] / null[WIDE_HEIGHT]['pss']:.3f} x the {WIDE_HEIGHT}² peak" if WIDE_HEIGHT in null else ""
        lines.append(f"data path alone (null model), {WIDE_HEIGHT} x {args.wide}: {r['summary']['seconds']:.1f} s in the "
                     f"flow = {mp_wide / r['summary']['seconds']:.2f} MP/s; peak PSS {r['pss'] / 2**20:.0f} MiB{base}")
    data_rate = mp[args.size] / null[args.size]["summary"]["seconds"]
    lines.append(f"data path (null model) / raw decode at {args.size}²: {data_rate / decode:.3f}")
    if args.marginal:
        lines += cpu_lines(null[args.marginal]["cpu"], null[args.size]["cpu"], mp[args.size] - mp[args.marginal],
                           raw_decode_cpu(*pairs[args.size]), f"{args.marginal}² -> {args.size}²")
    return lines


S2_WIDTH = 10980  # a Sentinel-2 tile's side at 10 m


def _sentinel2_cpu(args: argparse.Namespace, work: Path) -> list[str]:
    """The null model's data path on 13-band uint16 strips of a synthetic Sentinel-2 tile: time and CPU per MP.

    The strips are the first ``H`` rows of :mod:`benchmarks.fitted_scale`'s 10980² scene, every
    band read (``--bands 1,...,13``); the CPU is marginal between the two heights.
    """
    from benchmarks.fitted_scale import BANDS, make_pair

    small, big = args.sentinel2
    pairs = {h: make_pair(work, S2_WIDTH, height=h) for h in (small, big)}
    bands = ("--bands", ",".join(str(b) for b in range(1, len(BANDS) + 1)))
    runs = {h: _run(pairs[h], work / f"null_s2_{h}.tif", NULL_MODEL, args, work, timeline=False, extra=bands)
            for h in (small, big)}
    lines = [f"data path alone (null model), 13-band uint16 {h} x {S2_WIDTH}: {r['summary']['seconds']:.1f} s in the "
             f"flow = {h * S2_WIDTH / 1e6 / r['summary']['seconds']:.2f} MP/s; process wall {r['wall']:.1f} s"
             for h, r in runs.items()]
    return lines + cpu_lines(runs[small]["cpu"], runs[big]["cpu"], (big - small) * S2_WIDTH / 1e6,
                             raw_decode_cpu(*pairs[big]), f"{small} x {S2_WIDTH} -> {big} x {S2_WIDTH}, 13-band uint16")


def cpu_lines(small: dict[str, float], big: dict[str, float], megapixels: float, decode_ms: float, what: str) -> list[str]:
    """The data path's CPU per megapixel by role (marginal between two runs), raw decode's, and their ratio."""
    roles = sorted(set(small) | set(big), key=lambda r: -(big.get(r, 0) - small.get(r, 0)))
    per_mp = {r: 1000 * (big.get(r, 0) - small.get(r, 0)) / megapixels for r in roles}
    total = sum(per_mp.values())
    return [f"data path CPU per MP (marginal {what}, whole process tree): {total:.1f} ms = "
            + ", ".join(f"{r} {v:.1f}" for r, v in per_mp.items() if abs(v) >= 0.05),
            f"raw decode CPU per MP (rasterio, one thread, 512-pixel windows, both dates): {1000 * decode_ms:.1f} ms",
            f"data path CPU / raw decode CPU: {total / (1000 * decode_ms):.2f}"]


def add_arguments(t: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    from benchmarks.common import DEFAULT_DATA

    t.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder")
    t.add_argument("--size", type=int, default=8192)
    t.add_argument("--marginal", type=int, default=None, help="also this size, for the marginal rate (e.g. 4096)")
    t.add_argument("--memory-base", type=int, default=None,
                   help="also this size, for the growth of the peak memory (e.g. 2048)")
    t.add_argument("--memory-runs", type=int, default=2,
                   help="sampled runs per size; the highest peak is reported (default 2)")
    t.add_argument("--wide", type=int, default=None,
                   help=f"also a {WIDE_HEIGHT} x WIDE pair with the null model, for memory against the width (e.g. 65536)")
    t.add_argument("--sentinel2", type=lambda v: sorted(int(h) for h in v.split(",")), default=None, metavar="H1,H2",
                   help=f"also the null model's CPU per MP on 13-band uint16 H x {S2_WIDTH} strips of a synthetic "
                        "Sentinel-2 tile, marginal from H1 to H2 (e.g. 2048,4096)")
    t.add_argument("--whole-size", type=int, default=None, help="size of the whole run with the model (default --size)")
    t.add_argument("--skip-model-run", action="store_true", help="do not run the whole pipeline with the model")
    t.add_argument("--skip-data-path", action="store_true",
                   help="no fixed-cost, null-model or memory runs: the decode, the models alone and their whole runs")
    t.add_argument("--whole-marginal", action="store_true",
                   help="also the whole run at --marginal's size, for the model's marginal rate (fixed costs cancel)")
    t.add_argument("--model", default="tinycd", help="the model, or several separated by commas (e.g. tinycd,changer-mit-b0)")
    t.add_argument("--device", default="cuda" if _cuda() else "cpu")
    t.add_argument("--tile", type=int, default=512)
    t.add_argument("--halo", type=int, default=64)
    t.add_argument("--batch", type=int, default=None,
                   help="windows per forward pass (default: the run's own, 16 on a GPU and 4 on the CPU)")
    t.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",") if b], default=[],
                   help="also the model alone at these batch sizes, e.g. 4,8,16,32 (to choose a GPU's batch size)")
    t.add_argument("--workdir", default=None)
    t.add_argument("--simulate-node", default=None, metavar="CPUS:GPUS",
                   help="null-model runs on a local runtime claiming CPUS CPUs and GPUS GPUs, its GPU actors on the "
                        "CPU (e.g. 16:1): worker processes and memory on a node of many CPUs; not its times")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.throughput [options]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    throughput(parser.parse_args(argv))


if __name__ == "__main__":
    main()
