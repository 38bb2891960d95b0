"""posterior_matching: mean-field posteriors aligned by W₂ through the registry (planted problems)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import architectures
import solvers
import symmetries as sy
from symmetries.posteriors import MeanField, align_posteriors
from symmetries.posteriors.align import wasserstein2


def _posterior(arch, seed):
    g = torch.Generator().manual_seed(seed)
    means = {k: v.double() for k, v in arch.module(seed=seed).state_dict().items()}
    stds = {k: 0.01 + 0.1 * torch.rand(v.shape, generator=g, dtype=torch.float64) for k, v in means.items()}
    return means, stds


def _abs(transforms):
    """``|T|`` of a transform set of monomial gather elements (signs dropped)."""
    return sy.TransformSet({k: sy.GatherElement(v.index, v.n) for k, v in transforms.items()})


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), cls=st.sampled_from(["permutation", "signed_permutation", "sign_flip"]))
def test_planted_posterior_is_recovered_with_stds_moved_by_abs_t(seed, cls):
    arch = architectures.mlp([5, 7, 6, 3], activation="tanh")
    ma, sa = _posterior(arch, seed)
    t = sy.random_transforms(arch.graph, seed + 1, classes=cls)
    mb, sb = sy.apply(arch.graph, ma, t), sy.apply(arch.graph, sa, _abs(t))
    sol = solvers.solve("posterior_matching", arch.graph, ma, mb, classes=cls, stds=(sa, sb), seed=seed)
    assert sol.objective_before > 1e-3 and sol.objective_after <= 1e-20 * sol.objective_before
    truth = t.inverse()
    for space in t:
        assert sol.transforms[space].allclose(truth[space], atol=1e-12), space
    aligned = MeanField(sol.apply(mb), sy.apply(arch.graph, sb, _abs(sol.transforms)))
    assert wasserstein2(MeanField(ma, sa), aligned) == pytest.approx(sol.objective_after, abs=1e-12)


def test_the_objective_is_w2_and_the_wrapper_agrees():
    arch = architectures.mlp([5, 7, 6, 3])
    (ma, sa), (mb, sb) = _posterior(arch, 0), _posterior(arch, 1)
    sol = solvers.posterior_matching(arch.graph, ma, mb, stds=(sa, sb))
    assert sol.objective_before == pytest.approx(wasserstein2(MeanField(ma, sa), MeanField(mb, sb)), rel=1e-12)
    assert sol.objective_after < sol.objective_before and "W2" in sol.objective
    res = align_posteriors(arch.graph, MeanField(ma, sa), MeanField(mb, sb))
    assert res.cost_after == pytest.approx(sol.objective_after, rel=1e-12)


def test_bad_stds_and_classes_are_refused():
    arch = architectures.mlp([5, 7, 3])
    ma, sa = _posterior(arch, 0)
    with pytest.raises(solvers.SolverInputError, match="needs the option 'stds'"):
        solvers.solve("posterior_matching", arch.graph, ma, ma)
    with pytest.raises(solvers.SolverInputError, match="stds=\\(stds_a, stds_b\\)"):
        solvers.solve("posterior_matching", arch.graph, ma, ma, stds=sa)
    assert "posterior_matching" not in solvers.applicable(arch)
    with pytest.raises(solvers.SolverInputError, match="layers.0.bias"):
        solvers.solve("posterior_matching", arch.graph, ma, ma, stds=(sa, {k: v for k, v in sa.items()
                                                                           if k != "layers.0.bias"}))
    negative = dict(sa, **{"layers.0.weight": -sa["layers.0.weight"]})
    with pytest.raises(solvers.SolverInputError, match="non-negative"):
        solvers.solve("posterior_matching", arch.graph, ma, ma, stds=(sa, negative))
    with pytest.raises(solvers.UnsupportedClassError):
        solvers.solve("posterior_matching", arch.graph, ma, ma, classes="permutation_scaling", stds=(sa, sa))
