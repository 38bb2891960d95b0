"""The ``D P`` assignment: ``argmin_π Σ_j f*_{j π(j)}``, the pair loss ``f*_{ji} = min_c f_{ji}(c)`` of
:mod:`solvers.scaling` for A's unit ``j`` matched to B's unit ``i`` at its best scale — a linear assignment on
the ``n × n`` pair grid, with most of the grid bounded in closed form instead of solved.

In the quartic's variables (``f = κ h(t)``, ``h = t² + t⁻² − 2At − 2G/t``; ``S = A + G``, ``D = A − G``,
``w = t − 1/t``): ``h(t) − h(1) = w² − Dw − S(√(w² + 4) − 2)`` with ``0 ≤ √(w² + 4) − 2 ≤ w²/4``, so for
``S < 4``

    κ(2 − 2S) − κD²/(4 − S⁺)  ≤  f*  ≤  κ(2 − 2S)        (the upper bound is ``t = 1``),

a gap of ``O(κ D² S)`` — about 1e-4 of the losses on real layers, far below the spread the assignment
decides on. :func:`scale_assignment` solves the assignment on the lower bound with ``f*`` put in where it
was computed exactly (the pairs that can matter: those whose lower bound comes within the largest gap of
the upper bound of the start's pair in their row or column, :func:`~solvers.scaling.pair_grid` on them
alone), and again with the exact ``f*`` of any bounded pair the optimum used, until it uses exact pairs
only. Then it is the optimum of the exact grid: every other assignment costs at least its bounded cost,
which is at least this one's, exact. (Equal-cost optima may differ from the full grid's pick.)
"""
from __future__ import annotations

import numpy as np

from symmetries.assignment import assignment_permutation

from solvers.scaling import pair_grid, quartic_variables

__all__ = ["scale_assignment"]

BOUND_MIN = 48  # below this width the whole grid costs less than the bound and a second small solve
BOUND_MAX = 1024  # above it the n × n assignment outweighs the grid (n = 2048: 155 ms against 170 ms): the whole grid
MAX_ROUNDS = 3  # assignments on partly bounded grids before the rest of the grid is computed exactly
SEED_MAX = 0.25  # a seed wider than this fraction of the grid: the whole grid instead (one assignment)
S_MAX = 3.5  # the bound is used while every A + G stays below this (its denominator 4 − S⁺ ≥ 0.5)
MARGIN = 1e-12  # the lower bound is lowered by this (relative to 2κ): its round-off never lifts it above f*


def scale_assignment(alpha, beta, gamma, delta, zeta=0.0, eps=0.0, *, start=None, backend: str = "auto"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(π, c, f)``: the permutation minimising ``Σ_j f*_{j π(j)}`` over the ``n × n`` grid of scale terms
    (:mod:`solvers.scaling`: crosses ``n × n``, norms ``1 × n``), with each matched pair's best scale
    ``c_j`` and loss ``f_j = f*_{j π(j)}``. ``start``: a permutation near the answer (the current one), which
    picks the pairs computed first. Without it, and where the bound does not apply (``var`` edges, a zero
    norm, ``A + G ≥ 3.5`` somewhere, a grid narrower than :data:`BOUND_MIN` or wider than :data:`BOUND_MAX`, a seed
    wider than :data:`SEED_MAX` of the grid), the whole grid is solved: each round is an ``n × n`` assignment,
    which on wide grids costs more than the pair losses it spares."""
    grid = None if start is None else _bounds(alpha, beta, gamma, delta, zeta, eps)
    out = None if grid is None else _bounded(*grid, np.asarray(start, dtype=np.int64), backend)
    if out is None:
        c, f = pair_grid(alpha, beta, gamma, delta, zeta, eps)
        return _matched(assignment_permutation(f, maximize=False, backend=backend), c, f)
    return out


def _matched(perm, scale, cost):
    """``(π, c, f)`` of the matched pairs ``(j, π(j))``."""
    rows = np.arange(perm.size)
    return perm, scale[rows, perm], cost[rows, perm]


def _bounded(a, b, g, d, low, gap, start, backend):
    """:func:`scale_assignment` on the bounded grid; ``None`` (solve the whole grid) where the seed is wide or a
    pair's exact loss is not finite."""
    n = low.shape[0]
    rows = np.arange(n)
    cost, scale, exact = low, np.empty((n, n)), np.zeros((n, n), dtype=bool)
    flat = _seed(low, gap, start)
    if flat.size > SEED_MAX * n * n:
        return None
    for _ in range(MAX_ROUNDS):
        if not _solve_pairs(flat, a, b, g, d, cost, scale, exact):
            return None
        perm = assignment_permutation(cost, maximize=False, backend=backend)
        missing = np.flatnonzero(~exact[rows, perm])
        if not missing.size:
            return _matched(perm, scale, cost)
        flat = missing * n + perm[missing]
    if not _solve_pairs(np.flatnonzero(~exact), a, b, g, d, cost, scale, exact):
        return None
    return _matched(assignment_permutation(cost, maximize=False, backend=backend), scale, cost)


def _bounds(alpha, beta, gamma, delta, zeta, eps):
    """``(α, β, γ, δ, lower bound, gap)`` as float64 numpy grids (``gap = κD²/(4 − S⁺_max) ≥`` each pair's
    ``upper − lower``), or ``None`` where the bound does not apply."""
    if not all(isinstance(x, np.ndarray) for x in (alpha, beta, gamma, delta)) or np.any(zeta) or np.any(eps):
        return None
    a, g = alpha, gamma
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not BOUND_MIN <= a.shape[0] <= BOUND_MAX or g.shape != a.shape:
        return None
    n = a.shape[0]
    b, d = beta.reshape(1, -1), delta.reshape(1, -1)
    if b.shape[1] != n or d.shape[1] != n or not (b.min() > 0 and d.min() > 0 and np.isfinite(b).all()
                                                  and np.isfinite(d).all()):
        return None
    s, k = quartic_variables(b, d)
    with np.errstate(all="ignore"):
        big_a, big_g = a * (s / k), g * (1.0 / (s * k))
        total = big_a + big_g  # S
        top = float(total.max())  # nan or inf here if any A or G is not finite
        if not (np.isfinite(top) and top < S_MAX):
            return None
        gap = np.subtract(big_a, big_g, out=big_a)  # D
        gap *= gap
        gap *= k / (4.0 - max(top, 0.0))  # κD²/(4 − S⁺_max)
        total *= -2.0 * k
        total += 2.0 * (1.0 - MARGIN) * k
        low = np.subtract(total, gap, out=total)  # κ(2 − 2S) − gap, lowered by 2κ·MARGIN
    return a, b, g, d, low, gap


def _seed(low, gap, start) -> np.ndarray:
    """The flat indices of the pairs computed first: the start's, and those whose lower bound is within the
    widest gap of the upper bound of the start's pair in their row or in their column."""
    n = low.shape[0]
    rows = np.arange(n)
    inv = np.empty(n, dtype=np.int64)
    inv[start] = rows
    upper = low[rows, start] + gap[rows, start] + float(gap.max())
    todo = low <= np.maximum(upper[:, None], upper[inv][None, :])
    todo[rows, start] = True
    return np.flatnonzero(todo)


def _solve_pairs(flat, a, b, g, d, cost, scale, exact) -> bool:
    """``f*`` and its scale for the pairs at the flat indices ``flat`` not yet exact, into ``cost``, ``scale``;
    ``False`` (nothing written) if one is not finite."""
    flat = flat[~exact.reshape(-1)[flat]]
    if not flat.size:
        return True
    cols = flat % a.shape[1]
    c, f = pair_grid(a.reshape(-1)[flat], b[0, cols], g.reshape(-1)[flat], d[0, cols])
    if not np.isfinite(f).all():
        return False
    cost.reshape(-1)[flat] = f
    scale.reshape(-1)[flat] = c
    exact.reshape(-1)[flat] = True
    return True
