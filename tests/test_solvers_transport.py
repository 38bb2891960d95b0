"""Optimal transport (POT) between neuron clouds: exact and entropic, and OT fusion."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import architectures
import solvers
from solvers.algorithms.transport import fuse
from symmetries import Permutation, apply, random_transforms


def _pair(seed, sigma=0.0):
    arch = architectures.mlp([10, 8, 6, 3])
    a = {k: v.double() for k, v in arch.module(seed=seed).state_dict().items()}
    t = random_transforms(arch.graph, seed, classes=Permutation())
    b = apply(arch.graph, a, t)
    g = torch.Generator().manual_seed(seed)
    b = {k: v + sigma * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in b.items()}
    return arch, a, b, t


@pytest.mark.parametrize("transport", ["emd", "sinkhorn"])
@settings(max_examples=5)
@given(seed=st.integers(0, 2**16))
def test_planted_permutation_from_transport(transport, seed):
    arch, a, b, t = _pair(seed, 1e-4)
    sol = solvers.solve("optimal_transport", arch.graph, a, b, classes=Permutation(), transport=transport,
                        reg=0.005)
    for space in t:
        assert torch.equal(sol.transforms[space].as_matrix(), t.inverse()[space].as_matrix())
        gamma = sol.extra["couplings"][space]
        n = gamma.shape[0]
        assert torch.allclose(gamma.sum(0), torch.full((n,), 1 / n, dtype=gamma.dtype), atol=1e-6)
        if transport == "emd":  # the exact coupling is the planted permutation / n
            assert torch.allclose(gamma * n, t.inverse()[space].as_matrix(), atol=1e-12)
    assert sol.objective_after < 1e-3 * sol.objective_before


def test_fusion_of_aligned_copies_is_the_model():
    arch, a, b, _ = _pair(4)
    sol = solvers.solve("optimal_transport", arch.graph, a, b, classes=Permutation())
    fused = fuse(arch.graph, a, b, sol.extra["soft_transforms"])
    assert all(torch.allclose(fused[k], a[k], atol=1e-12) for k in a)
    half = fuse(arch.graph, a, b, sol.transforms, weight=0.25)
    assert set(half) == set(a)
    unaligned = fuse(arch.graph, a, b, {}, weight=0.5)
    assert any(not torch.allclose(unaligned[k], a[k]) for k in a)


def test_sinkhorn_coupling_is_soft_and_errors():
    arch = architectures.mlp([10, 8, 6, 3])
    a, b = ({k: v.double() for k, v in arch.module(seed=s).state_dict().items()} for s in (0, 1))
    sol = solvers.solve("optimal_transport", arch.graph, a, b, classes=Permutation(), transport="sinkhorn", reg=1.0)
    gamma = sol.extra["couplings"]["hidden.0"]
    assert float((gamma > 1e-6).float().mean()) > 0.5  # strong entropy: a dense coupling
    with pytest.raises(ValueError, match="transport"):
        solvers.solve("optimal_transport", arch.graph, a, b, classes=Permutation(), transport="gw")
    with pytest.raises(solvers.UnsupportedClassError):
        solvers.solve("optimal_transport", arch.graph, a, b, classes="permutation_scaling")
    default = solvers.solve("optimal_transport", arch.graph, a, b)  # the standard class it searches: Permutation
    explicit = solvers.solve("optimal_transport", arch.graph, a, b, classes=Permutation())
    assert default.objective_after == explicit.objective_after
    assert all(default.transforms[s].allclose(explicit.transforms[s]) for s in explicit.transforms)


def test_sinkhorn_breakdown_and_non_convergence_are_reported_not_converged():
    arch = architectures.mlp([6, 5, 4, 3])
    a, b = ({k: v.double() for k, v in arch.module(seed=s).state_dict().items()} for s in (0, 1))

    def run(**options):
        return solvers.solve("optimal_transport", arch.graph, a, b, classes=Permutation(), transport="sinkhorn",
                             **options)
    for reg in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="reg must be a positive number"):
            run(reg=reg)
    broken = run(reg=1e-5)  # the kernel exp(-C/reg) underflows: POT returns an all-zero coupling
    assert broken.status == "failed" and not broken.success
    assert "'hidden.0'" in broken.message and "larger reg" in broken.message and "transport='emd'" in broken.message
    stopped = run(reg=1e-3, num_iter=1000)  # finite, but the marginals are not met yet
    assert stopped.status == "max_iter" and "marginals" in stopped.message and "num_iter" in stopped.message
    for space, gamma in stopped.extra["couplings"].items():  # the spaces named are those off their marginals
        m, n = gamma.shape
        off = max(float((gamma.sum(1) * m - 1).abs().max()), float((gamma.sum(0) * n - 1).abs().max())) > 1e-6
        assert off == (f"space {space!r}" in stopped.message), space
    fine = run(reg=0.05)
    assert fine.status == "converged" and "marginals" not in fine.message
    assert solvers.solve("optimal_transport", arch.graph, a, b, classes=Permutation()).status == "converged"
