"""Giving freed memory back to the operating system between the steps of a long solve.

glibc's allocator keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold in its heaps: a
solve that builds and drops score matrices, B's transformed rows and ``J``'s chunks of a model of
hundreds of MiB leaves that much resident and unused, and the next step's blocks land beside it rather
than in it — the process's resident set grows by fragmentation, not by what the solver holds (measured
on the GPT-2-small shape: a peak 240–580 MiB above A and B from run to run, ≈ 0 with the heap trimmed
between visits; see ``benchmarks/bench_solvers.py``). :func:`release_free_memory` asks glibc to return
those pages (``malloc_trim(0)``: microseconds to milliseconds); elsewhere (macOS, Windows, musl) it does
nothing. The solver calls it only for problems of at least :data:`TRIM_BYTES`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import sys

import torch

__all__ = ["release_free_memory", "problem_bytes", "TRIM_BYTES"]

#: Problems whose tensors (A and B) hold at least this many bytes trim the heap between visits;
#: ``SYMMETRIES_TRIM_BYTES`` overrides it (a negative value: never).
TRIM_BYTES = int(os.environ.get("SYMMETRIES_TRIM_BYTES", 64 << 20))


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim  # glibc only (musl has no malloc_trim)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS; whether that was possible here (glibc)."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def problem_bytes(problem) -> int:
    """Bytes of A's and B's tensors in the problem's working dtype (from shapes: a lazy problem reads nothing)."""
    size = torch.empty((), dtype=problem.dtype).element_size()
    return sum(math.prod(problem.shape(name, side)) * size for name in problem.params_a for side in ("a", "b"))

