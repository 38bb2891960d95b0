"""Mean-field posteriors: transforms on means and stds, W₂ alignment of planted permutations and
signs, refusal of non-monomial classes, interpolation, the marginalized barrier and VI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from symmetries import landscape as L
from symmetries import posteriors as P
from symmetries.errors import NotAdmittedError, UnknownSpaceError
from symmetries.testing.strategies import seeds


def _posterior(arch, seed, std_scale=0.05):
    g = torch.Generator().manual_seed(seed)
    mean = {k: v.detach().clone() for k, v in arch.module(seed=seed, dtype=torch.float64).state_dict().items()}
    std = {k: std_scale * torch.rand(v.shape, generator=g, dtype=torch.float64) + 1e-3 for k, v in mean.items()}
    return P.MeanField(mean, std)


def _noisy(q, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return P.MeanField({k: v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in q.mean.items()},
                       {k: (v + scale * torch.rand(v.shape, generator=g, dtype=v.dtype)) for k, v in q.std.items()})


def test_mean_field_validation():
    with pytest.raises(ValueError, match="negative"):
        P.MeanField({"w": torch.zeros(2)}, {"w": -torch.ones(2)})
    with pytest.raises(sy.errors.ShapeMismatchError, match="'w'"):
        P.MeanField({"w": torch.zeros(2)}, {"w": torch.ones(3)})
    q = P.MeanField.from_log_variance({"w": torch.zeros(2)}, {"w": torch.log(torch.tensor([4.0, 9.0]))})
    torch.testing.assert_close(q.std["w"], torch.tensor([2.0, 3.0]))


@settings(max_examples=40)
@given(seeds, st.sampled_from(["relu", "tanh"]))
def test_transform_acts_on_means_with_T_and_stds_with_abs_T(seed, act):
    arch = architectures.mlp([4, 6, 5, 3], activation=act)
    q = _posterior(arch, seed % 1000)
    cls = sy.SignedPermutation() if act == "tanh" else sy.Permutation()
    t = sy.random_transforms(arch.graph, seed, classes=cls)
    qt = q.transform(arch.graph, t)
    for k, v in sy.apply(arch.graph, q.mean, t).items():
        assert torch.equal(qt.mean[k], v)
    # a draw of T q equals T applied to a draw of q with the noise moved along (same law)
    for k in q.std:
        torch.testing.assert_close(qt.std[k].sort().values.flatten().sort().values,
                                   q.std[k].flatten().sort().values)
        assert bool((qt.std[k] >= 0).all())
    # the W₂ distance is invariant under a joint transform
    r = _posterior(arch, seed % 1000 + 1)
    assert P.wasserstein2(q.transform(arch.graph, t), r.transform(arch.graph, t)) == pytest.approx(
        P.wasserstein2(q, r), rel=1e-10)


@settings(max_examples=30)
@given(seeds, st.sampled_from(["relu", "tanh"]))
def test_transform_of_stds_is_abs_T_computed_directly(seed, act):
    """``|T|σ`` against the dense matrices: ``σ₀' = |T₀|σ₀``, ``σ₁' = |T₁| σ₁ |T₀|ᵀ``, ``σ₂' = σ₂ |T₁|ᵀ``
    (for monomial ``T``, ``|T⁻¹| = |T|ᵀ``); the means with the signed ``T`` likewise."""
    arch = architectures.mlp([4, 6, 5, 3], activation=act)
    q = _posterior(arch, seed % 1000, std_scale=1.0)
    cls = sy.SignedPermutation() if act == "tanh" else sy.Permutation()
    t = sy.random_transforms(arch.graph, seed, classes=cls)
    qt = q.transform(arch.graph, t)
    t0, t1 = (t[s].as_matrix().double() for s in ("hidden.0", "hidden.1"))
    a0, a1 = t0.abs(), t1.abs()
    s, m = q.std, q.mean
    expected_std = {"layers.0.weight": a0 @ s["layers.0.weight"], "layers.0.bias": a0 @ s["layers.0.bias"],
                    "layers.1.weight": a1 @ s["layers.1.weight"] @ a0.T, "layers.1.bias": a1 @ s["layers.1.bias"],
                    "layers.2.weight": s["layers.2.weight"] @ a1.T, "layers.2.bias": s["layers.2.bias"]}
    expected_mean = {"layers.0.weight": t0 @ m["layers.0.weight"], "layers.1.weight": t1 @ m["layers.1.weight"] @ t0.T,
                     "layers.2.weight": m["layers.2.weight"] @ t1.T}
    assert set(qt.std) == set(expected_std)
    for k, v in expected_std.items():
        torch.testing.assert_close(qt.std[k], v, rtol=1e-12, atol=0, msg=k)
    for k, v in expected_mean.items():
        torch.testing.assert_close(qt.mean[k], v, rtol=1e-12, atol=1e-15, msg=k)
    assert not all(torch.equal(qt.std[k], s[k]) for k in s)        # the planted T moved the stds


@settings(max_examples=20)
@given(seeds, st.sampled_from(["relu", "tanh"]))
def test_alignment_recovers_a_planted_permutation_from_the_stds_alone(seed, act):
    """All means zero: only the σ half of the W₂ cost, ``‖σ_A − |T|σ_B‖²``, can find the permutation."""
    arch = architectures.mlp([5, 12, 10, 3], activation=act)
    q = _posterior(arch, seed % 1000, std_scale=1.0)
    qa = P.MeanField({k: torch.zeros_like(v) for k, v in q.mean.items()}, q.std)
    planted = sy.random_transforms(arch.graph, seed, classes=sy.Permutation())
    assume_moved = any(not el.allclose(type(el).identity(el.n)) for el in planted.values())
    qb = qa.transform(arch.graph, planted)
    result = P.align_posteriors(arch.graph, qa, qb, classes=sy.Permutation(), seed=seed % 100)
    for space, el in result.transforms.items():
        assert el.allclose(planted[space].inverse()), space
    assert result.cost_after == pytest.approx(0.0, abs=1e-20)
    if assume_moved:
        assert result.cost_before > 0.1


@settings(max_examples=25)
@given(seeds, st.sampled_from([0.0, 1e-3]))
def test_alignment_recovers_a_planted_permutation(seed, noise):
    arch = architectures.mlp([5, 12, 10, 3])
    qa = _posterior(arch, seed % 1000)
    planted = sy.random_transforms(arch.graph, seed, classes=sy.Permutation())
    qb = _noisy(qa, noise, seed).transform(arch.graph, planted)
    result = P.align_posteriors(arch.graph, qa, qb, seed=seed % 100)
    for space, el in result.transforms.items():
        assert el.allclose(planted[space].inverse()), space
    assert result.cost_after <= result.cost_before
    if noise == 0.0:
        assert result.cost_after == pytest.approx(0.0, abs=1e-20)


@settings(max_examples=20)
@given(seeds)
def test_alignment_recovers_planted_signs_and_permutations_for_tanh(seed):
    arch = architectures.mlp([5, 9, 8, 3], activation="tanh")
    qa = _posterior(arch, seed % 1000)
    planted = sy.random_transforms(arch.graph, seed, classes=sy.SignedPermutation())
    qb = qa.transform(arch.graph, planted)
    result = P.align_posteriors(arch.graph, qa, qb)           # default: signed permutations here
    assert result.cost_after == pytest.approx(0.0, abs=1e-20)
    for space, el in result.transforms.items():
        assert el.allclose(planted[space].inverse()), space
    flips = P.align_posteriors(arch.graph, qa, qa.transform(arch.graph, sy.random_transforms(
        arch.graph, seed, classes=sy.SignFlip())), classes=sy.SignFlip())
    assert flips.cost_after == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("cls", [sy.Orthogonal(), sy.Invertible(), sy.PositiveScaling(), sy.PermutationScaling(),
                                 sy.SemiPermutation()])
def test_classes_leaving_the_mean_field_family_are_refused(cls):
    arch = architectures.mlp([4, 6, 3], activation="identity")   # admits everything up to Invertible
    q = _posterior(arch, 0)
    with pytest.raises(P.MeanFieldClassError, match="hidden.0.*mean-field") as info:
        P.align_posteriors(arch.graph, q, q, classes=cls)
    assert isinstance(info.value, NotAdmittedError) and info.value.space == "hidden.0"
    with pytest.raises(P.MeanFieldClassError):
        P.align_posteriors(arch.graph, q, q, classes={"hidden.0": cls})


@pytest.mark.parametrize("act, advised", [("relu", ["Permutation"]),
                                         ("tanh", ["Permutation", "SignFlip", "SignedPermutation"])])
def test_refusal_advises_only_the_mean_field_classes_the_space_admits(act, advised):
    arch = architectures.mlp([4, 6, 3], activation=act)
    q = _posterior(arch, 0)
    with pytest.raises(P.MeanFieldClassError) as info:
        P.align_posteriors(arch.graph, q, q, classes=sy.Orthogonal())
    advice = str(info.value).split(":")[-1]
    for name in ("SignFlip", "SignedPermutation"):
        assert (name in advice) == (name in advised), advice
    assert "Permutation" in advice


def test_classes_the_space_does_not_admit_and_unknown_spaces_are_refused():
    arch = architectures.mlp([4, 6, 3], activation="relu")
    q = _posterior(arch, 0)
    with pytest.raises(NotAdmittedError, match="hidden.0"):
        P.align_posteriors(arch.graph, q, q, classes=sy.SignFlip())    # ReLU is not odd
    with pytest.raises(UnknownSpaceError, match="hidden.7"):
        P.align_posteriors(arch.graph, q, q, classes={"hidden.7": sy.Permutation()})


def test_interpolation_of_posteriors():
    arch = architectures.mlp([3, 4, 2])
    qa, qb = _posterior(arch, 0), _posterior(arch, 1)
    q = P.interpolate_posteriors(qa, qb, 0.25)
    for k in qa.mean:
        torch.testing.assert_close(q.mean[k], 0.75 * qa.mean[k] + 0.25 * qb.mean[k])
        torch.testing.assert_close(q.std[k], 0.75 * qa.std[k] + 0.25 * qb.std[k])
    assert all(torch.equal(P.interpolate_posteriors(qa, qb, 0.0).std[k], qa.std[k]) for k in qa.std)


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def test_marginalized_curve_reduces_to_the_deterministic_one_at_zero_variance_and_is_seeded():
    arch = architectures.mlp([4, 8, 3])
    qa, qb = _posterior(arch, 0), _posterior(arch, 1)
    data = _data()
    model = arch.module(dtype=torch.float64)
    zero = lambda q: P.MeanField(q.mean, {k: torch.zeros_like(v) for k, v in q.std.items()})  # noqa: E731
    c0 = P.marginalized_curve(model, zero(qa), zero(qb), data, alphas=7, samples=2)
    det = L.interpolation_curve(model, qa.mean, qb.mean, data, alphas=7)
    np.testing.assert_allclose(c0.loss, det.loss, rtol=1e-12)
    c1 = P.marginalized_curve(model, qa, qb, data, alphas=7, samples=4, seed=3)
    c2 = P.marginalized_curve(model, qa, qb, data, alphas=7, samples=4, seed=3)
    c3 = P.marginalized_curve(model, qa, qb, data, alphas=7, samples=4, seed=4)
    np.testing.assert_array_equal(c1.loss, c2.loss)
    assert not np.array_equal(c1.loss, c3.loss)
    # the Monte Carlo estimate at α = 0 is the mean of the per-draw losses
    draws = [L.evaluate(model, data, qa.sample(torch.Generator().manual_seed(3 + s))).loss for s in range(4)]
    assert c1.loss[0] == pytest.approx(np.mean(draws), rel=1e-12)
    assert c1.meta["samples"] == 4 and np.isfinite(c1.loss_barrier)
    with pytest.raises(ValueError, match="samples"):
        P.expected_loss(model, qa, data, samples=0)


def test_variational_training_fits_the_data_and_learns_stds():
    arch = architectures.mlp([4, 16, 3])
    data = _data(200)
    model = arch.module(seed=0, dtype=torch.float64)
    q0 = P.MeanField({k: v.detach() for k, v in model.state_dict().items()},
                     {k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    start = P.expected_loss(model, q0, data, samples=1)[0]
    seen = []
    q = P.train_mean_field(model, data, epochs=40, lr=2e-2, seed=0, progress=lambda e, n, l: seen.append(l))
    loss, acc = P.expected_loss(model, q, data, samples=8)
    assert len(seen) == 40 and seen[-1] < seen[0]
    assert loss < 0.6 * start and acc > 0.8
    assert set(q.mean) == set(model.state_dict()) and all(bool((s > 0).all()) for s in q.std.values())
    assert any(float(s.max()) > 2e-3 for s in q.std.values())      # stds moved from their initial 1e-3
    q_again = P.train_mean_field(model, data, epochs=40, lr=2e-2, seed=0)
    assert all(torch.equal(q.mean[k], q_again.mean[k]) for k in q.mean)  # seeded
