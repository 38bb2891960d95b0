"""Semi-permutation fractions by one convex QP: optimal for the assignment, exact, never worse."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import solvers
from solvers.errors import SolverInputError
from solvers.problem import make_problem
from solvers.algorithms.relaxation.qp import fit_fractions
from symmetries.action import apply
from symmetries.classes import Permutation, SemiPermutation
from symmetries.elements import GatherElement
from symmetries.transforms import TransformSet


def _setup(seed):
    wide, narrow = architectures.mlp([5, 7, 6, 3]), architectures.mlp([5, 4, 4, 3])
    a = wide.module(seed=seed, dtype=torch.float64).state_dict()
    b = narrow.module(seed=seed + 9, dtype=torch.float64).state_dict()
    problem = make_problem(wide.graph, a, b, graph_b=narrow.graph)
    return wide, narrow, a, b, problem


def _random_fractions(el: GatherElement, g: np.random.Generator) -> GatherElement:
    idx = el.index.numpy()
    w = g.uniform(0.05, 1.0, idx.size)
    frac = w / np.bincount(idx, weights=w, minlength=el.n)[idx]
    return GatherElement.split(el.index, frac, el.n)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_qp_fractions_are_optimal_for_the_assignment(seed):
    wide, narrow, a, b, problem = _setup(seed)
    sp_sol = solvers.solve("semi_permutation", wide.graph, a, b, graph_b=narrow.graph)
    g = np.random.default_rng(seed)
    start = TransformSet({s: _random_fractions(el, g) for s, el in sp_sol.transforms.items()})
    fitted, value = fit_fractions(problem, start)
    j = problem.objective(fitted)
    assert j == pytest.approx(value, rel=1e-7)
    assert j <= problem.objective(start) + 1e-12
    for _ in range(30):  # no feasible fraction vector with the same assignment does better
        other = TransformSet({s: _random_fractions(el, g) for s, el in start.items()})
        assert j <= problem.objective(other) + 1e-9
    for s, el in fitted.items():
        assert SemiPermutation().contains(el) and torch.equal(el.index, start[s].index)
    # exact: the widened B computes B's function
    mb, mw = narrow.module(dtype=torch.float64), wide.module(dtype=torch.float64)
    mb.load_state_dict(b)
    mw.load_state_dict(apply(narrow.graph, b, fitted))
    x = torch.randn(16, 5, dtype=torch.float64)
    assert torch.allclose(mb(x), mw(x), rtol=1e-10, atol=1e-12)


def test_registered_solver_never_worse_than_its_assignment():
    wide, narrow, a, b, problem = _setup(3)
    sol = solvers.solve("semi_permutation_qp", wide.graph, a, b, graph_b=narrow.graph)
    assert sol.objective_after <= sol.extra["assignment_objective"] + 1e-12
    assert sol.objective_after == pytest.approx(problem.objective(sol.transforms), rel=1e-12)


def test_requires_split_elements():
    wide, narrow, a, b, problem = _setup(0)
    from symmetries.elements import DenseElement
    bad = TransformSet({"hidden.0": DenseElement(torch.eye(7, 4, dtype=torch.float64)),
                        "hidden.1": SemiPermutation().random(4, m=6, seed=0)})
    with pytest.raises(SolverInputError, match="hidden.0"):
        fit_fractions(problem, bad)
    arch = architectures.mlp([3, 4, 2])
    p = arch.module(seed=0).state_dict()
    same, value = fit_fractions(make_problem(arch.graph, p, p, classes=Permutation()),
                                TransformSet({"hidden.0": GatherElement.identity(4)}))
    assert value == pytest.approx(0.0)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_fraction_bound_certifies_the_fractions_for_the_assignment(seed):
    from solvers.algorithms.relaxation.qp import fraction_bound
    wide, narrow, a, b, problem = _setup(seed)
    sp_sol = solvers.solve("semi_permutation", wide.graph, a, b, graph_b=narrow.graph)
    g = np.random.default_rng(seed)
    start = TransformSet({s: _random_fractions(el, g) for s, el in sp_sol.transforms.items()})
    fitted, value = fit_fractions(problem, start)
    j = problem.objective(fitted)
    at_start, at_fit = fraction_bound(problem, start), fraction_bound(problem, fitted)
    assert at_start <= j + 1e-9 and at_fit <= j + 1e-9  # valid at any feasible point
    assert j - at_fit <= 1e-6 * j  # tight at the QP's optimum
    for _ in range(20):  # below every fraction vector with this assignment
        other = TransformSet({s: _random_fractions(el, g) for s, el in start.items()})
        assert at_start <= problem.objective(other) + 1e-9
    sol = solvers.solve("semi_permutation_qp", wide.graph, a, b, graph_b=narrow.graph, init=start)
    assert sol.lower_bound is None  # no bound over other assignments
    assert sol.extra["fraction_gap"] == pytest.approx(sol.objective_after - sol.extra["fraction_bound"])
    assert 0 <= sol.extra["fraction_gap"] <= 1e-6 * sol.objective_after
