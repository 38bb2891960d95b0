"""Reuse between weight-matching sweeps (solvers.reuse): skipping visits whose inputs did not change,
caching J per tensor and reading tensors' terms of J from a visit's rows give the plain loop's transforms,
sweeps and objective; the cached J equals Problem.objective after any change; a space's fixed leading
edges are summed once; Problem.objective is accurate in float32."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import architectures
import solvers
import solvers.algorithms.weight_matching as wm
from architectures import WeightGraph
from solvers.local import Matcher
from solvers.reuse import TensorObjective
from symmetries import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling, SignedPermutation,
                        TransformSet, apply, random_transforms)
from symmetries.roles import Role


def _double(params):
    return {k: v.detach().double() for k, v in params.items()}


def _pair(case: str, seed: int):
    """``(graph, A, B, classes, options)`` of a problem of each kind the skip rule distinguishes."""
    if case == "gpt2":  # heads (one unit per attention), an orthogonal residual, permuted MLP units
        arch = architectures.gpt2(40, 8, 16, 4, 2, 32, norm="rms", tie_embeddings=True)
        g = arch.graph
        classes = {s.name: (HeadStructured(s.cls.num_heads, Permutation()) if s.head_group else s.cls)
                   for s in g.spaces()}
        a = _double(arch.module(seed=seed).state_dict())
        b = apply(g, a, random_transforms(g, seed, classes=classes), check=False)
        gen = torch.Generator().manual_seed(seed)
        b = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in b.items()}
        return g, a, b, classes, {}
    if case == "rnn":  # W_hh meets the hidden space on both axes: a coupled unit, judged by the exact J
        g = WeightGraph("rnn")
        g.add_space("h", 10, Permutation(), activation="tanh")
        g.add_parameter("w_ih", (10, 4)).connect("w_ih", "h", axis=0, role="out")
        g.add_parameter("w_hh", (10, 10)).connect("w_hh", "h", axis=0, role="out").connect("w_hh", "h", axis=1,
                                                                                          role="in")
        g.add_parameter("w_out", (3, 10)).connect("w_out", "h", axis=1, role="in")
        g.validate()
        gen = torch.Generator().manual_seed(seed)
        a, b = ({p.name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in g.parameters()}
                for _ in range(2))
        return g, a, b, Permutation(), {}
    cls, options = {"permutation": (Permutation(), {}), "rebasin": (Permutation(), {"mode": "rebasin"}),
                    "signed": (SignedPermutation(), {}), "orthogonal": (Orthogonal(), {}),
                    "invertible": (Invertible(), {"max_iter": 3}),  # reads its current element
                    "scaling": (PermutationScaling(), {"max_iter": 8})}[case]
    act = {"permutation": "relu", "rebasin": "relu", "signed": "tanh", "scaling": "relu"}.get(case, "identity")
    arch = architectures.mlp([12, 10, 9, 8, 4], activation=act)
    a, b = (_double(arch.module(seed=seed + k).state_dict()) for k in (0, 1))  # unrelated: several sweeps
    return arch.graph, a, b, cls, options


def _run(reuse: bool, g, a, b, classes, options, seed):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wm, "_REUSE", reuse)
        return solvers.solve("weight_matching", g, a, b, classes=classes, seed=seed, **options)


@pytest.mark.parametrize("case", ["permutation", "rebasin", "signed", "orthogonal", "invertible", "scaling", "rnn",
                                  "gpt2"])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_reuse_gives_the_plain_loops_transforms_sweeps_and_objective(case, seed):
    g, a, b, classes, options = _pair(case, seed)
    plain = _run(False, g, a, b, classes, options, seed)
    fast = _run(True, g, a, b, classes, options, seed)
    assert (fast.iterations, fast.status) == (plain.iterations, plain.status), (fast.message, plain.message)
    assert set(fast.transforms) == set(plain.transforms)
    for space in plain.transforms:
        assert torch.equal(fast.transforms[space].as_matrix(), plain.transforms[space].as_matrix()), space
    assert fast.history == pytest.approx(plain.history, rel=1e-12, abs=1e-300)
    assert "skipped" not in plain.message


@pytest.mark.parametrize("case", ["permutation", "rebasin", "gpt2"])
def test_the_confirming_sweep_skips_visits(case):
    """The last sweep changes nothing: a unit whose inputs did not move since its last visit is not solved again."""
    g, a, b, classes, options = _pair(case, 3)
    sol = solvers.solve("weight_matching", g, a, b, classes=classes, seed=3, **options)
    assert sol.status == "converged" and "visit(s) skipped" in sol.message, sol.message


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), steps=st.lists(st.integers(0, 2**16), min_size=1, max_size=4))
def test_cached_objective_equals_the_problems_after_every_change(seed, steps):
    arch = architectures.gpt2(30, 8, 16, 4, 2, 24, norm="rms", tie_embeddings=True)
    g = arch.graph
    a, b = (_double(arch.module(seed=seed + k).state_dict()) for k in (0, 1))
    problem = solvers.make_problem(g, a, b)
    identities = {s: problem.classes[s].identity(problem.sizes[s][1]) for s in problem.spaces}
    cached = TensorObjective(problem, identities)
    current = dict(identities)
    assert cached(current) == pytest.approx(problem.objective(TransformSet(current)), rel=1e-13)
    for step in steps:  # replace some spaces' elements (new objects), keep the others
        drawn = random_transforms(g, step, classes=problem.classes)
        rng = np.random.default_rng(step)
        for space in problem.spaces:
            if rng.random() < 0.5:
                current[space] = drawn[space]
        assert cached(current) == pytest.approx(problem.objective(TransformSet(current)), rel=1e-13)


def test_objective_of_a_float32_problem_is_summed_in_float64():
    """A float32 sum of squares over 4 M entries is off by ~1e-4; J must not be."""
    arch = architectures.mlp([2048, 2048, 2])
    a, b = (arch.module(seed=k).state_dict() for k in (0, 1))
    want = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
    problem = solvers.make_problem(arch.graph, a, b)
    assert problem.dtype == torch.float32
    assert problem.objective(None) == pytest.approx(want, rel=1e-7)
    assert problem.objective(TransformSet({"hidden.0": Permutation().identity(2048)})) == pytest.approx(want, rel=1e-7)


def test_a_spaces_fixed_edges_are_summed_once_and_give_the_same_scores():
    """The residual's embedding rows (and an MLP's first layer) meet no other searched axis: a streamed Local
    starts from their cached sums — bitwise the scores (and B's row norms) a fresh Matcher computes."""
    arch = architectures.gpt2(60, 8, 16, 4, 2, 24, norm="rms", tie_embeddings=True)
    a, b = (_double(arch.module(seed=k).state_dict()) for k in (0, 1))
    problem = solvers.make_problem(arch.graph, a, b)
    matcher = Matcher(problem)
    assert len(matcher.fixed["residual"]) >= 1 and matcher.fixed["blocks.0.mlp"] == ()
    for step in range(3):
        transforms = dict(random_transforms(arch.graph, step, classes=problem.classes))
        loc = matcher.local("residual", transforms, stream=True, norms=True)
        fresh = Matcher(problem).local("residual", transforms, stream=True, norms=True)
        rows = Matcher(problem).local("residual", transforms)  # the tensors themselves, nothing cached
        for role in (Role.OUT, Role.IN):
            assert torch.allclose(loc.row_norms(role, "b"), rows.row_norms(role, "b"), rtol=1e-12, atol=0)
            assert torch.equal(loc.row_norms(role, "b"), fresh.row_norms(role, "b"))
        got = loc.cross(Role.OUT, Role.IN)
        assert torch.equal(got, fresh.cross(Role.OUT, Role.IN))
        assert torch.allclose(got, rows.cross(Role.OUT, Role.IN), rtol=1e-12, atol=1e-12)
    assert "residual" in matcher._fixed_acc


def test_fixed_edges_after_searched_ones_are_cached_too():
    """An MLP's last hidden layer is read by the classifier, whose other axis (the classes) is not searched:
    with enough classes that edge's product is kept — and a streamed Local refuses A's row norms it never
    summed."""
    arch = architectures.mlp([12, 16, 16, 40])
    a, b = (_double(arch.module(seed=k).state_dict()) for k in (0, 1))
    problem = solvers.make_problem(arch.graph, a, b)
    matcher = Matcher(problem)
    last = list(problem.spaces)[-1]
    in_edges = [i for i, (ea, _) in enumerate(matcher.edges[last]) if ea.role is Role.IN]
    assert in_edges and set(in_edges) <= set(matcher.fixed[last])
    transforms = dict(random_transforms(arch.graph, 0, classes=problem.classes))
    loc = matcher.local(last, transforms, stream=True, norms=True)
    with pytest.raises(ValueError, match="row norms"):
        loc.row_norms(Role.OUT, "a")


def test_a_narrower_fixed_edge_is_cached_only_where_it_pays():
    """A 100-class head read by a 128-wide last layer: fewer columns than the width, but enough, and the sum
    is small — kept; a 10-class head — not (an m × n sum per visit would cost what it saves)."""
    for classes, kept in ((100, True), (10, False)):
        arch = architectures.mlp([6, 128, classes])
        a, b = (_double(arch.module(seed=k).state_dict()) for k in (0, 1))
        problem = solvers.make_problem(arch.graph, a, b)
        matcher = Matcher(problem)
        (space,) = problem.spaces
        head = [i for i, (ea, _) in enumerate(matcher.edges[space]) if ea.role is Role.IN]
        assert bool(head) and (set(head) <= set(matcher.fixed[space])) == kept, classes


@pytest.mark.parametrize("classes, widths", [("permutation", [30, 48, 48, 48, 48, 48, 8]),
                                             ("permutation_scaling", [20, 24, 24, 24, 6])])
def test_unrecorded_history_gives_the_same_solve(classes, widths):
    """``record=False`` (the staged start's inner solve, whose per-sweep J nobody reads): the same transforms,
    sweeps and final J as the recorded solve; the history keeps the start, the first pass and the end only."""
    arch = architectures.mlp(widths)
    a = _double(arch.module(seed=0).state_dict())
    b = _double(arch.module(seed=1).state_dict())
    problem = solvers.make_problem(arch.graph, a, b, classes=classes)
    quiet = wm.WeightMatching().solve(problem, record=False)
    loud = wm.WeightMatching().solve(problem)
    assert quiet.iterations == loud.iterations > 1 and len(loud.history) == loud.iterations + 2
    assert quiet.objective_after == pytest.approx(loud.objective_after, rel=1e-12)
    assert quiet.history == pytest.approx([loud.history[0], loud.history[1], loud.history[-1]], rel=1e-12)
    for s in problem.spaces:
        assert torch.equal(quiet.transforms[s].index, loud.transforms[s].index)
        assert torch.equal(quiet.transforms[s].scales()[0], loud.transforms[s].scales()[0])
