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
from typing import Iterator

import torch

__all__ = ["SINGLE_THREAD_WORK", "work", "threads_for", "thread_budget"]

#: Multiply-adds per sweep below which one thread is used (about a second of one core). Measured
#: (benchmarks/bench_threads.py, 2 cores): the 784-512-512-512-10 MLP (1e9 per sweep) takes 0.15 s on
#: one thread and 0.13 s on two when the machine is quiet, 2 s on two beside a busy neighbour; the
#: GPT-2-small shape (1e11) gains 1.9x from a second core.
SINGLE_THREAD_WORK = int(os.environ.get("SYMMETRIES_SINGLE_THREAD_WORK", 5 * 10**9))


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


@contextlib.contextmanager
def thread_budget(threads: int) -> Iterator[int]:
    """Run the block with ``threads`` torch intra-op threads and BLAS/OpenMP pools limited to it;
    the caller's settings are restored afterwards (also on error)."""
    before = torch.get_num_threads()
    if threads >= before:
        yield before
        return
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield threads
    finally:
        torch.set_num_threads(before)
