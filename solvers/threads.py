"""How many threads a solve uses: chosen by the size of its work, restored afterwards.

Many small torch/BLAS calls (a 128×128 Birkhoff projection, a per-space LAP score) gain nothing
from a second thread and lose orders of magnitude when OpenMP threads spin against a busy
neighbour (a notebook, a CI job, a shared cluster node). So a solve whose largest matrix product
is small runs on one thread; a large one (GPT-2-sized weights) keeps the caller's setting.

``work(problem)`` is the multiply-adds of one cross product per edge, ``Σ_e m_e · n_e · k_e``
(A's rows × B's rows × the flattened rest of the tensor) — the dominant cost of a weight-matching
sweep. Below :data:`SINGLE_THREAD_WORK` the solve runs with one torch and one BLAS thread.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Iterator

import torch

__all__ = ["SINGLE_THREAD_WORK", "SINGLE_THREAD_ENTRIES", "SINGLE_THREAD_WIDTH", "work", "threads_for",
           "threads_for_inputs", "solve_threads", "thread_budget"]

#: Multiply-adds per sweep below which one thread is used (about a second of one core). Measured
#: (benchmarks/bench_threads.py, 2 cores): the 784-512-512-512-10 MLP (1e9 per sweep) takes 0.15 s on
#: one thread and 0.13 s on two when the machine is quiet, 2 s on two beside a busy neighbour; the
#: GPT-2-small shape (1e11) gains 1.9x from a second core.
SINGLE_THREAD_WORK = int(os.environ.get("SYMMETRIES_SINGLE_THREAD_WORK", 5 * 10**9))


#: Entries of the two models below which checking them at the door (norms, extremes: a pass each over
#: memory) runs on one thread: 16 M entries take a few ms on one core.
SINGLE_THREAD_ENTRIES = 1 << 24


#: Widths up to which a unit's subproblem (an assignment, a polar factor, per-head blocks) is solved on one
#: thread inside a solve that uses more: an SVD of 768² gains little from a second thread on a quiet machine
#: and took 6 s instead of 0.25 s beside a busy neighbour (benchmarks/bench_solvers.py, GPT-2-small shape).
SINGLE_THREAD_WIDTH = 2048


def work(problem) -> int:
    """``Σ_e m·n·k`` over every edge of A's graph: the multiply-adds of one sweep's cross products."""
    total = 0
    for edge in problem.graph.edges():
        if edge.parameter not in problem.params_a:
            continue
        shape = problem.shape(edge.parameter, "a")  # from metadata: a lazy problem reads nothing here
        if not shape:
            continue
        size, numel = shape[edge.axis], math.prod(shape)
        m, n = problem.sizes.get(edge.space, (size, size))
        total += m * n * (numel // max(size, 1)) * edge.count
    return total


def threads_for(problem) -> int:
    """1 for small work, else the caller's current ``torch.get_num_threads()``."""
    return 1 if work(problem) < SINGLE_THREAD_WORK else torch.get_num_threads()


def solve_threads(locals_) -> int:
    """1 when every space of a unit (its :class:`~solvers.local.Local` views) is at most
    :data:`SINGLE_THREAD_WIDTH` wide, else the caller's current ``torch.get_num_threads()``."""
    small = all(max(loc.m, loc.n) <= SINGLE_THREAD_WIDTH for loc in locals_)
    return 1 if small else torch.get_num_threads()


def threads_for_inputs(*param_sets) -> int:
    """1 when the parameter sets (mappings name → tensor or array) hold fewer than
    :data:`SINGLE_THREAD_ENTRIES` entries in all, else the caller's current ``torch.get_num_threads()``
    (also for inputs whose size is not known without reading them)."""
    total = 0
    for params in param_sets:
        values = params.values() if hasattr(params, "values") else None
        if values is None:
            return torch.get_num_threads()
        for v in values:
            size = v.numel() if isinstance(v, torch.Tensor) else getattr(v, "size", None)
            if not isinstance(size, int):
                return torch.get_num_threads()
            total += size
    return 1 if total < SINGLE_THREAD_ENTRIES else torch.get_num_threads()


@contextlib.contextmanager
def thread_budget(threads: int) -> Iterator[int]:
    """Run the block with ``threads`` torch intra-op threads and BLAS/OpenMP pools limited to it;
    the caller's settings are restored afterwards (also on error)."""
    before = torch.get_num_threads()
    if threads >= before:
        yield before
        return
    torch.set_num_threads(threads)
    try:
        with _controller().limit(limits=threads):
            yield threads
    finally:
        torch.set_num_threads(before)


_CONTROLLER: list = []  # [(len(sys.modules) when built, threadpoolctl.ThreadpoolController)]


def _controller():
    """A ``ThreadpoolController`` of the loaded BLAS/OpenMP libraries, built again only after new modules
    were imported (which may load new libraries): finding them scans every loaded library, ~2 ms —
    more than the rest of a small solve's set-up."""
    from threadpoolctl import ThreadpoolController

    if not _CONTROLLER or _CONTROLLER[0][0] != len(sys.modules):
        _CONTROLLER[:] = [(len(sys.modules), ThreadpoolController())]
    return _CONTROLLER[0][1]
