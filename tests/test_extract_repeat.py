"""A flatten of a channel × position map through extraction (:mod:`architectures.extract.repeat`):
the channels reach the next Linear as a repeated edge — ``(S, 1)`` channel-major, ``(S, C)``
channels-last — for VGG- and LeNet-style models, with every claimed class keeping the output, weight
matching of two seeds keeping the function, and every other use of the flattened features refused
naming the node."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import architectures
import solvers
import symmetries as sy
from architectures import ExtractionError, from_module
from symmetries.testing import check_invariance


class VGGish(nn.Module):
    """conv→BN→ReLU→maxpool→conv→BN→ReLU→adaptive-avgpool(7)→flatten→Linear→ReLU→Dropout→Linear."""

    def __init__(self, c=(3, 6, 8), hidden=10, classes=4, pool=7, how="flatten"):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(c[0], c[1], 3, padding=1), nn.BatchNorm2d(c[1]), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.BatchNorm2d(c[2]), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(nn.Linear(c[2] * pool * pool, hidden), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(hidden, classes))
        self.how, self.flatten = how, nn.Flatten()

    def forward(self, x):
        h = self.avgpool(self.features(x))
        if self.how == "flatten":
            h = torch.flatten(h, 1)
        elif self.how == "view":
            h = h.view(h.size(0), -1)
        elif self.how == "module":
            h = self.flatten(h)
        return self.classifier(h)


class LeNet(nn.Module):
    """conv→tanh→avgpool→conv→tanh→flatten→fc (by ``F.linear``)→tanh→fc (by ``x @ Wᵀ``)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 5, padding=2), nn.Conv2d(4, 6, 5)
        self.fc1, self.fc2 = nn.Linear(6 * 3 * 3, 12), nn.Linear(12, 3)

    def forward(self, x):
        h = F.avg_pool2d(torch.tanh(self.c1(x)), 2)
        h = torch.tanh(self.c2(h)).flatten(1)
        h = torch.tanh(F.linear(h, self.fc1.weight, self.fc1.bias))
        return h @ self.fc2.weight.T + self.fc2.bias


class ChannelsLast(nn.Module):
    """conv→ReLU→permute(0, 2, 3, 1)→flatten→Linear: each position's channels side by side."""

    def __init__(self, variant="plain"):
        super().__init__()
        self.conv, self.fc, self.out = nn.Conv2d(2, 4, 3), nn.Linear(4 * 9, 6), nn.Linear(6, 2)
        self.b = nn.Parameter(torch.randn(36))
        self.variant = variant

    def forward(self, x):
        h = torch.relu(self.conv(x)).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        if self.variant == "bias":  # a bias added along the flattened features: refused
            h = h + self.b
        elif self.variant == "slice":
            h = torch.cat((h[:, :18], h[:, 18:]), dim=1)
        elif self.variant == "reshape":
            h = h.view(x.shape[0], 9, 4).sum(1).repeat(1, 9)
        return self.out(torch.relu(self.fc(h)))


def _double(model):
    torch.manual_seed(0)
    m = model.double().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
                mod.bias.normal_()
    return m


def _repeats(g):
    return {(e.parameter, e.space): e.repeat for s in g.spaces() for e in g.edges_at(s.name) if e.repeat}


X = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("how", ["flatten", "view", "module"])
def test_vgg_classifier_reads_the_channels_repeated_over_positions(how):
    m = _double(VGGish(how=how))
    g = from_module(m, X)
    assert _repeats(g) == {("classifier.0.weight", "features.4"): (49, 1)}
    assert {s.name for s in g.spaces()} == {"features.0", "features.4", "classifier.0"}
    report = check_invariance(m, g, X, examples=3)
    assert report.passed, [str(c) for c in report.failures]


def test_vgg_weight_matching_of_two_seeds_keeps_the_function():
    a, b = _double(VGGish()), VGGish()
    torch.manual_seed(1)
    b = _double(b)
    torch.manual_seed(1)
    for p in b.parameters():  # another seed
        p.data.normal_(0, 0.5)
    g = from_module(a, X)
    pb = dict(b.state_dict())
    sol = solvers.solve("weight_matching", g, dict(a.state_dict()), pb, seed=0)
    with torch.no_grad():
        y = b(X)
        b.load_state_dict(sy.apply(g, pb, sol.transforms))
        assert float((b(X) - y).abs().max()) < 1e-12 * (1 + float(y.abs().max()))
    assert sol.objective_after < sol.objective_before


def test_vgg_planted_permutation_is_recovered():
    m = _double(VGGish())
    g = from_module(m, X)
    pa = dict(m.state_dict())
    t = sy.random_transforms(g, seed=3, classes={s.name: sy.Permutation() for s in g.spaces()})
    pb = sy.apply(g, pa, t)
    sol = solvers.solve("weight_matching", g, pa, pb, seed=0)
    back = sy.apply(g, pb, sol.transforms)
    assert max(float((back[k] - pa[k]).abs().max()) for k in pa) < 1e-12


def test_a_general_channel_map_is_not_admitted_and_breaks_the_function():
    """The repeat is needed: a 392-wide transform of the flattened columns would not be a channel map."""
    m = _double(VGGish(pool=7))
    g = from_module(m, X)
    space = g.space("features.4")
    assert all(sy.lattice.is_subclass(c, sy.PermutationScaling()) for c in space.classes)
    with torch.no_grad():
        y = m(X)
        w = m.classifier[0].weight
        w.copy_(w.view(10, 8, 49)[:, :, torch.randperm(49)].reshape(10, -1))  # positions moved: not a symmetry
        assert float((m(X) - y).abs().max()) > 1e-3


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), pool=st.sampled_from([1, 2, 3, 7]))
def test_vgg_invariance_property(seed, pool):
    m = _double(VGGish(c=(3, 4, 5), hidden=6, pool=pool))
    g = from_module(m, X)
    want = None if pool == 1 else (pool * pool, 1)
    assert _repeats(g).get(("classifier.0.weight", "features.4")) == want
    pa = dict(m.state_dict())
    with torch.no_grad():
        y = m(X)
        m.load_state_dict(sy.apply(g, pa, sy.random_transforms(g, seed=seed)))
        assert float((m(X) - y).abs().max()) < 1e-10 * (1 + float(y.abs().max()))


def test_lenet_functional_linear_and_matmul_read_the_repeat():
    m = _double(LeNet())
    x = torch.randn(3, 1, 14, 14, dtype=torch.float64)
    g = from_module(m, x)
    assert _repeats(g) == {("fc1.weight", "c2"): (9, 1)}
    report = check_invariance(m, g, x, examples=3)
    assert report.passed, [str(c) for c in report.failures]
    b = _double(LeNet())
    torch.manual_seed(5)
    for p in b.parameters():
        p.data.normal_()
    pb = dict(b.state_dict())
    sol = solvers.solve("weight_matching", g, dict(m.state_dict()), pb, seed=0)
    with torch.no_grad():
        y = b(x)
        b.load_state_dict(sy.apply(g, pb, sol.transforms))
        assert float((b(x) - y).abs().max()) < 1e-12 * (1 + float(y.abs().max()))


def test_channels_last_flatten_is_a_block_repeat():
    m = _double(ChannelsLast())
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    g = from_module(m, x)
    assert _repeats(g) == {("fc.weight", "conv"): (9, 4)}
    report = check_invariance(m, g, x, examples=3)
    assert report.passed, [str(c) for c in report.failures]


@pytest.mark.parametrize("variant,node", [("bias", "add"), ("slice", "getitem"), ("reshape", "view")])
def test_other_uses_of_flattened_features_are_refused_naming_the_node(variant, node):
    m = _double(ChannelsLast(variant))
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    with pytest.raises(ExtractionError) as info:
        from_module(m, x)
    assert info.value.node and info.value.node.startswith(node), (info.value.node, str(info.value))
    g = from_module(m, x, unknown="fixed")  # the conv's space keeps no symmetry; still exact
    assert "conv" not in {s.name for s in g.spaces()}
    report = check_invariance(m, g, x, examples=2)
    assert report.passed, [str(c) for c in report.failures]


class TwoBranch(nn.Module):
    """Two convs concatenated along the channels, then flattened: each branch's span is repeated."""

    def __init__(self, last=False):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(2, 3, 3), nn.Conv2d(2, 5, 3), nn.Linear(8 * 4, 2)
        self.last = last

    def forward(self, x):
        h = torch.relu(torch.cat((self.a(x), self.b(x)), dim=1))
        return self.fc(h.permute(0, 2, 3, 1).flatten(1) if self.last else h.flatten(1))


def test_concatenated_channels_flatten_into_repeated_slices():
    m = _double(TwoBranch())
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    g = from_module(m, x)
    edges = {e.space: (e.slice, e.repeat) for s in g.spaces() for e in g.edges_at(s.name) if e.parameter == "fc.weight"}
    assert edges == {"a": ((0, 12), (4, 1)), "b": ((12, 32), (4, 1))}
    report = check_invariance(m, g, x, examples=3)
    assert report.passed, [str(c) for c in report.failures]
    with pytest.raises(ExtractionError) as info:  # channels-last: each branch's copies are not one slice
        from_module(_double(TwoBranch(last=True)), x)
    assert info.value.node == "flatten"


def test_flattened_features_reaching_the_output_keep_no_symmetry():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)

        def forward(self, x):
            return torch.relu(self.conv(x)).flatten(1)

    g = from_module(Head().double(), torch.randn(2, 2, 5, 5, dtype=torch.float64))
    assert not g.spaces()


def test_fixture_models_are_not_modified():
    m = _double(VGGish())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    architectures.from_module(m, X)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("model,x,want", [
    (lambda: VGGish(c=(3, 4, 5), how="view"), X, {("classifier.0.weight", "features.4"): (49, 1)}),
    (ChannelsLast, torch.randn(3, 2, 5, 5, dtype=torch.float64), {("fc.weight", "conv"): (9, 4)}),
])
def test_the_aten_graph_of_torch_export_reads_the_same_repeats(model, x, want):
    """``from_hf`` records any module with ``torch.export``: ``aten.view``/``linear``/pooling."""
    m = _double(model())
    g = architectures.from_hf(m, x)
    assert architectures.graphs_equivalent(g, from_module(m, x)) and _repeats(g) == want
    report = check_invariance(m, g, x, examples=2)
    assert report.passed, [str(c) for c in report.failures]
    with pytest.raises(ExtractionError) as info:
        architectures.from_hf(_double(ChannelsLast("bias")), torch.randn(3, 2, 5, 5, dtype=torch.float64))
    assert info.value.node == "add"


def test_a_weight_normed_linear_after_the_flatten_keeps_the_repeat_on_its_source():
    m = VGGish(c=(3, 4, 5), pool=3)
    m.classifier[0] = nn.utils.parametrizations.weight_norm(m.classifier[0])
    m = _double(m)
    g = from_module(m, X)
    assert _repeats(g) == {("classifier.0.parametrizations.weight.original1", "features.4"): (9, 1)}
    assert g.space("features.4").classes == (sy.Permutation(),)
    report = check_invariance(m, g, X, examples=3)
    assert report.passed, [str(c) for c in report.failures]
