"""The approximate dimension of matched weight clouds (Ferbach et al.): PCA dimension on planted
low-dimensional clouds, neuron clouds read every tensor of a space, matched distance after alignment."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import architectures
import solvers
import symmetries as sy
from symmetries.errors import GraphError
from symmetries.landscape import approximate_dimension, matched_dimension, neuron_cloud


@settings(max_examples=25, deadline=None)
@given(n=st.integers(20, 60), k=st.integers(8, 20), d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_a_cloud_on_a_d_dimensional_affine_subspace_has_dimension_d(n, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(k, d, generator=g, dtype=torch.float64))[0]      # k × d orthonormal
    coords = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(1.0, 2.0, d, dtype=torch.float64)
    cloud = coords @ basis.T + torch.randn(k, generator=g, dtype=torch.float64)          # an offset: centring matters
    assert approximate_dimension(cloud, energy=1.0 - 1e-9) == min(d, n - 1)
    assert 1 <= approximate_dimension(cloud, energy=0.5) <= d


def test_energy_and_degenerate_clouds():
    x = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    x = torch.cat([x, -x])                                  # centred: energies 9, 4, 1 (of 14) per direction pair
    assert approximate_dimension(x, 9 / 14) == 1 and approximate_dimension(x, 13 / 14) == 2
    assert approximate_dimension(x, 1.0) == 3
    assert approximate_dimension(torch.ones(5, 4)) == 0     # one point
    with pytest.raises(ValueError, match="energy"):
        approximate_dimension(x, 0.0)


def test_the_cloud_of_a_space_holds_every_weight_of_each_unit():
    arch = architectures.mlp([3, 4, 2])
    p = arch.module(seed=0).state_dict()
    cloud = neuron_cloud(arch.graph, p, "hidden.0")
    assert cloud.shape == (4, 3 + 1 + 2)                     # incoming row, bias, outgoing column
    expected = torch.cat([p["layers.0.weight"], p["layers.0.bias"][:, None], p["layers.1.weight"].T], 1).double()
    assert torch.equal(cloud, expected)
    with pytest.raises(sy.errors.UnknownSpaceError):
        neuron_cloud(arch.graph, p, "nope")


def test_alignment_lowers_the_matched_distance_and_keeps_the_dimensions():
    arch = architectures.mlp([10, 32, 32, 3])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    t = sy.random_transforms(arch.graph, 1, classes="permutation")
    noise = torch.Generator().manual_seed(2)
    b = {k: v + 1e-3 * torch.randn(v.shape, generator=noise, dtype=torch.float64)
         for k, v in sy.apply(arch.graph, a, t).items()}
    before = matched_dimension(arch.graph, a, b)
    aligned = sy.apply(arch.graph, b, solvers.solve("weight_matching", arch, a, b).transforms)
    after = matched_dimension(arch.graph, a, aligned)
    for s in ("hidden.0", "hidden.1"):
        assert after[s].matched_distance < 0.01 < before[s].matched_distance
        assert after[s].dim_a == before[s].dim_a and after[s].dim_b == before[s].dim_b  # a permutation keeps a cloud
        assert after[s].dim_joint <= before[s].dim_joint and after[s].n == 32
        assert after[s].rate == pytest.approx(32 ** (-1 / after[s].dim_joint))
    assert set(after["hidden.0"].as_dict()) >= {"dim_a", "dim_b", "dim_joint", "rate", "matched_distance"}


def test_clouds_of_different_widths_are_refused():
    wide, narrow = architectures.mlp([3, 6, 2]), architectures.mlp([3, 4, 2])
    with pytest.raises(GraphError, match="layers.0.weight"):
        matched_dimension(wide.graph, wide.module(seed=0).state_dict(), narrow.module(seed=0).state_dict())
