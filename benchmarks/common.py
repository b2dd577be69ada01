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


def parse_node(spec: str) -> tuple[int, int]:
    """``"CPUS:GPUS"`` -> (CPUS, GPUS), e.g. ``"16:1"``: a node a local runtime claims to be."""
    try:
        cpus, gpus = (int(v) for v in spec.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--simulate-node takes CPUS:GPUS, e.g. 16:1, got {spec!r}") from None
    if cpus < 1 or gpus < 0:
        raise argparse.ArgumentTypeError(f"--simulate-node needs at least 1 CPU and 0 or more GPUs, got {spec!r}")
    return cpus, gpus
