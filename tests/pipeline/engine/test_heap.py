"""Freed heap pages go back to the system between a worker's units of work."""
from __future__ import annotations

import ctypes.util
import os

import numpy as np
import pytest

from pipeline.engine import heap

glibc = pytest.mark.skipif(not (ctypes.util.find_library("c") and os.path.exists("/proc/self/statm")
                                and heap._malloc_trim() is not None),
                           reason="malloc_trim is glibc's; this C library has none")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _heap_of_freed_buffers() -> np.ndarray:
    """Buffers of one size, freed after one of them was: glibc then keeps them in its heap (what a worker does)."""
    np.ones(2_000_000)  # freed at once: the mmap threshold rises to 16 MB
    buffers = [np.ones(2_000_000) for _ in range(30)]  # 480 MB from the heap now
    pinned = buffers.pop()  # the last one, still live at the heap's top, keeps it from shrinking by itself
    del buffers
    return pinned


@glibc
def test_release_returns_freed_buffers_to_the_system() -> None:
    pinned = _heap_of_freed_buffers()
    held = _rss_mib()
    assert heap.release_free_memory() is True
    assert held - _rss_mib() > 300, "the freed buffers' pages should have left the process"
    assert pinned.sum() == 2_000_000  # live memory untouched


@glibc
def test_trimmed_task_releases_when_it_returns_and_when_it_raises() -> None:
    kept: list[np.ndarray] = []

    def task(fail: bool) -> int:
        kept.append(_heap_of_freed_buffers())
        if fail:
            raise ValueError("bad segment")
        return 7

    wrapped = heap.trimmed(task)
    assert wrapped.__name__ == "task"  # Ray names the task after the function
    before = _rss_mib()
    assert wrapped(False) == 7
    assert _rss_mib() - before < 100
    with pytest.raises(ValueError, match="bad segment"):
        wrapped(True)
    assert _rss_mib() - before < 100
