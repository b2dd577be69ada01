"""``python -m benchmarks.fitted_scale``: a scene-fitted model (IR-MAD) on a whole Sentinel-2 tile against a small scene.

    python -m benchmarks.fitted_scale --workdir DIR [--model irmad] [--size 10980] [--base 2048] [--runs 1]

Two goals of a scene-fitted model run through ``changemap run ... --model irmad``:

1. a 10980 x 10980 13-band uint16 pair (a synthetic Sentinel-2 tile) peaks within +15 % of the
   memory (PSS of the whole process tree) of a 2048 x 2048 13-band uint16 pair;
2. the fit step costs at most half of the prediction step on the 10980² pair.

The pairs are synthetic and made here block by block (never a whole scene in memory), once per
work folder: 13 bands of uint16 on a UTM grid (EPSG:32633) at 10 m, tiled 512 x 512, DEFLATE
with predictor 2, nodata 0. BEFORE is a mix of four land covers (vegetation, bare soil, water,
built-up; Sentinel-2-like spectra in DN = reflectance x 10,000) whose fractions, brightness and
texture are smooth random fields (low-resolution noise at four scales, upsampled), plus sensor
noise; AFTER is the same scene with a gain and an offset per band (another illumination) and
noise of its own, except in blob-shaped areas (about 3 % of the pixels) whose land cover changed.

Each pair runs once per ``--runs`` as ``python -m pipeline.cli run BEFORE AFTER --model irmad
--json --overwrite --workdir W`` in a child process (tile and halo left at their defaults;
``PREFECT_HOME`` in a temporary folder). The child's output lines are time-stamped as they
arrive and the memory of its process tree (driver, Ray, its workers and actors, Prefect's API)
is sampled every quarter second (Linux ``/proc``: RSS summed, and PSS, shared pages counted once).

Figures per run: the flow's seconds (the summary's ``seconds``: from the flow's start to its end,
start-up excluded); the fit step's seconds (the summary's ``fit.seconds``: sample read by Ray
tasks and the fit on a model actor); the prediction step's seconds: the stream's, from the
child's first ``infer:`` progress line to its last (decode, the model on every tile, the map
writer), timed here as the lines arrive; what is left of the flow (the stores, the map writer's
second pass for the scene's Otsu threshold, the outputs); the peak PSS and RSS of the process
tree, when it came, and which processes held it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
# Sentinel-2-like DN (reflectance x 10,000) of seven land covers, in the order of BANDS
COVERS = np.array([
    [1150, 850, 750, 500, 900, 2000, 2500, 2700, 2900, 900, 300, 1500, 700],  # forest
    [1250, 1000, 950, 700, 1300, 2800, 3400, 3600, 3800, 1100, 310, 2200, 1200],  # crops, grass
    [1550, 1500, 1750, 2100, 2350, 2550, 2700, 2800, 2900, 1000, 330, 3600, 3000],  # bright bare soil
    [1300, 1150, 1200, 1350, 1500, 1650, 1750, 1850, 1950, 700, 320, 2600, 2200],  # dark soil (ploughed)
    [1350, 1150, 950, 650, 550, 450, 420, 380, 360, 300, 310, 330, 300],  # water
    [1700, 1650, 1700, 1800, 1900, 2000, 2100, 2150, 2200, 900, 340, 2500, 2200],  # built-up
    [1400, 1250, 1350, 1500, 1800, 2200, 2450, 2550, 2700, 950, 320, 3000, 2300],  # dry grass, scrub
], dtype=np.float32)
COVER_BIAS = np.array([0.2, 0.3, -0.3, -0.2, -1.4, -0.8, -0.1], dtype=np.float32)  # water and built-up rarer
VEGETATION = (0, 1)  # the covers whose phenology differs between the dates
TARGETS = (5, 2, 1)  # what a changed blob becomes: built-up, bare soil or crops
# A date's atmosphere: haze (path radiance, falling with wavelength), water vapour (B09), cirrus (B10)
HAZE = np.array([1.0, 0.8, 0.6, 0.45, 0.35, 0.25, 0.2, 0.18, 0.16, 0.1, 0.0, 0.05, 0.03], dtype=np.float32)
# AFTER's vegetation a little greener or drier (a phenology field times this): NIR up, visible and SWIR down
PHENOLOGY = np.array([-20, -30, -30, -50, -20, 150, 220, 250, 250, 60, 0, -120, -80], dtype=np.float32)
CHANGED = 0.03  # share of the pixels in the changed blobs (their soft edges included)
GENERATOR = "fitted_scale-v2"  # tagged on the pairs: files of another generator are made again
BLOCK = 512
ORIGIN = (399960.0, 5000040.0)  # a Sentinel-2 tile's corner in UTM 33N
RESOLUTION = 10.0
MIB = 2**20


# --------------------------------------------------------------------------------------------- the synthetic pair
class SmoothField:
    """A smooth random field over a ``height x width`` grid: noise at several scales, each upsampled.

    Each octave is a grid of standard normals, one every ``spacing`` pixels, interpolated with
    smoothstep weights (separable: rows then columns, one small matrix product per octave). Any
    block of rows can be evaluated alone and is the same whichever blocks were evaluated before.
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int,
                 spacings: tuple[int, ...] = (1024, 256, 64, 16), amplitudes: tuple[float, ...] = (1.0, 0.6, 0.35, 0.2)
                 ) -> None:
        self.octaves = []
        for spacing, amp in zip(spacings, amplitudes):
            nodes = rng.standard_normal((math.ceil(height / spacing) + 2, math.ceil(width / spacing) + 2)).astype(np.float32)
            self.octaves.append((spacing, amp, nodes))
        self.norm = float(np.sqrt(sum(a * a for a in amplitudes)))
        self._columns: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def _weights(positions: np.ndarray, spacing: int, nodes: int) -> np.ndarray:
        """``(len(positions), nodes)`` interpolation weights of pixel positions onto a node grid."""
        t = (positions.astype(np.float64) + 0.5) / spacing
        i = np.floor(t).astype(np.int64)
        f = t - i
        f = f * f * (3 - 2 * f)  # smoothstep: no creases at the nodes
        w = np.zeros((len(positions), nodes), np.float32)
        rows = np.arange(len(positions))
        w[rows, i] = 1 - f
        w[rows, i + 1] = f
        return w

    def rows(self, y0: int, y1: int, width: int) -> np.ndarray:
        """The field on rows ``y0:y1`` of every column, ``(y1 - y0, width)`` float32, about unit variance."""
        return self.at(np.arange(y0, y1), np.arange(width), key=width)

    def at(self, ys: np.ndarray, xs: np.ndarray, key: int | None = None) -> np.ndarray:
        """The field on the grid ``ys x xs`` of pixel positions (``key``: cache the column weights under it)."""
        out = np.zeros((len(ys), len(xs)), np.float32)
        for n, (spacing, amp, nodes) in enumerate(self.octaves):
            wy = self._weights(ys, spacing, nodes.shape[0])
            wx = self._columns.get((n, key)) if key is not None else None
            if wx is None:
                wx = self._weights(xs, spacing, nodes.shape[1])
                if key is not None:
                    self._columns[(n, key)] = wx
            out += amp * ((wy @ nodes) @ wx.T)
        return out / self.norm


@dataclass
class SceneModel:
    """The fields and per-band constants one synthetic pair is drawn from (seeded)."""

    size: int
    seed: int
    covers: list[SmoothField] = field(init=False)
    brightness: SmoothField = field(init=False)
    change: SmoothField = field(init=False)
    target: SmoothField = field(init=False)
    atmosphere: list[tuple[SmoothField, SmoothField, SmoothField]] = field(init=False)  # per date: haze, vapour, cirrus
    phenology: SmoothField = field(init=False)
    gain: np.ndarray = field(init=False)
    offset: np.ndarray = field(init=False)
    change_level: float = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n = self.size
        self.covers = [SmoothField(rng, n, n) for _ in COVERS]
        self.brightness = SmoothField(rng, n, n, spacings=(512, 64, 8), amplitudes=(1.0, 0.5, 0.3))
        self.change = SmoothField(rng, n, n, spacings=(256, 64, 16), amplitudes=(1.0, 0.4, 0.15))
        self.target = SmoothField(rng, n, n, spacings=(512,), amplitudes=(1.0,))
        self.atmosphere = [tuple(SmoothField(rng, n, n, spacings=(2048, 512), amplitudes=(1.0, 0.5)) for _ in range(3))
                           for _ in range(2)]
        self.phenology = SmoothField(rng, n, n, spacings=(1024, 256, 64), amplitudes=(1.0, 0.5, 0.25))
        self.gain = rng.uniform(0.88, 1.12, len(BANDS)).astype(np.float32)  # AFTER's illumination and calibration
        self.offset = rng.uniform(-80, 120, len(BANDS)).astype(np.float32)
        # the change field's level above which CHANGED of the pixels lie: from a strided sample of the field
        grid = np.arange(0, n, max(1, n // 1024))
        self.change_level = float(np.quantile(self.change.at(grid, grid), 1 - CHANGED))

    def _air(self, date: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """A date's atmosphere on rows ``y0:y1``: an additive ``(13, h, w)`` DN and B09's factor ``(h, w)``."""
        haze, vapour, cirrus = (f.rows(y0, y1, self.size) for f in self.atmosphere[date])
        add = (120.0 + 60.0 * haze) * HAZE[:, None, None]
        add[10] += 15.0 * cirrus  # B10 (cirrus) is mostly the atmosphere of its date
        return add, 1.0 + 0.1 * vapour

    def rows(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """BEFORE and AFTER on rows ``y0:y1``: two ``(13, y1 - y0, size)`` uint16 arrays (0 is nodata: never made).

        Land-cover fractions from smooth fields (nearly pure patches with soft edges) and a pixel
        texture of sub-pixel mixing, both dates alike; brightness (relief, moisture); each date's
        atmosphere; AFTER's vegetation phenology, changed blobs, gain and offset; sensor noise.
        """
        n, h = self.size, y1 - y0
        rng = np.random.default_rng([self.seed, y0])  # the same rows whatever was drawn before
        logits = np.stack([4.0 * f.rows(y0, y1, n) + b for f, b in zip(self.covers, COVER_BIAS)])
        logits += 0.5 * rng.standard_normal(logits.shape, np.float32)  # sub-pixel mixing: a texture both dates share
        logits -= logits.max(axis=0)
        frac = np.exp(logits)
        frac /= frac.sum(axis=0)
        light = 1.0 + 0.12 * self.brightness.rows(y0, y1, n) + 0.02 * rng.standard_normal((h, n), np.float32)
        # changed blobs: the cover becomes built-up, bare soil or crops (a coarse field picks which)
        blend = np.clip((self.change.rows(y0, y1, n) - self.change_level) / 0.1 + 0.5, 0.0, 1.0)
        t = self.target.rows(y0, y1, n)
        new = np.zeros_like(frac)
        for k, pick in zip(TARGETS, (t > 0.3, (t > -0.5) & (t <= 0.3), t <= -0.5)):
            new[k] = pick
        frac_after = frac * (1 - blend) + new * blend
        before = np.tensordot(COVERS.T, frac, 1) * light
        vegetation = frac_after[list(VEGETATION)].sum(axis=0) * self.phenology.rows(y0, y1, n)
        after = (np.tensordot(COVERS.T, frac_after, 1) + PHENOLOGY[:, None, None] * vegetation) * light
        out = []
        for date, img in enumerate((before, after)):
            add, vapour = self._air(date, y0, y1)
            img += add
            img[9] *= vapour
            if date:
                img *= self.gain[:, None, None]
                img += self.offset[:, None, None]
            img += (8.0 + 0.008 * img) * rng.standard_normal(img.shape, np.float32)  # sensor noise, each date its own
            out.append(np.clip(np.rint(img), 1, 65535).astype(np.uint16))
        return out[0], out[1]


def _matches(path: Path, size: int, seed: int, height: int | None = None) -> bool:
    """Whether ``path`` is a pair file this generator made with this size (and height) and seed."""
    import rasterio

    if not path.exists():
        return False
    try:
        with rasterio.open(path) as src:
            tags = src.tags()
            return (src.width, src.height, src.count, src.dtypes[0]) == (size, height or size, len(BANDS), "uint16") and \
                tags.get("GENERATOR") == GENERATOR and tags.get("SEED") == str(seed)
    except rasterio.errors.RasterioIOError:
        return False


def make_pair(work: Path, size: int, seed: int = 0, height: int | None = None) -> tuple[Path, Path]:
    """The synthetic ``size x size`` pair in ``work`` (made block row by block row unless already there).

    With ``height``, only its first ``height`` rows: a ``height x size`` strip of the same scene.
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rows = min(height or size, size)
    stem = f"{size}" if rows == size else f"{rows}x{size}"
    pair = (work / f"s2_{stem}_before.tif", work / f"s2_{stem}_after.tif")
    if all(_matches(p, size, seed, rows) for p in pair):
        print(f"{stem} pair: reused {pair[0].name}, {pair[1].name}", flush=True)
        return pair
    start = time.perf_counter()
    scene = SceneModel(size, seed)
    profile = {"driver": "GTiff", "width": size, "height": rows, "count": len(BANDS), "dtype": "uint16", "nodata": 0,
               "crs": CRS.from_epsg(32633), "transform": from_origin(*ORIGIN, RESOLUTION, RESOLUTION),
               "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate", "predictor": 2,
               "interleave": "pixel", "bigtiff": "IF_SAFER", "num_threads": "all_cpus"}
    partial = [p.with_suffix(".partial.tif") for p in pair]  # a killed generation leaves nothing that looks done
    with rasterio.open(partial[0], "w", **profile) as b, rasterio.open(partial[1], "w", **profile) as a:
        for dst, date in ((b, "before"), (a, "after")):
            dst.descriptions = BANDS
            dst.update_tags(GENERATOR=GENERATOR, SEED=str(seed), DATE=date)
        for y0 in range(0, rows, BLOCK):
            y1 = min(y0 + BLOCK, rows)
            before, after = scene.rows(y0, y1)
            window = Window(0, y0, size, y1 - y0)
            b.write(before, window=window)
            a.write(after, window=window)
            if y0 // BLOCK % 4 == 3 or y1 == rows:
                print(f"{stem} pair: {y1}/{rows} rows ({time.perf_counter() - start:.0f} s)", flush=True)
    for src, dst in zip(partial, pair):
        os.replace(src, dst)
    gib = sum(p.stat().st_size for p in pair) / 2**30
    print(f"{stem} pair: made in {time.perf_counter() - start:.0f} s, {gib:.2f} GiB on disk "
          f"({2 * rows * size * len(BANDS) * 2 / 2**30:.2f} GiB raw)", flush=True)
    return pair


# --------------------------------------------------------------------------------------------- one measured run
def _process_memory(pid: int) -> tuple[int, int, int, str] | None:
    """RSS, PSS, the PSS of shared memory (Ray's object store) in bytes, and a short name of one process; None once gone."""
    try:
        mem = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss", "Pss_Shmem"):
                    mem[key] = int(value.split()[0]) * 1024
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return mem.get("Rss", 0), mem.get("Pss", 0), mem.get("Pss_Shmem", 0), _name(argv)


def _name(argv: list[bytes]) -> str:
    """A process's role from its command line: a Ray worker's title, a Ray daemon, Prefect's API, the driver."""
    words = [w.decode(errors="replace") for w in argv if w]
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split()[0]
    for w in words:
        base = os.path.basename(w)
        if base in ("raylet", "gcs_server") or base.endswith(("dashboard.py", "log_monitor.py", "monitor.py")) \
                or "runtime_env" in base:
            return base
    if any("uvicorn" in w or ("prefect" in w and "server" in w) for w in words):
        return "prefect server"
    if "pipeline.cli" in words:
        return "changemap run (driver)"
    return os.path.basename(words[0])


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds one process has used itself (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores; ``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def _tree(pid: int) -> list[tuple[int, int, int, int, str]]:
    """``(pid, rss, pss, shared-memory pss, name)`` of every process of the tree under ``pid`` (Linux ``/proc``)."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        mem = _process_memory(p)
        if mem is None:
            continue
        out.append((p, *mem))
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


@dataclass
class Measured:
    """One child run: exit code, wall seconds, time-stamped output lines, and the tree's memory peaks."""

    code: int
    wall: float
    lines: list[tuple[float, str]]
    rss: int = 0
    pss: int = 0
    pss_at: float = 0.0  # seconds after the start when the PSS peaked
    by_process: dict[str, tuple[int, int]] = field(default_factory=dict)  # (PSS, its shared memory) per role at that peak
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, tree PSS) every sample
    series: list[dict] = field(default_factory=list)  # every sample: seconds, and MiB of PSS and shared memory per role
    cpu: dict[int, float] = field(default_factory=dict)  # CPU seconds of each process of the tree, last seen
    machine_busy: float = 0.0  # CPU seconds the whole machine was busy while the run lasted
    sampler_cpu: float = 0.0  # CPU seconds the sampling itself took (reading /proc/PID/smaps_rollup walks page tables)

    @property
    def tree_cpu(self) -> float:
        """CPU seconds the run's processes used (as last sampled: a process's last quarter second may be missing)."""
        return sum(self.cpu.values())


def run_measured(cmd: list[str], env: dict[str, str], period: float = 0.25) -> Measured:
    """Run ``cmd``; time-stamp its output lines as they come, and sample its process tree's memory.

    As :func:`benchmarks.common.run_with_peak_memory`, plus the lines' arrival times (the stream's
    span is read from them), the processes that held the PSS peak, and the CPU seconds of the
    tree and of the whole machine (what other processes took from the run's cores).
    """
    busy, start = _machine_busy(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    m = Measured(0, 0.0, [])
    done = threading.Event()

    def sample() -> None:
        begin = time.thread_time()
        while not done.is_set():
            procs = _tree(proc.pid)
            rss, pss, now = sum(p[1] for p in procs), sum(p[2] for p in procs), time.perf_counter() - start
            m.samples.append((now, pss))
            by: dict[str, tuple[int, int]] = {}
            for pid, _, p, shm, name in procs:
                m.cpu[pid] = max(m.cpu.get(pid, 0.0), _cpu_seconds(pid))
                by[name] = (by.get(name, (0, 0))[0] + p, by.get(name, (0, 0))[1] + shm)
            m.series.append({"t": round(now, 2), **{k: [round(v / MIB), round(w / MIB)] for k, v, w in
                                                    ((k, *vw) for k, vw in by.items())}})
            m.rss = max(m.rss, rss)
            if pss > m.pss:
                m.pss, m.pss_at, m.by_process = pss, now, by
            m.sampler_cpu = time.thread_time() - begin
            time.sleep(period)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        m.lines.append((time.perf_counter() - start, line.rstrip("\n")))
    m.code = proc.wait()
    m.wall, m.machine_busy = time.perf_counter() - start, _machine_busy() - busy
    done.set()
    sampler.join()
    return m


@dataclass
class Figures:
    """What one run of one pair measured."""

    size: int
    seconds: float  # the flow's (the summary's)
    fit: float  # the fit step's (the summary's fit.seconds)
    predict: float  # the stream's: first to last ``infer:`` line
    predict_source: str
    flow_minus_fit: float
    wall: float
    startup: float
    pss: int
    rss: int
    pss_at: float
    stream_span: tuple[float, float] | None
    by_process: dict[str, tuple[int, int]]
    summary: dict
    pss_in: dict[str, int]  # the highest tree PSS before, during and after the stream
    tree_cpu: float  # CPU seconds of the run's processes
    other_cpu: float  # CPU seconds other processes of the machine took while the run lasted (the sampler's included)
    sampler_cpu: float  # CPU seconds of the memory sampling
    run: int = 0

    @property
    def label(self) -> str:
        """The scene, and the run where there are several."""
        return f"{self.size}²" + (f" #{self.run + 1}" if self.run else "")

    @property
    def megapixels(self) -> float:
        """Megapixels of the scene (one date)."""
        return self.summary.get("megapixels", self.size * self.size / 1e6)


def stream_span(lines: list[tuple[float, str]]) -> tuple[float, float] | None:
    """Seconds (from the child's start) of its first and last ``infer:`` progress lines: the stream's span."""
    times = [t for t, line in lines if line.startswith("infer:")]
    return (times[0], times[-1]) if len(times) >= 2 else None


def run_pair(pair: tuple[Path, Path], size: int, args: argparse.Namespace, work: Path, prefect_home: Path,
             run: int = 0) -> Figures:
    """``changemap run`` of ``pair`` with the model, in a child process; its figures (files named with ``run``)."""
    name = f"{size}_{args.model}" + (f"_run{run + 1}" if args.runs > 1 else "")
    out, stores = work / f"map_{name}.tif", work / "stores"
    shutil.rmtree(stores, ignore_errors=True)  # an interrupted earlier run's stores would be resumed, not measured
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(pair[0]), str(pair[1]), "--model", args.model,
           "--output", str(out), "--json", "--overwrite", "--workdir", str(stores)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL")}
    env.update(PREFECT_HOME=str(prefect_home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    print(f"running: {' '.join(cmd)}", flush=True)
    m = run_measured(cmd, env)
    summary = next((json.loads(line) for _, line in m.lines if line.startswith("{")), None)
    (work / f"memory_{name}.json").write_text(json.dumps(m.series))  # MiB [PSS, shared] per role, every sample
    (work / f"output_{name}.log").write_text("\n".join(f"{t:8.2f} {line}" for t, line in m.lines) + "\n")
    if m.code or summary is None:
        print("\n".join(line for _, line in m.lines[-60:]))
        raise SystemExit(f"the {size}² run failed with exit code {m.code}")
    (work / f"summary_{name}.json").write_text(json.dumps({**summary, "process_wall": m.wall}, indent=1))
    if summary.get("tiles_reused") or summary.get("chunks_reused"):
        raise SystemExit(f"the {size}² run reused an earlier attempt's tiles or chunks: not a measurement")
    fit = float(summary.get("fit", {}).get("seconds", 0.0))
    span = stream_span(m.lines)
    flow_minus_fit = summary["seconds"] - fit
    predict, source = (span[1] - span[0], "stream") if span else (flow_minus_fit, "flow - fit")
    phases = {"before": 0, "stream": 0, "after": 0}
    for t, pss in m.samples:
        phase = "before" if span and t < span[0] else "after" if span and t > span[1] else "stream"
        phases[phase] = max(phases[phase], pss)
    return Figures(size, summary["seconds"], fit, predict, source, flow_minus_fit, m.wall,
                   sum(summary.get("startup_seconds", {}).values()), m.pss, m.rss, m.pss_at, span, m.by_process, summary,
                   phases, m.tree_cpu, max(0.0, m.machine_busy - m.tree_cpu), m.sampler_cpu, run)


# --------------------------------------------------------------------------------------------- the benchmark
def _verdict(ok: bool) -> str:
    """``met`` or ``not met``."""
    return "met" if ok else "not met"


def report(rows: list[Figures], size: int, base: int, args: argparse.Namespace) -> None:
    """The table, the details of each run, and the two goals."""
    say = lambda s="": print(s, flush=True)
    say(f"\nmodel {args.model}; tile and halo the run's defaults; {os.cpu_count()} CPU cores")
    say("predict s: the stream (decode, the model on every tile, the map writer), from the run's first to its last "
        "'infer:' progress line as they arrived; fit s: the summary's fit.seconds; seconds: the summary's (the flow, "
        "start-up excluded)\n")
    say("| scene | MP | seconds | fit s | predict s | fit/predict | peak PSS MiB | peak RSS MiB |")
    say("|---|---|---|---|---|---|---|---|")
    for r in rows:
        say(f"| {r.label} | {r.megapixels:.1f} | {r.seconds:.1f} | {r.fit:.2f} | {r.predict:.1f} | "
            f"{r.fit / r.predict:.3f} | {r.pss / MIB:,.0f} | {r.rss / MIB:,.0f} |")
    say()
    for r in rows:
        s = r.summary
        fit = s.get("fit", {})
        model = ", ".join(f"{k} {v:.1f}" for k, v in s.get("model_seconds", {}).items())
        startup = ", ".join(f"{k} {v:.1f}" for k, v in s.get("startup_seconds", {}).items())
        span = f"{r.stream_span[0]:.1f}-{r.stream_span[1]:.1f} s" if r.stream_span else "no infer lines"
        say(f"{r.label}: process wall {r.wall:.1f} s = start-up {r.startup:.1f} s ({startup}) + flow {r.seconds:.1f} s "
            f"+ exit; flow - fit {r.flow_minus_fit:.1f} s, of which the stream {r.predict:.1f} s ({r.predict_source}; "
            f"at {span} of the process) and the rest (stores, the writer's Otsu pass, outputs) "
            f"{r.flow_minus_fit - r.predict:.1f} s")
        say(f"{r.label}: fit {fit.get('method')} on {fit.get('n_samples')} pixels, {fit.get('iterations')} iterations "
            f"(converged {fit.get('converged')}), threshold {s.get('threshold'):.3f} ({s.get('threshold_method')}); "
            f"changed {s.get('change', {}).get('changed_percent_of_valid', float('nan')):.2f} % of the valid pixels")
        say(f"{r.label}: model actors' phases s: {model or '-'}")
        shared = sum(w for _, w in r.by_process.values())
        say(f"{r.label}: peak PSS {r.pss / MIB:,.0f} MiB at {r.pss_at:.1f} s = shared memory (Ray's object store) "
            f"{shared / MIB:,.0f} + the rest {(r.pss - shared) / MIB:,.0f}; per process MiB (of which shared memory): "
            + ", ".join(f"{k} {v / MIB:,.0f} ({w / MIB:,.0f})"
                        for k, (v, w) in sorted(r.by_process.items(), key=lambda kv: -kv[1][0])))
        cores = os.cpu_count() or 1
        say(f"{r.label}: CPU seconds: the run's processes {r.tree_cpu:.0f} ({r.tree_cpu / r.wall / cores:.0%} of the "
            f"{cores} cores over its wall), other processes of the machine {r.other_cpu:.0f} "
            f"({r.other_cpu / r.wall / cores:.0%}; a shared machine slows the run), of which this benchmark's memory "
            f"sampling {r.sampler_cpu:.0f}")
        say(f"{r.label}: highest tree PSS before the stream {r.pss_in['before'] / MIB:,.0f} MiB, during it "
            f"{r.pss_in['stream'] / MIB:,.0f} MiB, after it {r.pss_in['after'] / MIB:,.0f} MiB")
    big = [r for r in rows if r.size == size]
    small = [r for r in rows if r.size == base]
    pss_big, pss_small = max(r.pss for r in big), max(r.pss for r in small)
    rss_big, rss_small = max(r.rss for r in big), max(r.rss for r in small)
    ratio = pss_big / pss_small
    fp = max(r.fit / r.predict for r in big)
    worst = f" (the highest of {len(big)} runs)" if len(big) > 1 else ""
    if len(big) > 1 or len(small) > 1:
        spread = lambda v: f"{min(v) / MIB:,.0f}-{max(v) / MIB:,.0f}"
        say(f"\npeak PSS over the runs, MiB: {base}² {spread([r.pss for r in small])}, {size}² {spread([r.pss for r in big])}; "
            f"the ratio below takes the highest of each")
    say(f"\npeak PSS {size}² / {base}²: {ratio:.3f} (goal <= 1.15: {_verdict(ratio <= 1.15)}); "
        f"peak RSS {rss_big / rss_small:.3f}")
    say(f"fit / predict at {size}²{worst}: {fp:.3f} (goal <= 0.5: {_verdict(fp <= 0.5)})")


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.fitted_scale [options]``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.fitted_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="where the pairs (reused), stores, maps and logs go")
    p.add_argument("--model", default="irmad", help="a scene-fitted model (default irmad)")
    p.add_argument("--size", type=int, default=10980, help="side of the large pair (a Sentinel-2 tile: 10980)")
    p.add_argument("--base", type=int, default=2048, help="side of the pair it is compared with (2048)")
    p.add_argument("--runs", type=int, default=1, help="runs of each pair; the highest peaks and fit/predict count")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="changemap-fitted-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder (pairs, stores, maps, each run's output and summary): {work}", flush=True)
    pairs = {s: make_pair(work, s, args.seed) for s in (args.base, args.size)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefect-home-") as home:
        for run in range(args.runs):
            for s in (args.base, args.size):
                rows.append(run_pair(pairs[s], s, args, work, Path(home), run))
                r = rows[-1]
                print(f"{s}²: {r.seconds:.1f} s in the flow, fit {r.fit:.2f} s, predict {r.predict:.1f} s, "
                      f"peak PSS {r.pss / MIB:,.0f} MiB (RSS {r.rss / MIB:,.0f} MiB)", flush=True)
    report(rows, args.size, args.base, args)


if __name__ == "__main__":
    main()
