"""Membership tests, linear-maximisation oracles (checked by brute force) and the lattice."""
from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import symmetries as sy
from symmetries import lattice
from symmetries.assignment import backends, solve_assignment
from symmetries.errors import ElementShapeError, NoOracleError
from symmetries.testing.strategies import GROUPS, elements, seeds


def _score(seed, m, n):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((m, n)))


def _value(el, score):
    return float((el.as_matrix() * score).sum())


@settings(max_examples=60)
@given(st.integers(1, 5), seeds)
def test_permutation_oracle_is_optimal(n, seed):
    score = _score(seed, n, n)
    best = max(sum(float(score[j, p[j]]) for j in range(n)) for p in itertools.permutations(range(n)))
    el = sy.Permutation().project(score)
    assert sy.Permutation().contains(el)
    assert _value(el, score) == pytest.approx(best, abs=1e-12)


@settings(max_examples=40)
@given(st.integers(1, 4), seeds)
def test_signed_permutation_oracle_is_optimal(n, seed):
    score = _score(seed, n, n)
    best = max(sum(abs(float(score[j, p[j]])) for j in range(n)) for p in itertools.permutations(range(n)))
    el = sy.SignedPermutation().project(score)
    assert sy.SignedPermutation().contains(el)
    assert _value(el, score) == pytest.approx(best, abs=1e-12)
    flip = sy.SignFlip().project(score)
    assert _value(flip, score) == pytest.approx(float(torch.diagonal(score).abs().sum()), abs=1e-12)


@settings(max_examples=60)
@given(st.integers(1, 6), st.integers(0, 3), seeds)
def test_orthogonal_oracle_beats_every_sample(n, extra, seed):
    """The polar factor attains the nuclear norm, the maximum of ⟨O, M⟩ over orthonormal columns."""
    m = n + extra
    score = _score(seed, m, n)
    el = sy.Orthogonal().project(score)
    assert sy.Orthogonal().contains(el)
    nuclear = float(torch.linalg.svdvals(score).sum())
    assert _value(el, score) == pytest.approx(nuclear, rel=1e-10)
    for s in range(5):
        assert _value(sy.Orthogonal().random(n, m=m, seed=s), score) <= nuclear + 1e-9


@settings(max_examples=40)
@given(st.integers(1, 4), st.integers(0, 2), seeds)
def test_semi_permutation_oracle_is_optimal(n, extra, seed):
    """Over semi-permutations ⟨P̃, M⟩ is a convex combination per column, so the optimum matches each
    narrow unit to a distinct wide unit: a rectangular assignment (checked by enumeration)."""
    m = n + extra
    score = _score(seed, m, n)
    best = max(sum(float(score[rows[i], i]) for i in range(n)) for rows in itertools.permutations(range(m), n))
    el = sy.SemiPermutation().project(score)
    assert sy.SemiPermutation().contains(el)
    assert _value(el, score) == pytest.approx(best, abs=1e-12)


@settings(max_examples=30)
@given(st.integers(1, 3), st.integers(1, 3), seeds)
def test_head_oracle_is_optimal_for_permutation_heads(heads, d, seed):
    cls = sy.HeadStructured(heads, sy.Permutation())
    n = heads * d
    score = _score(seed, n, n)
    el = cls.project(score)
    assert cls.contains(el)
    best = -np.inf
    for hp in itertools.permutations(range(heads)):
        total = 0.0
        for h, src in enumerate(hp):
            block = score[h * d:(h + 1) * d, src * d:(src + 1) * d]
            total += max(sum(float(block[j, p[j]]) for j in range(d)) for p in itertools.permutations(range(d)))
        best = max(best, total)
    assert _value(el, score) == pytest.approx(best, abs=1e-12)


def test_unbounded_classes_have_no_oracle():
    for cls in (sy.PositiveScaling(), sy.PermutationScaling(), sy.Invertible(),
                sy.HeadStructured(2, sy.Invertible())):
        assert not cls.has_oracle
        with pytest.raises(NoOracleError, match="unbounded"):
            cls.project(torch.eye(4))


@pytest.mark.parametrize("backend", list(backends()))
def test_assignment_backends_agree(backend):
    score = _score(0, 40, 40)
    rows, cols = solve_assignment(score, backend=backend)
    ref_rows, ref_cols = solve_assignment(score, backend="scipy")
    assert float(score[rows, cols].sum()) == pytest.approx(float(score[ref_rows, ref_cols].sum()), abs=1e-9)


def test_assignment_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown or uninstalled assignment backend"):
        solve_assignment(np.eye(3), backend="hungarian9000")
    with pytest.raises(ValueError, match="NaN"):
        solve_assignment(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    for bad in (np.inf, -np.inf):  # also in float32, and beside entries whose sum overflows
        with pytest.raises(ValueError, match="infinite"):
            solve_assignment(np.array([[bad, 1.0], [0.0, 1.0]], dtype=np.float32))
        with pytest.raises(ValueError, match="infinite"):
            solve_assignment(np.array([[1e308, 1e308], [bad, 1.0]]))
    rows, cols = solve_assignment(np.array([[1e308, 1e308], [1e308, 0.0]]))  # finite entries, an infinite sum
    assert cols.tolist() == [1, 0]


def test_membership_rejects_non_members():
    perm = sy.GatherElement([1, 0, 3, 2]).as_matrix()
    assert sy.Permutation().contains(perm)
    assert not sy.Permutation().contains(2 * perm)
    assert not sy.Permutation().contains(torch.ones(4, 4) / 4)  # doubly stochastic, not a permutation
    assert not sy.SignFlip().contains(perm) and not sy.Trivial().contains(perm)
    assert sy.SignFlip().contains(torch.diag(torch.tensor([1.0, -1.0]))) and sy.Trivial().contains(torch.eye(2))
    assert sy.SignedPermutation().contains(-perm) and not sy.Permutation().contains(-perm)
    assert not sy.PositiveScaling().contains(-torch.eye(3))
    assert sy.PermutationScaling().contains(3 * perm) and not sy.PermutationScaling().contains(-3 * perm)
    assert not sy.Orthogonal().contains(2 * torch.eye(3))
    assert not sy.Orthogonal().contains(torch.zeros(2, 3))  # m < n
    assert not sy.Invertible().contains(torch.zeros(3, 3))
    split = sy.GatherElement.split([0, 2, 0, 1], [0.25, 1.0, 0.75, 1.0], 3).as_matrix()
    assert sy.SemiPermutation().contains(split) and not sy.SemiPermutation().contains(split.T)
    assert not sy.SemiPermutation().contains((split > 0).double())  # column 0 sums to 2
    two_in_a_row = split.clone()
    two_in_a_row[1, 0] = 0.5
    two_in_a_row[0, 0] = 0.0
    two_in_a_row[2, 0] = 0.5
    two_in_a_row[1, 2] = 1.0
    assert not sy.SemiPermutation().contains(two_in_a_row)  # row 1 splits into two columns
    heads = sy.HeadStructured(2, sy.Orthogonal())
    assert heads.contains(heads.random(6, seed=0))
    assert not heads.contains(sy.Orthogonal().random(6, seed=0))


def test_random_is_reproducible_and_rectangular_rules():
    for cls in GROUPS + (sy.SemiPermutation(),):
        assert cls.random(5, seed=3).allclose(cls.random(5, seed=3))
    assert sy.SemiPermutation().random(3, m=7, seed=0).shape == (7, 3)
    assert sy.Orthogonal().random(3, m=5, seed=0).shape == (5, 3)
    with pytest.raises(ElementShapeError, match="maps a space to itself"):
        sy.Permutation().random(3, m=4)
    with pytest.raises(ElementShapeError, match="m=2 < n=3"):
        sy.SemiPermutation().random(3, m=2)
    with pytest.raises(ElementShapeError, match="not a multiple"):
        sy.HeadStructured(4, sy.Permutation()).random(6)
    with pytest.raises(TypeError):
        sy.HeadStructured(2, sy.HeadStructured(2, sy.Permutation()))


def test_invertible_conditioning_is_bounded():
    el = sy.Invertible().random(8, seed=0, cond=5.0)
    s = torch.linalg.svdvals(el.as_matrix())
    assert float(s[0] / s[-1]) <= 5.0 + 1e-9
    torch.testing.assert_close(el.in_matrix() @ el.as_matrix(), torch.eye(8, dtype=torch.float64))


def test_semi_permutation_inverse_is_the_merge_map():
    """``Bᵀ P̃ = I``: merging after splitting is the identity; splitting after merging is not."""
    split = sy.SemiPermutation().random(3, m=6, seed=4)
    merge = split.inverse()
    assert merge.shape == (3, 6)
    assert (merge @ split).is_identity()
    assert not (split @ merge).is_identity()
    b = (split.as_matrix() > 0).double()
    torch.testing.assert_close(merge.as_matrix(), b.T)
    torch.testing.assert_close(split.in_matrix(), b.T)


def test_lattice_orders_the_classes():
    P, S, SP, O, A = sy.Permutation(), sy.SignFlip(), sy.SignedPermutation(), sy.Orthogonal(), sy.Invertible()
    D, DP, SEMI = sy.PositiveScaling(), sy.PermutationScaling(), sy.SemiPermutation()
    assert P <= SP <= O <= A and D <= DP <= A and S <= SP and P <= SEMI <= A
    assert not (D <= O) and not (O <= DP) and not (SEMI <= O) and not (A <= O)
    assert P < O and not (O < O)
    assert lattice.is_subclass(sy.HeadStructured(3, O), A)
    assert lattice.is_subclass(sy.HeadStructured(3, P), sy.HeadStructured(3, O))
    assert not lattice.is_subclass(sy.HeadStructured(3, O), sy.HeadStructured(2, O))
    assert not lattice.is_subclass(sy.HeadStructured(3, P), S)
    assert lattice.is_subclass(S, sy.HeadStructured(3, O))
    assert lattice.meet([DP, SP]) == P
    assert lattice.meet([O, DP]) == P
    assert [type(c) for c in lattice.superclasses(D)] == [sy.PositiveScaling, sy.PermutationScaling, sy.Invertible]
    assert sy.Trivial() in lattice.subclasses(P)
    assert nx.is_directed_acyclic_graph(lattice.graph())
    assert P * D == DP and S * P == SP and P * O == O
    with pytest.raises(TypeError, match="not a class the library names"):
        D * O


def test_element_apply_follows_the_design_rules():
    """DESIGN §3: out ``W'[..j..] = Σ_i T[j,i] W[..i..]``; in ``W'[..j..] = Σ_i W[..i..] T⁻¹[i,j]``."""
    a = sy.Invertible().random(3, seed=0)
    t = a.as_matrix()
    w = torch.randn(2, 3, 4, dtype=torch.float64)
    out = a.apply(w, 1, "out")
    torch.testing.assert_close(out, torch.einsum("ji,aib->ajb", t, w))
    inn = a.apply(w, 1, "in")
    torch.testing.assert_close(inn, torch.einsum("aib,ij->ajb", w, torch.linalg.inv(t)))
    # permutations are index vectors: out and in coincide
    p = sy.Permutation().random(3, seed=1)
    assert torch.equal(p.apply(w, 1, "out"), p.apply(w, 1, "in"))
    assert torch.equal(p.apply(w, 1, "out"), w[:, p.index, :])
