"""Channel shuffle through from_module (issue #13 §2; ShuffleNet): ``nn.ChannelShuffle`` and the
``view(B, g, C/g, H, W) → transpose(1, 2) → view(B, C, H, W)`` of torchvision's ``channel_shuffle``
interleave the channels of the groups — a fixed permutation of the units. The spaces on either side
would be conjugate by it, which no class expresses, so both keep no symmetry (never a claimed one
that does not hold): what flows through the shuffle indexes no space, and the spaces inside the
branches keep theirs. Random transforms of every admitted class keep the output; the symmetries the
same network has without the shuffle change it; weight matching undoes a planted transform."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from arch_checks import output_change, perturb_norms, planted_alignment
from symmetries.testing import check_invariance


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """A copy of torchvision.models.shufflenetv2.channel_shuffle."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, num_channels, height, width)
    return x


class Unit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, the other half go through a
    1×1 → depthwise 3×3 → 1×1 branch, the halves are concatenated and shuffled."""

    def __init__(self, channels: int, shuffle: str):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                                    nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
                                    nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.shuffle = nn.ChannelShuffle(2) if shuffle == "module" else None
        self.mode = shuffle

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch(x2)), dim=1)
        if self.mode == "module":
            return self.shuffle(out)
        return channel_shuffle(out, 2) if self.mode == "function" else out


class ShuffleNet(nn.Module):
    def __init__(self, shuffle: str = "function", channels: int = 8):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.units = nn.Sequential(Unit(channels, shuffle), Unit(channels, shuffle))
        self.fc = nn.Linear(channels, 2)

    def forward(self, x):
        return self.fc(self.units(torch.relu(self.bn(self.stem(x)))).mean((2, 3)))


def _model(shuffle: str, seed: int = 0) -> ShuffleNet:
    torch.manual_seed(seed)
    return perturb_norms(ShuffleNet(shuffle).double().eval())


def _inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=6, deadline=None)
@given(shuffle=st.sampled_from(["function", "module"]), seed=st.integers(0, 2**16))
def test_spaces_through_a_shuffle_keep_no_symmetry_and_the_rest_stay_exact(shuffle, seed):
    model = _model(shuffle, seed)
    g = architectures.from_module(model, _inputs())
    # the half of the stem's channels read by the first branch keeps a space, and so does the first
    # 1×1 conv of each branch; the other half and the branches' outputs reach the shuffle (their units
    # are interleaved), and everything after it reads features of no space
    assert [s.name for s in g.spaces()] == ["stem", "units.0.branch.0", "units.1.branch.0"]
    assert {e.slice for e in g.edges_at("stem") if e.parameter.startswith(("stem", "bn"))} == {(4, 8)}
    assert all(s.classes == (sy.Permutation(),) for s in g.spaces())
    assert {p.name for p in g.parameters() if p.fixed} >= {"units.0.branch.6.weight", "units.1.branch.6.weight",
                                                           "fc.weight"}  # the branches' outputs, the reader
    report = check_invariance(model, g, _inputs(seed), examples=3, seed=seed)
    assert report.passed, report


def test_the_unshuffled_symmetries_break_the_shuffled_network():
    """Without the shuffle the stem's and branches' spaces admit permutations; applied to the shuffled
    network those permutations change its output: the shuffle really removes them."""
    shuffled, plain = _model("function"), _model("none")
    g_plain = architectures.from_module(plain, _inputs())
    assert {"stem", "units.0.branch.5"} <= {s.name for s in g_plain.spaces()}
    x = _inputs(1)
    assert output_change(shuffled, g_plain, x, sy.random_transforms(g_plain, 0, classes=sy.Permutation())) > 1e-6
    assert check_invariance(plain, g_plain, x, examples=2).passed  # while the plain network keeps them


class Inverse(nn.Module):
    """The reverse interleave ``view(B, C/g, g, …) → transpose(1, 2)`` after a single space, with B = 1."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        b, c, hh, ww = h.shape
        h = h.reshape(b, c // 3, 3, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)
        return self.b(h).mean((2, 3))


@pytest.mark.parametrize("batch", [1, 2])
def test_any_transposed_group_merge_is_an_interleave(batch):
    model = Inverse().double()
    g = architectures.from_module(model, torch.randn(batch, 3, 4, 4, dtype=torch.float64))
    assert g.spaces() == [] and all(p.fixed for p in g.parameters())


def test_weight_matching_undoes_a_planted_transform_of_the_branches():
    model, x = _model("module", 3), _inputs(2)
    g = architectures.from_module(model, _inputs())
    ratio, change = planted_alignment(model, g, x, seed=1)
    assert ratio < 1e-20 and change < 1e-10


@pytest.mark.parametrize("shuffle", ["function", "module"])
def test_torch_export_graphs_agree(shuffle):
    """``architectures.from_hf`` (torch.export's ATen graph) gives the same graph."""
    model = _model(shuffle)
    assert architectures.graphs_equivalent(architectures.from_hf(model, _inputs()),
                                           architectures.from_module(model, _inputs()))
