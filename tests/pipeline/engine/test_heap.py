"""Freed heap pages go back to the system between a worker's units of work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.engine import heap
from tests.conftest import REPO

glibc = pytest.mark.skipif(heap._malloc_trim() is None or not os.path.exists("/proc/self/statm"),
                           reason="malloc_trim is glibc's; this C library has none")

# Run in a fresh interpreter: the allocator's state (its mmap threshold, its arenas) is the process's,
# and a test worker that ran other tests first holds whatever they left.
WORKER = """
import json, os, sys
import numpy as np
from pipeline.engine import heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def unit():
    '''What a stream worker's task leaves: buffers of one size, freed after one of them was.'''
    np.ones(2_000_000)  # freed at once: glibc's mmap threshold rises to 16 MB
    buffers = [np.ones(2_000_000) for _ in range(30)]  # 480 MB from the heap now
    pinned = buffers.pop()  # the last, still live at the heap's top, keeps it from shrinking by itself
    del buffers
    if sys.argv[1] == "fail":
        raise ValueError("bad segment")
    return pinned

start = rss()
if sys.argv[1] == "release":
    pinned = unit()
    held = rss()
    released = heap.release_free_memory()
    print(json.dumps(dict(start=start, held=held, after=rss(), released=released, live=float(pinned.sum()))))
else:
    try:
        pinned = heap.trimmed(unit)()
    except ValueError as exc:
        pinned = str(exc)
    result = pinned if isinstance(pinned, str) else float(pinned.sum())
    print(json.dumps(dict(start=start, after=rss(), name=heap.trimmed(unit).__name__, result=result)))
"""


def _worker(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@glibc
def test_release_returns_freed_buffers_to_the_system() -> None:
    r = _worker("release")
    assert r["held"] - r["start"] > 300, "the unit should leave its freed buffers in the heap (glibc's behaviour)"
    assert r["released"] is True
    assert r["held"] - r["after"] > 300, "the freed buffers' pages should have left the process"
    assert r["live"] == 2_000_000  # live memory untouched


@glibc
@pytest.mark.parametrize("mode", ["return", "fail"])
def test_a_trimmed_task_releases_when_it_returns_and_when_it_raises(mode) -> None:
    r = _worker(mode)
    assert r["name"] == "unit"  # Ray names the task after the function
    assert r["result"] == (2_000_000 if mode == "return" else "bad segment")
    assert r["after"] - r["start"] < 100  # only the live buffer (16 MB) is left
