"""What the benchmarks share: the shared data folder, LEVIR mosaics of any size, peak memory of a process tree, nodes."""
from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _tree_memory(pid: int) -> tuple[int, int]:
    """Resident and proportional (shared pages split between sharers) bytes of a process tree.

    RSS summed over processes counts shared libraries and shared memory once per process;
    PSS counts them once in all, so it is the fairer total (Linux /proc).
    """
    rss = pss = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return rss, pss


def run_with_peak_memory(cmd: list[str], env: dict[str, str] | None = None
                         ) -> tuple[int, float, tuple[int, int], str]:
    """Run a command; return (exit code, seconds, peak tree (RSS, PSS) in bytes, combined output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = (0, 0)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            rss, pss = _tree_memory(proc.pid)
            peak = (max(peak[0], rss), max(peak[1], pss))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    return proc.returncode, time.perf_counter() - start, peak, out


# What each process of a run is, from its command line (first match). A Ray worker's title is
# ``ray::ClassName`` once it hosts an actor and ``ray::function`` while it runs a task.
# A worker's command line names the raylet's socket (``--raylet-name``): workers are matched first.
_ROLES = (("ray::MapWriter", "map writer"), ("Predictor", "model actor"), ("default_worker", "stream workers"),
          ("ray::", "stream workers"), ("raylet", "raylet"),
          ("gcs_server", "gcs"), ("prefect.server", "prefect api"), ("uvicorn", "prefect api"),
          ("dashboard", "ray services"), ("log_monitor", "ray services"), ("runtime_env", "ray services"),
          ("monitor.py", "ray services"))


def _role(cmdline: str) -> str:
    return next((role for key, role in _ROLES if key in cmdline), "other")


class CpuSampler:
    """CPU seconds (user + system) of a process tree by role, sampled from /proc while it runs.

    Each process's last reading is kept after it exits, so only the CPU a process spends in its
    last sampling period (``period`` seconds) is missed. A process keeps the role it is first
    seen with, except that a worker that takes an actor becomes that actor. Reading
    ``/proc/PID/stat`` is cheap: it does not slow the run the way sampling its memory does.
    """

    def __init__(self, root: int, period: float = 0.1) -> None:
        self.root, self.period = root, period
        self.cpu: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                t = p.cpu_times()
                seen = self.roles.get(p.pid)
                if seen not in ("map writer", "model actor"):
                    now = "driver" if p.pid == self.root else _role(" ".join(p.cmdline()))
                    # a process's title changes (a worker takes an actor, a server renames itself, an exiting
                    # process loses its command line): keep what it was first seen as, unless it becomes an actor
                    if seen is None or seen == "other" or now in ("map writer", "model actor"):
                        self.roles[p.pid] = now
                self.cpu[p.pid] = t.user + t.system  # not children_*: they are counted themselves
            except psutil.Error:
                continue

    def _loop(self) -> None:
        while not self._done.is_set():
            self._sample()
            time.sleep(self.period)

    def start(self) -> CpuSampler:
        """Start sampling in a thread."""
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop; the CPU seconds by role."""
        self._done.set()
        self._thread.join()
        by_role: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            by_role[self.roles[pid]] = by_role.get(self.roles[pid], 0.0) + seconds
        return by_role


def run_with_cpu(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, dict[str, float], str]:
    """Run a command; return (exit code, seconds, CPU seconds of its process tree by role, combined output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = CpuSampler(proc.pid).start()
    out, _ = proc.communicate()
    return proc.returncode, time.perf_counter() - start, sampler.stop(), out


def raw_decode_cpu(before: Path, after: Path, window: int = 512) -> float:
    """CPU seconds per megapixel of reading both dates window by window with rasterio, one thread.

    The floor of any data path: the pixels of both dates decoded once (windows of the tile size,
    all bands, the files' own dtype).
    """
    import rasterio
    from rasterio.windows import Window

    start = time.process_time()
    with rasterio.Env(GDAL_NUM_THREADS="1"):
        for path in (before, after):
            with rasterio.open(path) as src:
                for y in range(0, src.height, window):
                    for x in range(0, src.width, window):
                        src.read(window=Window(x, y, min(window, src.width - x), min(window, src.height - y)))
        with rasterio.open(before) as src:
            megapixels = src.width * src.height / 1e6
    return (time.process_time() - start) / megapixels


def make_mosaic(path: Path, size: int, sources: list[str], block: int = 1024, seed: int = 0,
                width: int | None = None) -> None:
    """Write a size x size (or size x ``width``) 3-band mosaic of randomly rotated source tiles, block by block."""
    from pipeline.io import cog, raster, read

    rng = np.random.default_rng(seed)
    tiles = [np.stack([read.read_raster(p, b)[0] for b in (1, 2, 3)]) for p in sources]
    first = raster.read_info(sources[0]).grid
    from pipeline.grid import Grid

    grid = Grid(first.crs_wkt, first.transform, width or size, size)

    def blocks():
        for y0, x0, h, w in cog.iter_blocks(size, width or size, block):
            t = tiles[rng.integers(len(tiles))]
            t = np.rot90(t, k=int(rng.integers(4)), axes=(1, 2))
            yield (y0, x0, h, w), np.ascontiguousarray(t[:, :h, :w]), np.ones((h, w), bool)

    cog.write_cog(str(path), grid, 3, "uint8", blocks())


def levir_mosaic_pair(data: Path, work: Path, height: int, width: int | None = None) -> tuple[Path, Path]:
    """BEFORE and AFTER mosaics (``height`` x ``width or height``) of LEVIR-CD test_1..3 from ``data``, made once in ``work``."""
    root = Path(data) / "levir-cd-1024" / "geotiff"
    stem = f"{height}" if width is None else f"{height}x{width}"
    pair = (work / f"before_{stem}.tif", work / f"after_{stem}.tif")
    for path, date in zip(pair, "AB"):
        if not path.exists():
            make_mosaic(path, height, [str(root / f"test_{i}_{date}.tif") for i in (1, 2, 3)], width=width)
    return pair


def parse_node(spec: str) -> tuple[int, int]:
    """``"CPUS:GPUS"`` -> (CPUS, GPUS), e.g. ``"16:1"``: a node a local runtime claims to be."""
    try:
        cpus, gpus = (int(v) for v in spec.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--simulate-node takes CPUS:GPUS, e.g. 16:1, got {spec!r}") from None
    if cpus < 1 or gpus < 0:
        raise argparse.ArgumentTypeError(f"--simulate-node needs at least 1 CPU and 0 or more GPUs, got {spec!r}")
    return cpus, gpus
