"""Solvers on graphs with repeated edges (planted problems: B = T·A + noise, T known): the flatten model in
both layouts and grouped-query attention with and without rotary embeddings. Every solver reads the
copies of a repeated axis as more columns of the space's rows (weights) or more samples (activations);
where a solver refuses, it refuses the class, not the repeat."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import solvers
import symmetries as sy
from repeat_models import FlattenNet, GQAttention, flatten_graph, gqa_graph, output, state
from solvers.local import Matcher
from solvers.scale_descent import ScaleViews
from solvers.subproblems import _scale_terms
from solvers import UnsupportedClassError

X_IMG = torch.randn(64, 2, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
X_SEQ = torch.randn(16, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _planted(graph, a, classes, seed, noise=1e-7):
    t = sy.random_transforms(graph, seed=seed, classes=classes)
    b = sy.apply(graph, a, t)
    g = torch.Generator().manual_seed(seed)
    return t, {k: v + noise * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in b.items()}


def _recovered(sol, t, atol=1e-4) -> bool:
    truth = t.inverse()
    return all(sol.transforms[s].allclose(truth[s], atol=atol) for s in t)


# -- the flatten model -------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**20))
def test_flatten_planted_every_solver(channels_last, seed):
    g = flatten_graph(channels_last=channels_last)
    torch.manual_seed(seed)
    ma = FlattenNet(channels_last=channels_last).double()
    a = state(ma)
    t, b = _planted(g, a, "permutation", seed)
    mb = FlattenNet(channels_last=channels_last).double()
    mb.load_state_dict(b)
    runs = {"weight_matching": {}, "relaxation": {}, "optimal_transport": {},
            "activation_matching": dict(data=X_IMG, models=(ma, mb)),
            "posterior_matching": dict(stds=({k: 0.01 + 0 * v for k, v in a.items()},
                                             {k: 0.01 + 0 * v for k, v in b.items()}))}
    y = output(mb, b, X_IMG)
    for name, options in runs.items():
        sol = solvers.solve(name, g, a, b, classes="permutation", seed=0, **options)
        assert sol.objective_after < 1e-8 * sol.objective_before, name
        assert float((output(mb, sy.apply(g, b, sol.transforms), X_IMG) - y).abs().max()) < 1e-12, name
        if name != "activation_matching":  # a channel dead on the data is matched to any dead channel
            assert _recovered(sol, t), name
    t, b = _planted(g, a, "permutation_scaling", seed)           # the scale polish reads the repeat (ScaleViews)
    sol = solvers.solve("weight_matching", g, a, b, classes="permutation_scaling", seed=0)
    assert _recovered(sol, t, atol=1e-4) and sol.objective_after < 1e-8 * sol.objective_before


def test_scale_views_read_the_copies_as_the_per_space_view_does():
    """ScaleViews (copies as one more free axis) gives the per-space scale terms of Matcher/Local exactly."""
    for channels_last in (False, True):
        g = flatten_graph(channels_last=channels_last)
        a = state(FlattenNet(channels_last=channels_last).double())
        t, b = _planted(g, a, "permutation_scaling", 3, noise=0.1)
        problem = solvers.make_problem(g, a, b, classes="permutation_scaling")
        current = sy.random_transforms(g, seed=9, classes="permutation_scaling")
        views = ScaleViews.build(problem, ["channels", "hidden"], dict(current))
        assert views is not None
        scales = {s: current[s].scales()[0].numpy() for s in current}
        for space in ("channels", "hidden"):
            others = {s: current[s] for s in current if s != space}
            local = Matcher(problem).local(space, others)
            want = _scale_terms(local, diagonal=True, index=current[space].index)
            got = views.terms(space, scales)
            for k in want:
                ref = torch.as_tensor(want[k], dtype=torch.float64).numpy()
                np.testing.assert_allclose(got[k], np.broadcast_to(ref, got[k].shape), rtol=1e-10, atol=1e-10,
                                           err_msg=k)


@pytest.mark.parametrize("channels_last", [False, True])
def test_flatten_semi_permutation_and_learned_matching(channels_last):
    """A narrow model (3 channels) widened by a planted split into 5 channels: semi_permutation finds a
    split that keeps its function (A's repeat (S, 1) / (S, C) is the widened layout of B's); learned
    matching returns a symmetry (B's function kept)."""
    gb, ga = flatten_graph(channels_last=channels_last), flatten_graph(c=5, channels_last=channels_last)
    mb = FlattenNet(channels_last=channels_last).double()
    b = state(mb)
    a = sy.apply(gb, b, {"channels": sy.SemiPermutation().random(3, m=5, seed=1)}, check=False)
    ma = FlattenNet(c=5, channels_last=channels_last).double()
    assert float((output(ma, a, X_IMG) - output(mb, b, X_IMG)).abs().max()) < 1e-12
    sol = solvers.solve("semi_permutation", ga, a, b, graph_b=gb, seed=0)
    assert sol.objective_after < 1e-20
    assert float((output(ma, sol.apply(b), X_IMG) - output(mb, b, X_IMG)).abs().max()) < 1e-12
    wrong = flatten_graph(c=5, channels_last=not channels_last)
    with pytest.raises(solvers.SolverInputError, match="repeat"):
        solvers.make_problem(wrong, a, b, graph_b=gb)
    t, b2 = _planted(gb, b, "permutation", 2, noise=0.0)
    mb2 = FlattenNet(channels_last=channels_last).double()
    y = output(mb2, b2, X_IMG)
    sol = solvers.solve("learned_matching", gb, b, b2, classes="permutation", data=(X_IMG, y), models=(mb, mb2),
                        steps=5, seed=0, loss_fn=lambda out, target: ((out - target) ** 2).mean())
    assert float((output(mb2, sy.apply(gb, b2, sol.transforms), X_IMG) - y).abs().max()) < 1e-12


# -- grouped-query attention ---------------------------------------------------------------------------------
CLASSES = {
    "orthogonal": (False, {"qk": sy.HeadStructured(2, sy.Orthogonal()), "vo": sy.HeadStructured(2, sy.Orthogonal())}),
    "permutation": (False, {"qk": sy.HeadStructured(2, sy.Permutation()), "vo": sy.HeadStructured(2, sy.Permutation())}),
    "invertible": (False, {"qk": sy.HeadStructured(2, sy.Invertible()), "vo": sy.HeadStructured(2, sy.Invertible())}),
    "rotary": (True, {"qk": sy.HeadStructured(2, sy.Rotary()), "vo": sy.HeadStructured(2, sy.Permutation())}),
}
#: Which solvers search which of these: the others refuse the class (its maths), never the repeat.
SOLVERS = {"weight_matching": {"orthogonal", "permutation", "invertible", "rotary"},
           "relaxation": {"orthogonal", "permutation"}, "activation_matching": {"orthogonal", "permutation"}}


@pytest.mark.parametrize("case", sorted(CLASSES))
def test_gqa_planted_every_solver(case):
    rope, classes = CLASSES[case]
    g = gqa_graph(rope=rope)
    torch.manual_seed(1)
    ma = GQAttention(rope=rope).double()
    a = state(ma)
    t, b = _planted(g, a, classes, 3, noise=0.0)
    mb = GQAttention(rope=rope).double()
    mb.load_state_dict(b)
    y = output(mb, b, X_SEQ)
    for name, cases in SOLVERS.items():
        options = dict(data=X_SEQ, models=(ma, mb), statistic="cross") if name == "activation_matching" else {}
        if case not in cases:
            with pytest.raises(UnsupportedClassError):
                solvers.solve(name, g, a, b, classes=classes, seed=0, **options)
            continue
        sol = solvers.solve(name, g, a, b, classes=classes, seed=0, **options)
        assert _recovered(sol, t, atol=1e-6), name
        assert float((output(mb, sy.apply(g, b, sol.transforms), X_SEQ) - y).abs().max()) < 1e-12, name
    with pytest.raises(UnsupportedClassError):           # heads: one permutation ties qk and vo
        solvers.solve("optimal_transport", g, a, b, classes=classes)


def test_gqa_streamed_in_row_blocks_equals_in_memory(monkeypatch):
    """lazy=True with blocks of 16 entries: o_proj (8 × 16, the repeated axis 1) is read a block of rows at
    a time; the result equals the in-memory solve."""
    monkeypatch.setattr("solvers.stream.CHUNK", 16)
    g = gqa_graph(bias=False)
    a = state(GQAttention(bias=False).double())
    classes = CLASSES["orthogonal"][1]
    t, b = _planted(g, a, classes, 4, noise=1e-3)
    mem = solvers.solve("weight_matching", g, a, b, classes=classes, seed=0)
    lazy = solvers.solve("weight_matching", g, a, b, classes=classes, seed=0, lazy=True)
    assert all(mem.transforms[s].allclose(lazy.transforms[s], atol=1e-9) for s in mem.transforms)
    assert lazy.objective_after == pytest.approx(mem.objective_after, rel=1e-9)


def test_gqa_checkpoints_streamed_and_written_in_row_blocks(tmp_path, monkeypatch):
    """symmetries.checkpoints.align_checkpoints on safetensors files: o_proj (its repeated axis 1) goes
    through the scores, J and the writer a row at a time; the written tensors are apply(B, T)."""
    from safetensors.torch import load_file, save_file

    from symmetries.checkpoints import align_checkpoints
    monkeypatch.setattr("solvers.stream.CHUNK", 16)
    g = gqa_graph(bias=False)
    a = {k: v.float() for k, v in state(GQAttention(bias=False)).items()}
    classes = CLASSES["permutation"][1]
    t, b = _planted(g, a, classes, 5, noise=1e-3)
    for name, params in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_file({k: v.contiguous() for k, v in params.items()}, tmp_path / name / "model.safetensors")
    mem = solvers.solve("weight_matching", g, a, b, classes=classes, seed=0)
    out = align_checkpoints(tmp_path / "a", tmp_path / "b", tmp_path / "out", g, classes=classes, seed=0)
    assert _recovered(out["solution"], t) and out["l2_after"] < out["l2_before"]
    written, expected = load_file(tmp_path / "out" / "model.safetensors"), sy.apply(g, b, mem.transforms)
    assert set(written) == set(expected) and all(torch.equal(written[k], expected[k]) for k in expected)
