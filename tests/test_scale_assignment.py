"""The D P assignment on a partly bounded pair grid (solvers.scale_assignment): the closed-form bounds of the
pair loss hold, and the assignment — its cost, its pairs' scales and losses — is the full grid's."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import solvers.scale_assignment as sa
from solvers.scaling import best_scale_eig, pair_grid
from symmetries.assignment import assignment_permutation


@settings(max_examples=300, deadline=None)
@given(st.floats(-3, 3), st.floats(-3, 3))
def test_pair_loss_lies_between_its_closed_form_bounds(a, g):
    """``2 − 2S − D²/(4 − S⁺) ≤ min_t h(t) ≤ 2 − 2S`` (``κ = s = 1``: ``A = α``, ``G = γ``) wherever ``S < 4``;
    the minimum by companion-matrix eigenvalues, independent of the quartic's Newton paths."""
    s, dd = a + g, a - g
    if s >= 3.9:
        return
    _, f = best_scale_eig(a, 1.0, g, 1.0)
    tol = 1e-9 * (1 + abs(a) + abs(g))
    assert 2 - 2 * s - dd * dd / (4 - max(s, 0.0)) <= float(f) + tol
    assert float(f) <= 2 - 2 * s + tol


@pytest.mark.parametrize("spread", [0.1, 0.5, 1.2])
def test_module_bounds_hold_on_every_pair_of_a_grid(spread):
    """The module's own lower bound and gap (its scalar ``S⁺_max``, its margin) on a grid with correlations up to
    ``A + G`` near 3.5: ``lower ≤ f* ≤ lower + gap`` (up to the margin) for every pair, ``f*`` by eigenvalues."""
    terms, _ = _grid(48, spread, 11)
    grid = sa._bounds(**terms, zeta=0.0, eps=0.0)
    if grid is None:  # the drawn grid has A + G ≥ S_MAX somewhere: shrink it below
        terms = {k: v * (0.5 if k in ("alpha", "gamma") else 1) for k, v in terms.items()}
        grid = sa._bounds(**terms, zeta=0.0, eps=0.0)
    *_, low, gap = grid
    _, f = best_scale_eig(**terms)
    tol = 1e-9 * np.abs(f).max()
    assert np.all(low <= f + tol)
    assert np.all(f <= low + gap + 4 * sa.MARGIN * np.abs(f).max() + tol)


def _grid(n, spread, seed, planted=False):
    """Scale terms of an ``n × n`` D P grid: crosses at correlation ``spread`` (``planted``: B's unit
    ``π(j)`` is A's ``j`` scaled, plus noise — strong correlations on one permutation), positive norms."""
    g = np.random.default_rng(seed)
    b, d = g.uniform(0.2, 3, (1, n)), g.uniform(0.2, 3, (1, n))
    a = g.normal(size=(n, n)) * spread * np.sqrt(b)
    gm = g.normal(size=(n, n)) * spread * np.sqrt(d)
    perm = g.permutation(n)
    if planted:  # A = αs/κ and G = γ/(sκ) of about 0.8 (times a mismatch of scale) on the planted pairs
        rows, s, k = np.arange(n), (d[0] / b[0]) ** 0.25, np.sqrt(b[0] * d[0])
        mismatch = g.uniform(0.7, 1.4, n)
        a[rows, perm] += 0.8 * mismatch * k[perm] / s[perm]
        gm[rows, perm] += 0.8 / mismatch * k[perm] * s[perm]
    return dict(alpha=a, beta=b, gamma=gm, delta=d), perm


def _full(terms):
    c, f = pair_grid(**terms)
    perm = assignment_permutation(f, maximize=False)
    return perm, c, f


def _check(terms, start):
    """The bounded assignment against the full grid's: the same optimal cost (to round-off), and its pairs'
    scales and losses the grid's own at those pairs."""
    perm_full, c, f = _full(terms)
    rows = np.arange(perm_full.size)
    perm, cs, fs = sa.scale_assignment(**terms, start=start)
    assert sorted(perm) == list(rows)
    best = f[rows, perm_full].sum()
    assert abs(f[rows, perm].sum() - best) <= 1e-12 * np.abs(f).sum()
    np.testing.assert_allclose(fs, f[rows, perm], rtol=1e-13, atol=0)
    np.testing.assert_allclose(cs, c[rows, perm], rtol=1e-13, atol=0)
    return perm, perm_full


@pytest.mark.parametrize("spread", [0.02, 0.15, 0.5])
@pytest.mark.parametrize("start", ["none", "answer", "random"])
def test_bounded_assignment_is_the_full_grids(spread, start):
    """Random grids of small, typical and large correlations, started from nothing (the whole grid), from the
    answer (a later sweep's visit) and from an unrelated permutation."""
    for seed in range(3):
        terms, _ = _grid(96, spread, seed)
        s = {"none": None, "answer": _full(terms)[0],
             "random": np.random.default_rng(seed + 10).permutation(96)}[start]
        _check(terms, s)


@pytest.mark.parametrize("spread", [0.15, 0.5])
def test_rounds_from_an_unrelated_start_reach_the_full_grids_optimum(spread, monkeypatch):
    """Seeded with an unrelated start's pairs only, the bounded grid's optima are followed round by round: each
    ends where its optimum uses exact pairs only, which — the rest being lower bounds — is the full grid's."""
    monkeypatch.setattr(sa, "_seed", lambda low, gap, s: np.arange(s.size) * s.size + s)
    monkeypatch.setattr(sa, "MAX_ROUNDS", 10_000)
    for seed in range(4):
        terms, _ = _grid(64, spread, 20 + seed)
        _check(terms, np.random.default_rng(seed).permutation(64))


@pytest.mark.parametrize("noise", [0.05, 0.3])
def test_bounded_assignment_recovers_a_planted_permutation(noise):
    """B's units are A's, permuted and scaled, plus noise: the planted permutation is the answer, from any
    start."""
    terms, perm = _grid(128, noise, 3, planted=True)
    for start in (np.arange(128), np.random.default_rng(0).permutation(128)):
        found, _ = _check(terms, start)
        np.testing.assert_array_equal(found, perm)


def test_rounds_add_the_pairs_the_optimum_used_then_the_rest_of_the_grid(monkeypatch):
    """Seeded with the start's pairs alone, the rounds add the bounded pairs each optimum used until it uses exact
    pairs only — the full grid's assignment from a fraction of the grid; with no round allowed, every pair is
    computed and the answer is the same."""
    terms, _ = _grid(96, 0.15, 7)
    start = _full(terms)[0].copy()
    start[:8] = start[np.r_[1:8, 0]]  # eight rows off the answer
    computed, rounds = [], []
    solve, lap = sa._solve_pairs, sa.assignment_permutation
    monkeypatch.setattr(sa, "_seed", lambda low, gap, s: np.arange(s.size) * s.size + s)
    monkeypatch.setattr(sa, "MAX_ROUNDS", 100)

    def counting(flat, *rest):
        computed.append(int((~rest[-1].reshape(-1)[flat]).sum()))
        return solve(flat, *rest)
    monkeypatch.setattr(sa, "_solve_pairs", counting)
    monkeypatch.setattr(sa, "assignment_permutation", lambda *a, **k: rounds.append(1) or lap(*a, **k))
    _check(terms, start)
    assert len(rounds) > 1 and sum(computed) < 96 * 96 // 4
    computed.clear()
    monkeypatch.setattr(sa, "MAX_ROUNDS", 0)
    _check(terms, start)
    assert sum(computed) == 96 * 96


@pytest.mark.parametrize("case", ["var", "zero_norm", "small", "wide", "wide_seed", "strong", "one_role", "no_start"])
def test_grids_the_bound_does_not_cover_are_solved_whole(case, monkeypatch):
    """``var`` edges, a zero norm, a grid below BOUND_MIN or above BOUND_MAX, a seed wider than SEED_MAX, ``A + G``
    near 4, a role no edge plays and no start: the whole grid, the same answer as pair_grid's."""
    n = 32 if case == "small" else 64
    terms, _ = _grid(n, 0.2, 5)
    if case == "var":
        terms.update(zeta=np.random.default_rng(0).normal(size=(n, n)) * 0.1, eps=np.full((1, n), 0.3))
    elif case == "zero_norm":
        terms["beta"][0, 4] = 0.0
        terms["alpha"][:, 4] = 0.0
    elif case == "strong":
        b0, d0 = terms["beta"][0, 0], terms["delta"][0, 0]
        terms["alpha"][0, 0] = 4.0 * np.sqrt(b0 * d0) / (d0 / b0) ** 0.25  # A = 4 at pair (0, 0)
    elif case == "one_role":
        terms.update(gamma=0.0, delta=0.0)
    elif case == "wide":
        monkeypatch.setattr(sa, "BOUND_MAX", n - 1)
    elif case == "wide_seed":
        monkeypatch.setattr(sa, "SEED_MAX", 0.0)
    computed = []
    monkeypatch.setattr(sa, "_solve_pairs", lambda *a: computed.append(1))
    c, f = pair_grid(**terms)
    rows = np.arange(n)
    start = None if case == "no_start" else np.arange(n)
    perm, cs, fs = sa.scale_assignment(**terms, start=start)
    assert not computed  # no pair was solved alone: the whole grid was
    best = f[rows, assignment_permutation(f, maximize=False)].sum()
    assert abs(fs.sum() - best) <= 1e-12 * np.abs(f).sum()
    np.testing.assert_allclose(cs, c[rows, perm])
