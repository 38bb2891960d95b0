"""GroupNorm through from_module (issue #13 §2): each group of C/G channels is normalised with its own
mean and variance, so a permutation of whole groups composed with permutations inside each group
keeps the statistics — HeadStructured(G, Permutation()) — with the gain and bias following the
channels (G = 1 or G = C: plain permutations). nn.GroupNorm and F.group_norm; a space holding whole
groups of a concatenation keeps them, one whose channels straddle groups keeps none. Random
transforms of every admitted class keep the output to float64 round-off; a free permutation across
groups changes it; weight matching undoes a planted transform."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from arch_checks import output_change, planted_alignment
from symmetries.testing import check_invariance


def _inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Net(nn.Module):
    """conv → GroupNorm(G, C) → ReLU → conv → mean; ``functional``: F.group_norm with raw parameters."""

    def __init__(self, groups: int, channels: int = 12, functional: bool = False, affine: bool = True):
        super().__init__()
        torch.manual_seed(groups)
        self.conv1, self.conv2 = nn.Conv2d(2, channels, 3, padding=1), nn.Conv2d(channels, 3, 3, padding=1)
        self.norm = nn.GroupNorm(groups, channels, affine=affine)
        if affine:
            with torch.no_grad():
                self.norm.weight.normal_()
                self.norm.bias.normal_()
        self.functional, self.groups = functional, groups

    def forward(self, x):
        h = self.conv1(x)
        if self.functional:
            h = F.group_norm(h, self.groups, self.norm.weight, self.norm.bias)
        else:
            h = self.norm(h)
        return self.conv2(torch.relu(h)).mean(dim=(2, 3))


@settings(max_examples=12, deadline=None)
@given(groups=st.sampled_from([1, 2, 3, 4, 6, 12]), functional=st.booleans(), affine=st.booleans(),
       seed=st.integers(0, 2**16))
def test_groupnorm_admits_permutations_of_and_inside_groups(groups, functional, affine, seed):
    functional = functional and affine
    model = Net(groups, functional=functional, affine=affine).double().eval()
    g = architectures.from_module(model, _inputs())
    expected = sy.Permutation() if groups in (1, 12) else sy.HeadStructured(groups, sy.Permutation())
    assert g.space("conv1").classes == (expected,) and g.space("conv1").head_group is None
    if affine:
        assert {e.parameter for e in g.edges_at("conv1")} >= {"norm.weight", "norm.bias"}
    report = check_invariance(model, g, _inputs(seed), examples=3, seed=seed)
    assert report.passed, report


def test_a_permutation_across_groups_changes_the_output():
    model = Net(3).double().eval()
    g = architectures.from_module(model, _inputs())
    x = _inputs(1)
    assert output_change(model, g, x, {"conv1": sy.HeadStructured(3, sy.Permutation()).random(12, seed=0)}) < 1e-12
    assert output_change(model, g, x, {"conv1": sy.Permutation().random(12, seed=0)}) > 1e-6


class Concat(nn.Module):
    """GroupNorm(3, 12) over two concatenated spaces of 8 and 4 channels: the first holds groups 0–1
    whole, the second group 2 (``aligned``); with 6 + 6 channels the boundary cuts group 1."""

    def __init__(self, aligned: bool = True):
        super().__init__()
        torch.manual_seed(1)
        k = 8 if aligned else 6
        self.a, self.b = nn.Conv2d(2, k, 1), nn.Conv2d(2, 12 - k, 1)
        self.norm, self.out = nn.GroupNorm(3, 12), nn.Conv2d(12, 3, 1)

    def forward(self, x):
        h = torch.cat([torch.tanh(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.out(torch.relu(self.norm(h))).mean(dim=(2, 3))


def test_groupnorm_over_a_concatenation_keeps_whole_groups_only():
    model = Concat(True).double().eval()
    g = architectures.from_module(model, _inputs())
    assert g.space("a").classes == (sy.HeadStructured(2, sy.Permutation()),)
    assert g.space("b").classes == (sy.Permutation(),)
    assert check_invariance(model, g, _inputs(2), examples=3).passed
    cut = architectures.from_module(Concat(False).double().eval(), _inputs())
    assert cut.spaces() == []  # both spaces straddle group 1: no symmetry


class Split(nn.Module):
    """GroupNorm(3, 12) (groups of 4 channels), then the channels split into two pieces read apart."""

    def __init__(self, split: int):
        super().__init__()
        torch.manual_seed(split)
        self.conv, self.norm = nn.Conv2d(2, 12, 1), nn.GroupNorm(3, 12)
        self.a, self.b = nn.Conv2d(split, 2, 1), nn.Conv2d(12 - split, 2, 1)
        with torch.no_grad():
            self.norm.weight.normal_()
            self.norm.bias.normal_()
        self.split = split

    def forward(self, x):
        p, q = torch.relu(self.norm(self.conv(x))).split([self.split, 12 - self.split], dim=1)
        return (self.a(p) + self.b(q)).mean((2, 3))


@pytest.mark.parametrize("split, classes", [
    (4, [(4, sy.Permutation()), (8, sy.HeadStructured(2, sy.Permutation()))]),
    (8, [(8, sy.HeadStructured(2, sy.Permutation())), (4, sy.Permutation())]),
    (6, []),  # each piece cuts group 1: neither may move it
    (2, []),
])
def test_a_split_after_groupnorm_keeps_the_whole_groups_of_each_piece(split, classes):
    model = Split(split).double().eval()
    g = architectures.from_module(model, _inputs())
    assert [(s.size, s.cls) for s in g.spaces()] == classes
    assert check_invariance(model, g, _inputs(1), examples=3).passed


def test_weight_matching_undoes_a_planted_group_transform():
    model, x = Net(4).double().eval(), _inputs(3)
    g = architectures.from_module(model, _inputs())
    ratio, change = planted_alignment(model, g, x, seed=2)
    assert ratio < 1e-20 and change < 1e-10


@pytest.mark.parametrize("functional", [False, True])
def test_torch_export_graphs_agree(functional):
    """``architectures.from_hf`` (torch.export's ATen graph) gives the same graph."""
    model = Net(3, functional=functional).double().eval()
    assert architectures.graphs_equivalent(architectures.from_hf(model, _inputs()),
                                           architectures.from_module(model, _inputs()))


class GroupSoftmax(nn.Module):
    """A softmax within (``dim=-1``) or across (``dim=1``) groups of features: ``view(B, G, C/G)``."""

    def __init__(self, dim: int):
        super().__init__()
        torch.manual_seed(dim + 2)
        self.a, self.b, self.dim = nn.Linear(4, 6), nn.Linear(6, 2), dim

    def forward(self, x):
        return self.b(self.a(x).view(x.shape[0], 2, 3).softmax(self.dim).reshape(x.shape[0], 6))


@pytest.mark.parametrize("dim, inner", [(-1, sy.Permutation()), (1, sy.Trivial())])
def test_a_softmax_over_groups_of_features_keeps_the_groups(dim, inner):
    """Like GroupNorm, a softmax within each group (or across the groups, unit by unit) is not
    equivariant under a permutation mixing the groups (it was once read as a plain softmax)."""
    model, x = GroupSoftmax(dim).double(), torch.randn(5, 4, dtype=torch.float64)
    g = architectures.from_module(model, x)
    assert g.space("a").classes == (sy.HeadStructured(2, inner),)
    assert check_invariance(model, g, x, examples=3).passed
    swap = sy.GatherElement(torch.tensor([4, 1, 2, 3, 0, 5]), 6)  # units 0 and 4: other groups, other places
    assert output_change(model, g, x, {"a": swap}) > 1e-6
