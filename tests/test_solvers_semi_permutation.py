"""The semi-permutation update against brute force on small local problems, and at equal widths
against permutations (where the two classes have the same elements)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import architectures
import solvers
from solvers.local import Local
from solvers.splits import _Terms, project_simplex, split_update
from symmetries import Permutation, SemiPermutation
from symmetries.assignment import solve_assignment
from symmetries.elements import GatherElement
from symmetries.roles import Role


def _local(m, n, seed, var=False):
    g = torch.Generator().manual_seed(seed)

    def draw(fn, rows, cols):
        return fn(rows, cols, generator=g, dtype=torch.float64)
    loc = Local(m, n)
    loc.add(Role.OUT, draw(torch.randn, m, 6), draw(torch.randn, n, 6))
    loc.add(Role.IN, draw(torch.randn, m, 3), draw(torch.randn, n, 3))
    if var:
        loc.add(Role.VAR, draw(torch.rand, m, 1), draw(torch.rand, n, 1))
    return loc


def _earlier_rule(local: Local) -> GatherElement:
    """The update this library shipped before (kept as the reference it must never lose to): every
    pair priced at its best unconstrained fraction, one LAP with ``m − n`` free columns, then the
    simplex projection of each group's ratios."""
    m, n = local.m, local.n
    alpha = local.cross(Role.OUT).numpy()
    beta, a_out = local.row_norms(Role.OUT, "b").numpy(), local.row_norms(Role.OUT, "a").numpy()
    cin = local.cross(Role.IN).numpy()
    a_in, b_in = local.row_norms(Role.IN, "a").numpy(), local.row_norms(Role.IN, "b").numpy()
    cost = a_out[:, None] - np.maximum(alpha, 0) ** 2 / beta + a_in[:, None] - 2 * cin + b_in[None, :]
    rows, cols = solve_assignment(np.concatenate([cost, np.repeat(cost.min(1, keepdims=True), m - n, axis=1)], 1),
                                  maximize=False, backend="scipy")
    source = cost.argmin(1)
    source[rows[cols < n]] = cols[cols < n]
    fractions = np.ones(m)
    for i in np.flatnonzero(np.bincount(source, minlength=n) > 1):
        group = np.flatnonzero(source == i)
        fractions[group] = project_simplex(alpha[group, i] / beta[i])
    return GatherElement.split(torch.as_tensor(source), torch.as_tensor(fractions), n)


def _local_optimum(local: Local) -> float:
    """min over every surjection σ (groups of ≤ 3 units) and, per group, every fraction vector on a
    fine grid of the simplex (independent of the update's own fraction refit)."""
    t = _Terms(local)
    m, n = local.m, local.n
    f2 = np.linspace(0, 1, 20001)
    grids = {1: np.ones((1, 1)), 2: np.stack([f2, 1 - f2], 1)}
    g3 = np.linspace(0, 1, 301)
    x, y = (v.ravel() for v in np.meshgrid(g3, g3))
    keep = x + y <= 1 + 1e-12
    grids[3] = np.stack([x[keep], y[keep], np.maximum(1 - x[keep] - y[keep], 0)], 1)
    best = np.inf
    for sigma in itertools.product(range(n), repeat=m):
        counts = np.bincount(sigma, minlength=n)
        if counts.min() == 0 or counts.max() > 3:
            continue
        sigma = np.asarray(sigma)
        total = 0.0
        for i in range(n):
            group = np.flatnonzero(sigma == i)
            total += float(t.loss(group[None, :], i, grids[group.size]).sum(1).min())
        best = min(best, total)
    return best


def test_equal_widths_update_is_the_exact_permutation_lap():
    for seed in range(12):
        loc = _local(4, 4, seed, var=seed % 2 == 1)
        el = split_update(loc, backend="scipy")
        best = min(loc.loss(GatherElement(torch.tensor(p), 4)) for p in itertools.permutations(range(4)))
        assert el.bijective and loc.loss(el) == pytest.approx(best, rel=1e-12)


def test_update_never_loses_to_the_earlier_rule_and_mostly_finds_the_local_optimum():
    hits, cases = 0, 0
    for m, n in [(3, 2), (4, 2), (4, 3), (5, 4)]:
        for seed in range(10):
            loc = _local(m, n, seed)
            el = split_update(loc, backend="scipy")
            assert SemiPermutation().contains(el.as_matrix())
            value, earlier, optimum = loc.loss(el), loc.loss(_earlier_rule(loc)), _local_optimum(loc)
            assert value <= earlier + 1e-12 * earlier, (m, n, seed)
            assert value >= optimum * (1 - 1e-4), (m, n, seed)  # the grid's resolution
            hits += value <= optimum * (1 + 1e-6)
            cases += 1
    # measured: 31 of the 40 cases (the earlier rule: 10); the assignment step is a heuristic
    assert hits >= 0.75 * cases, (hits, cases)


def test_equal_widths_semi_permutation_search_matches_permutation_search():
    arch = architectures.mlp([10, 8, 7, 3])
    for seed in range(4):
        a = {k: v.double() for k, v in arch.module(seed=seed).state_dict().items()}
        b = {k: v.double() for k, v in arch.module(seed=seed + 10).state_dict().items()}
        p = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), seed=seed)
        s = solvers.solve("semi_permutation", arch.graph, a, b, classes=SemiPermutation(), seed=seed)
        assert s.objective_after == pytest.approx(p.objective_after, rel=1e-12)
        for space in p.transforms:
            assert torch.equal(s.transforms[space].as_matrix(), p.transforms[space].as_matrix())
