"""Give a long-lived process's freed heap pages back to the system between units of work.

glibc's allocator keeps the pages of freed buffers in its arenas: after freeing a large
buffer it raises its mmap threshold, so the next buffers of that size come from the heap, and
a heap freed in the middle is not returned. A stream worker or a model actor that handles
hundreds of segments of a big scene so grows by what it once held, not by what it holds
(``docs/benchmarks/2026-12-07-dev-2core.md``: +300 MiB over a 10980² 13-band scene).
``malloc_trim(0)`` after each unit returns those pages (madvise of every free chunk, all
arenas); the buffers of one unit keep being reused within it, so it costs a few page faults
per unit, not one per buffer as a fixed mmap threshold does.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def _malloc_trim():
    """The C library's ``malloc_trim`` (glibc), or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def trimmed(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, releasing the heap's free pages when it returns (a Ray task of a long-lived worker)."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            release_free_memory()
    return run
