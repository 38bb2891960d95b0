"""Grouped convolutions through from_module (issue #13 §2; ResNeXt, RegNet): a convolution with g
groups maps input group k to output group k only, so its output space admits
HeadStructured(g, Invertible) — narrowed by what follows (BatchNorm: Permutation) — and its input
space HeadStructured(g, Trivial) (whole groups moved, nothing inside: a map inside an input group
would act on the kernel's axis 1 differently per group), the two sharing one group permutation (a
head group). Transposed convolutions mirror it. Random transforms of every admitted class keep the
output to float64 round-off; a free permutation, a map inside an input group, or a group
permutation of one side alone changes it; weight matching undoes a planted transform."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from arch_checks import output_change, perturb_norms, planted_alignment
from symmetries.testing import check_invariance

CONV = {1: (nn.Conv1d, nn.BatchNorm1d, nn.ConvTranspose1d), 2: (nn.Conv2d, nn.BatchNorm2d, nn.ConvTranspose2d),
        3: (nn.Conv3d, nn.BatchNorm3d, nn.ConvTranspose3d)}
SIZE = {1: (7,), 2: (5, 5), 3: (3, 4, 3)}


def _inputs(dims: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.randn(2, channels, *SIZE[dims], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    """Float64, eval mode, BatchNorm statistics and gains away from their defaults."""
    torch.manual_seed(seed)
    return perturb_norms(model.double().eval())


class Grouped(nn.Module):
    """1×1 conv → BN → ReLU → grouped (transposed) conv → BN → ReLU → 1×1 conv → mean → linear."""

    def __init__(self, dims: int = 2, groups: int = 2, transposed: bool = False, mid: int = 8, out: int = 12):
        super().__init__()
        conv, bn, convt = CONV[dims]
        self.expand, self.bn1 = conv(3, mid, 1), bn(mid)
        self.grouped = (convt if transposed else conv)(mid, out, 3, padding=1, groups=groups)
        self.bn2, self.project, self.fc = bn(out), conv(out, 5, 1), nn.Linear(5, 2)

    def forward(self, x):
        x = F.relu(self.bn1(self.expand(x)))
        x = F.relu(self.bn2(self.grouped(x)))
        return self.fc(F.relu(self.project(x)).flatten(2).mean(-1))


class ResNeXt(nn.Module):
    """Two ResNeXt bottlenecks (1×1, grouped 3×3, 1×1, BN each) on a residual stream, then a grouped
    conv reading a space that an add joins with another only afterwards (``late``)."""

    def __init__(self, groups: int = 4, width: int = 8):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "a": nn.Conv2d(6, width, 1), "bn_a": nn.BatchNorm2d(width),
            "b": nn.Conv2d(width, width, 3, padding=1, groups=groups), "bn_b": nn.BatchNorm2d(width),
            "c": nn.Conv2d(width, 6, 1), "bn_c": nn.BatchNorm2d(6)}) for _ in range(2))
        self.pre, self.side = nn.Conv2d(6, width, 1), nn.Conv2d(6, width, 1)
        self.late = nn.Conv2d(width, 6, 1, groups=2)
        self.fc = nn.Linear(6 + 6 + width, 2)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        for blk in self.blocks:
            h = F.relu(blk["bn_a"](blk["a"](x)))
            h = F.relu(blk["bn_b"](blk["b"](h)))
            x = F.relu(x + blk["bn_c"](blk["c"](h)))
        h = F.relu(self.pre(x))
        y = F.relu(self.late(h))         # h's space is given a group here...
        z = F.relu(h + self.side(x))     # ...and joined with side's output afterwards
        return self.fc(torch.cat([x.mean((2, 3)), y.mean((2, 3)), z.mean((2, 3))], dim=1))


class Functional(nn.Module):
    """``F.conv2d(..., groups=g)`` with raw parameters, a 1×1 conv, and a depthwise conv with a channel
    multiplier (``groups = C_in``, ``C_out = 2 C_in``); ``clash``: the multiplier reads the grouped
    conv's output directly, whose 3 groups its 9 groups do not respect."""

    def __init__(self, groups: int = 3, clash: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.kernel, self.bias = nn.Parameter(torch.randn(9, 6 // groups, 3, 3)), nn.Parameter(torch.randn(9))
        self.mix = nn.Identity() if clash else nn.Conv2d(9, 6, 1)
        self.multiplier = nn.Conv2d(9 if clash else 6, 18 if clash else 12, 3, padding=1, groups=9 if clash else 6)
        self.fc = nn.Linear(18 if clash else 12, 2)
        self.groups = groups

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        h = torch.tanh(F.conv2d(h, self.kernel, self.bias, padding=1, groups=self.groups))
        return self.fc(torch.relu(self.multiplier(torch.relu(self.mix(h)))).mean((2, 3)))


def _assert_exact(model, g, x, seed=0):
    report = check_invariance(model, g, x, examples=3, seed=seed)
    assert report.passed, report


@settings(max_examples=8, deadline=None)
@given(dims=st.sampled_from([1, 2, 3]), groups=st.sampled_from([2, 4]), transposed=st.booleans(),
       seed=st.integers(0, 2**16))
def test_grouped_convolutions_extract_exact_group_symmetries(dims, groups, transposed, seed):
    model = _seeded(Grouped(dims, groups, transposed), seed)
    g = architectures.from_module(model, _inputs(dims))
    inp, out = g.space("expand"), g.space("grouped")
    inner_in, inner_out = (sy.Permutation(), sy.Trivial()) if transposed else (sy.Trivial(), sy.Permutation())
    assert inp.classes == (sy.HeadStructured(groups, inner_in),)
    assert out.classes == (sy.HeadStructured(groups, inner_out),)
    assert inp.head_group == out.head_group == "grouped.groups"
    weight = {(e.space, e.axis, e.role.value) for e in g.edges() if e.parameter == "grouped.weight"}
    assert weight == ({("expand", 0, "in")} if transposed else {("grouped", 0, "out")})  # never axis 1
    _assert_exact(model, g, _inputs(dims, seed + 1), seed)


@pytest.mark.parametrize("transposed", [False, True])
def test_each_restriction_is_necessary(transposed):
    """A free permutation of the output, a map inside input groups, or a group permutation of one side
    alone changes the output; the same maps drawn as the graph says keep it."""
    model, x = _seeded(Grouped(2, 4, transposed), 0), _inputs(2, 1)
    g = architectures.from_module(model, _inputs(2))
    free_side, grouped_side = ("expand", "grouped") if not transposed else ("grouped", "expand")
    n = g.space(free_side).size
    within = sy.HeadStructured(4, sy.Permutation())
    tied = sy.tie_heads(g, {"grouped": g.space("grouped").cls.random(12, seed=3)})
    assert output_change(model, g, x, tied) < 1e-12                                                 # admitted
    assert output_change(model, g, x, {free_side: sy.Permutation().random(n, seed=1)}) > 1e-7       # across groups
    inside = within.random(n, seed=2)
    inside = sy.HeadElement(torch.arange(4), inside.inner)                                     # groups kept
    assert output_change(model, g, x, {free_side: inside}) > 1e-7                                    # inside groups
    assert output_change(model, g, x, {grouped_side: tied[grouped_side]}) > 1e-7                    # one side alone


def test_resnext_blocks_tie_groups_across_adds_and_stay_exact():
    model, x = _seeded(ResNeXt(), 1), _inputs(2, 2)
    g = architectures.from_module(model, _inputs(2))
    assert g.head_groups() == {"blocks.0.b.groups": ["blocks.0.a", "blocks.0.b"],
                               "blocks.1.b.groups": ["blocks.1.a", "blocks.1.b"],
                               "late.groups": ["pre", "late"]}
    assert g.space("pre").classes == (sy.HeadStructured(2, sy.Trivial()),)
    assert {e.parameter for e in g.edges_at("pre")} >= {"pre.weight", "side.weight", "side.bias"}  # joined late
    _assert_exact(model, g, x)
    ratio, change = planted_alignment(model, g, x, seed=4)
    assert ratio < 1e-20 and change < 1e-10


def test_functional_grouped_conv_and_channel_multiplier():
    model, x = _seeded(Functional(3), 2), _inputs(2, 3)
    g = architectures.from_module(model, _inputs(2))
    assert g.space("stem").classes == (sy.HeadStructured(3, sy.Trivial()),)
    assert g.space("kernel.units").classes == (sy.HeadStructured(3, sy.SignedPermutation()),)  # tanh after it
    assert g.space("stem").head_group == g.space("kernel.units").head_group == "kernel.units.groups"
    assert g.space("mix").head_group == g.space("multiplier").head_group == "multiplier.groups"
    assert g.space("mix").classes == (sy.HeadStructured(6, sy.Trivial()),)  # groups of one channel: permutations
    _assert_exact(model, g, x)
    ratio, change = planted_alignment(model, g, x, seed=5)
    assert ratio < 1e-20 and change < 1e-10


def test_groups_that_disagree_leave_no_symmetry():
    """A space with 3 groups read by a convolution with 9: no group structure serves both (conservative)."""
    model = _seeded(Functional(3, clash=True), 2)
    g = architectures.from_module(model, _inputs(2))
    assert g.spaces() == [] and all(p.fixed for p in g.parameters())


class FromInput(nn.Module):
    """A grouped conv on the model's input, and one on features of two spaces (a concatenation)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.a, self.b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 4, 1)
        self.cat_grouped = nn.Conv2d(6, 6, 1, groups=3)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        h = torch.relu(self.first(x))
        c = torch.relu(self.cat_grouped(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)))
        return self.fc(torch.cat([h, c], dim=1).mean((2, 3)))


def test_groups_that_cannot_move_leave_their_spaces_without_symmetry():
    model = _seeded(FromInput(), 0)
    x = _inputs(2, 0, channels=4)
    g = architectures.from_module(model, x)
    assert {s.name for s in g.spaces()} == set()  # input groups are fixed; two spaces cannot move as groups
    assert all(p.fixed for p in g.parameters())


@pytest.mark.parametrize("transposed", [False, True])
def test_torch_export_graphs_agree(transposed):
    """``architectures.from_hf`` (torch.export's ATen graph) gives the same graph."""
    model = _seeded(Grouped(2, 4, transposed), 0)
    assert architectures.graphs_equivalent(architectures.from_hf(model, _inputs(2)),
                                           architectures.from_module(model, _inputs(2)))
