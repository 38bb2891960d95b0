"""solvers.stability: a permutation visit skipped because its last margin outlasts the possible change of its
scores returns what the visit would — soundness drawn by hypothesis (every certified skip: the LAP on the
new scores gives the held permutation), the certificate engaging on small moves and refusing large ones,
and weight matching giving the same alignment with the certificate on and off."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import architectures
import solvers
import solvers.stability as stability
from solvers.local import Matcher, search_units
from solvers.reuse import VisitLog
from solvers.subproblems import score_matrices, solve_local
from symmetries import HeadStructured, Permutation, apply, random_transforms
from symmetries.elements import DenseElement


def _planted(noise=1e-3, seed=0):
    """Two tiny GPT-2s (gain-free RMSNorm: an orthogonal residual), B = a drawn transform of A plus noise."""
    arch = architectures.gpt2(40, 8, 16, 4, 2, 32, norm="rms", tie_embeddings=True)
    graph = arch.graph
    classes = {s.name: (HeadStructured(s.cls.num_heads, Permutation()) if s.head_group else s.cls)
               for s in graph.spaces()}
    gen = torch.Generator().manual_seed(seed)
    a = {k: v.double() for k, v in arch.module(seed=seed).state_dict().items()}
    truth = random_transforms(graph, seed, classes=classes)
    b = apply(graph, a, truth, check=False)
    b = {k: v + noise * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in b.items()}
    return graph, classes, a, b, truth


def _rotation(n, size, seed):
    """``exp(size · K)`` for a drawn skew-symmetric ``K`` with unit Frobenius norm: an orthogonal matrix
    ``size`` away from the identity (to first order)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n, generator=g, dtype=torch.float64)
    k = (x - x.T) / torch.linalg.matrix_norm(x - x.T)
    return torch.linalg.matrix_exp(size * k)


def _setup(seed=0):
    graph, classes, a, b, truth = _planted(seed=seed)
    problem = solvers.make_problem(graph, a, b, classes=classes)
    matcher, units = Matcher(problem), search_units(problem)
    log = VisitLog(problem, units)
    stable = stability.StableAssignments(problem, matcher, units, log.reads, [()] * len(units))
    u = next(i for i, spaces in enumerate(units) if spaces == ["blocks.0.mlp"])
    assert u in stable.eligible and "residual" in log.reads[u]
    inverse = truth.inverse()
    transforms = {s: inverse[s] for s in problem.spaces}  # the planted answer: large margins
    return problem, matcher, stable, u, transforms


def _lap(problem, matcher, transforms):
    loc = matcher.local("blocks.0.mlp", transforms, stream=True)
    m, _ = score_matrices(loc)
    return loc, m, solve_local(problem.classes["blocks.0.mlp"], loc)


@settings(max_examples=40, deadline=None)
@given(size=st.floats(1e-4, 3.0), seed=st.integers(0, 10_000), planted=st.booleans())
def test_the_bound_holds_and_a_certified_skip_is_the_visit_s_answer(size, seed, planted):
    """For a drawn move of the residual: the bound is at least the largest actual change of a score, and
    where the certificate holds the LAP on the new scores returns the held permutation."""
    problem, matcher, stable, u, transforms = _setup()
    if not planted:  # a drawn residual and MLP permutation: small or no margins
        transforms["residual"] = DenseElement(_rotation(16, 2.0, seed + 1))
        transforms["blocks.0.mlp"] = Permutation().identity(32)
    _, m, el = _lap(problem, matcher, transforms)
    transforms["blocks.0.mlp"] = el
    stable.note(u, "blocks.0.mlp", m, transforms)
    moved = dict(transforms)
    s = transforms["residual"]
    moved["residual"] = DenseElement(_rotation(s.shape[0], size, seed) @ s.matrix)
    _, m_now, now = _lap(problem, matcher, moved)
    bound = stable.change_bound(u, moved)
    assert bound is not None and float((m_now - m).abs().max()) <= bound
    if stable.holds(u, moved):
        assert torch.equal(now.index, el.index)


def test_small_moves_are_certified_and_large_ones_are_not():
    problem, matcher, stable, u, transforms = _setup()
    _, m, el = _lap(problem, matcher, transforms)
    transforms["blocks.0.mlp"] = el
    stable.note(u, "blocks.0.mlp", m, transforms)
    assert not stable.holds(u, transforms)  # nothing moved: the visit log's business, not a certificate
    s = transforms["residual"]
    small = {**transforms, "residual": DenseElement(_rotation(s.shape[0], 1e-4, 1) @ s.matrix)}
    large = {**transforms, "residual": DenseElement(_rotation(s.shape[0], 3.0, 1) @ s.matrix)}
    assert stable.holds(u, small)
    assert not stable.holds(u, large)


def test_weight_matching_is_the_same_with_the_certificate_on_and_off(monkeypatch):
    graph, classes, a, b, truth = _planted()
    on = solvers.solve("weight_matching", graph, a, b, classes=classes, seed=0)
    assert "certified" in on.message
    monkeypatch.setattr(stability.StableAssignments, "holds", lambda self, u, t: False)
    off = solvers.solve("weight_matching", graph, a, b, classes=classes, seed=0)
    assert "certified" not in off.message
    assert on.history == pytest.approx(off.history, rel=1e-12)
    for s in off.transforms:
        assert torch.equal(on.transforms[s].as_matrix(), off.transforms[s].as_matrix()), s
