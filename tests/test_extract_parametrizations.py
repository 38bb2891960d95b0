"""from_module never skips a tensor the traced computation reads (issue #13, "silent wrong graphs"):
weight norm, spectral norm, pruning (their weight is computed from other state-dict tensors), one
parameter sliced into several biases, and rules that leave a tensor undescribed. Each construct
either extracts to a graph whose every admitted class keeps the output to float64 round-off, or
its spaces keep no symmetry, or extraction raises an ExtractionError naming the node."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, prune

import architectures
from architectures.extract import Feat
import symmetries as sy
from symmetries.testing import check_invariance

X = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
XC = torch.randn(3, 4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _seeded(seed: int = 0):
    torch.manual_seed(seed)


def _linear(wrap, seed=0):
    """``wrap(Linear(4, 8))`` → ReLU → Linear(8, 3), in float64 (wrapped after the cast)."""
    _seeded(seed)
    return nn.Sequential(wrap(nn.Linear(4, 8).double()), nn.ReLU(), nn.Linear(8, 3).double()).eval()


class _ConvNet(nn.Module):
    def __init__(self, wrap, seed=0):
        super().__init__()
        _seeded(seed)
        self.c1 = wrap(nn.Conv1d(4, 6, 3).double())
        self.c2 = wrap(nn.Conv1d(6, 5, 3).double())
        self.fc = nn.Linear(5, 2).double()

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(-1))


def _pruned(m):
    prune.l1_unstructured(m, "weight", amount=0.4)
    return m


def _legacy_weight_norm(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(m)


def _legacy_spectral_norm(m):
    return nn.utils.spectral_norm(m)


class SlicedBias(nn.Module):
    """One parameter sliced into the biases of two layers (``overlap``: ``bias[:8]`` and ``bias[4:]``)."""

    def __init__(self, overlap: bool = False, seed: int = 0):
        super().__init__()
        _seeded(seed)
        self.a, self.c = nn.Linear(4, 8, bias=False), nn.Linear(8, 8, bias=False)
        self.out = nn.Linear(8, 3)
        self.bias = nn.Parameter(torch.randn(12 if overlap else 16))
        self.overlap = overlap

    def forward(self, x):
        h = torch.relu(self.a(x) + self.bias[:8])
        return self.out(torch.relu(self.c(h) + (self.bias[4:] if self.overlap else self.bias[8:])))


WRAPS = {
    "weight_norm": parametrizations.weight_norm,
    "spectral_norm": parametrizations.spectral_norm,
    "prune": _pruned,
    "legacy_weight_norm": _legacy_weight_norm,
    "legacy_spectral_norm": _legacy_spectral_norm,
}
#: what the wrapped Linear's hidden space (after ReLU) admits
LINEAR_CLASSES = {
    "weight_norm": (sy.PermutationScaling(),), "legacy_weight_norm": (sy.PermutationScaling(),),
    "spectral_norm": (sy.Permutation(),), "legacy_spectral_norm": (sy.Permutation(),), "prune": (sy.Permutation(),),
}


def _output_change(model, g, x, T) -> float:
    params = model.state_dict()
    moved = type(model)() if not isinstance(model, nn.Sequential) else None
    with torch.no_grad():
        y = model(x)
        before = {k: v.clone() for k, v in params.items()}
        model.load_state_dict(sy.apply(g, params, T, check=False))
        y2 = model(x)
        model.load_state_dict(before)
    del moved
    return float((y - y2).abs().max() / y.abs().max())


def _assert_exact(model, g, x):
    """Every admitted class of every space keeps the output (float64, several random draws)."""
    report = check_invariance(model, g, x, examples=4, seed=3)
    assert report.passed, report


# -- weight norm, spectral norm, pruning ---------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(WRAPS))
def test_derived_weights_of_a_linear_layer_are_carried_to_their_sources(kind):
    model = _linear(WRAPS[kind])
    g = architectures.from_module(model, X)
    (space,) = g.spaces()
    assert space.classes == LINEAR_CLASSES[kind]
    covered = {e.parameter for e in g.edges() if e.space == space.name}
    sources = {k for k in model.state_dict() if k.startswith("0.") and k != "0.bias" and not k.endswith("_v")
               or k.endswith("weight_v") and "weight_norm" in kind}
    assert sources <= covered  # g and v, orig and u, orig and mask follow the units (spectral v: the input's)
    _assert_exact(model, g, X)


@pytest.mark.parametrize("kind", sorted(WRAPS))
def test_derived_weights_of_convolutions(kind):
    """Conv1d: weight norm keeps positive scalings where a kernel produces the space and orthogonal
    maps where it consumes it (‖v‖ per output channel); spectral norm's v mixes the input channels
    with kernel positions, so a space a spectral-normed kernel consumes keeps no symmetry."""
    model = _ConvNet(WRAPS[kind])
    g = architectures.from_module(model, XC)
    classes = {s.name: s.classes for s in g.spaces()}
    if kind in ("spectral_norm", "legacy_spectral_norm"):
        assert classes == {"c2": (sy.Permutation(),)}
    elif kind == "prune":
        assert classes == {"c1": (sy.Permutation(),), "c2": (sy.Permutation(),)}
    else:  # c1 is produced by a weight-normed kernel and consumed by another: positive scalings ∧ orthogonal
        assert classes == {"c1": (sy.Permutation(),), "c2": (sy.PermutationScaling(),)}
    _assert_exact(model, g, XC)


@pytest.mark.parametrize("kind,cls", [("weight_norm", sy.SignedPermutation()), ("prune", sy.PermutationScaling()),
                                      ("legacy_weight_norm", sy.SignedPermutation())])
def test_the_classes_left_out_are_not_exact(kind, cls):
    """What the carry-over refuses does change the function: signs through g·v/‖v‖ (tanh would
    admit them), scalings through a mask (ReLU would admit them). (Spectral norm is claimed for
    orthogonal maps only by choice: a scaling with u ← S⁻¹u keeps uᵀWv in eval mode, but leaves u, v
    no longer singular vectors, so the power iteration of training mode would change σ.)"""
    model = nn.Sequential(*list(_linear(WRAPS[kind]))[:1], nn.Tanh() if cls == sy.SignedPermutation() else nn.ReLU(),
                          nn.Linear(8, 3).double()).eval()
    g = architectures.from_module(model, X)
    (space,) = g.spaces()
    assert not g.admits(space.name, cls)
    T = sy.random_transforms(g, 0, classes={space.name: cls}, strict=False)
    assert _output_change(model, g, X, T) > 1e-6


def test_weight_norm_whole_tensor_admits_orthogonal_maps_only():
    """``dim=None``: one norm over the whole tensor, kept by orthogonal maps on either side."""
    _seeded(0)
    model = nn.Sequential(nn.Linear(4, 8).double(), nn.Tanh(),
                          parametrizations.weight_norm(nn.Linear(8, 8).double(), dim=None), nn.Tanh(),
                          nn.Linear(8, 3).double()).eval()
    g = architectures.from_module(model, X)
    assert [s.classes for s in g.spaces()] == [(sy.SignedPermutation(),), (sy.SignedPermutation(),)]
    _assert_exact(model, g, X)


def test_an_unknown_parametrization_leaves_no_symmetry():
    _seeded(0)
    model = _linear(lambda m: parametrizations.orthogonal(m))
    g = architectures.from_module(model, X)
    assert g.spaces() == [] and all(p.fixed for p in g.parameters())


def test_a_tensor_attribute_outside_the_state_dict_leaves_no_symmetry():
    """A rule naming ``weight`` that is a plain attribute (not saved, so never transformed)."""
    model = _linear(lambda m: m)
    w = model[0].weight.detach().clone()
    del model[0].weight
    model[0].weight = w
    g = architectures.from_module(model, X)
    assert g.spaces() == []


# -- slices of one parameter ---------------------------------------------------------------------------
def test_a_parameter_sliced_into_two_biases_follows_both_spaces():
    model = SlicedBias().double().eval()
    g = architectures.from_module(model, X)
    assert {s.name: s.classes for s in g.spaces()} == {
        "a": (sy.PermutationScaling(), sy.SemiPermutation()), "c": (sy.PermutationScaling(), sy.SemiPermutation())}
    assert {(e.space, e.slice) for e in g.edges() if e.parameter == "bias"} == {("a", (0, 8)), ("c", (8, 16))}
    _assert_exact(model, g, X)


def test_overlapping_slices_of_one_parameter_leave_no_symmetry():
    model = SlicedBias(overlap=True).double().eval()
    g = architectures.from_module(model, X)
    assert g.spaces() == [] and g.parameter("bias").fixed


def test_a_slice_of_a_parameter_read_only_in_part():
    """``bias[2:10]`` added to a space of 8 units: the slice follows the space, the rest is untouched."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out, self.bias = nn.Linear(4, 8, bias=False), nn.Linear(8, 3), nn.Parameter(torch.randn(12))

        def forward(self, x):
            return self.out(torch.relu(self.a(x) + self.bias[2:10]))

    model = Net().double().eval()
    g = architectures.from_module(model, X)
    assert {(e.space, e.slice) for e in g.edges() if e.parameter == "bias"} == {("a", (2, 10))}
    _assert_exact(model, g, X)


def test_functional_bias_from_a_row_of_a_matrix_is_refused():
    """``F.linear(x, W, M[0])``: the bias is axis 1 of M, not axis 0; not a plain bias."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.m = nn.Parameter(torch.randn(8, 8)), nn.Parameter(torch.randn(4, 8))
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            return self.out(torch.relu(F.linear(torch.tanh(x @ self.m), self.w, self.m[0])))

    model = Net().double().eval()
    with pytest.raises(architectures.ExtractionError) as err:
        architectures.from_module(model, X)
    assert err.value.node == "linear"
    g = architectures.from_module(model, X, unknown="fixed")
    _assert_exact(model, g, X)


# -- a rule that does not describe a tensor it reads ---------------------------------------------------
class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight, self.gate = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.randn(8))

    def forward(self, x):
        return F.linear(x, self.weight) * self.gate


def test_a_rule_that_skips_a_tensor_is_refused_or_fixed():
    """A user rule that connects ``weight`` but forgets ``gate``: the node is refused (naming it);
    with unknown='fixed' the spaces it meets keep no symmetry — never a claimed one."""
    def rule(ctx, node, mod, x):
        out = ctx.shape(node)
        v = ctx.state.new(out[-1], node.target)
        ctx.follow(x, [(ctx.param(node.target, "weight"), "in")], 1)
        ctx.state.connect(v, ctx.param(node.target, "weight"), 0, "out")
        return Feat(out, len(out) - 1, ((v, out[-1]),))

    architectures.register_rule(Gated, rule)
    try:
        _seeded(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Gated(), nn.ReLU(), nn.Linear(8, 3)).double().eval()
        with pytest.raises(architectures.ExtractionError, match="gate") as err:
            architectures.from_module(model, X)
        assert err.value.node == "_2"
        g = architectures.from_module(model, X, unknown="fixed")
        assert g.spaces() == []
        _assert_exact(model, g, X)
    finally:
        architectures.unregister_rule(Gated)


# -- a tensor axis that also reads features of no space ------------------------------------------------
def test_a_layer_applied_to_the_input_and_again_keeps_no_symmetry_there():
    """``L(L(x))``: L's input axis reads the model's input (which no transform reaches) and also
    the hidden space; transforming that axis for the second call would change the first."""
    _seeded(0)
    lin = nn.Linear(3, 3).double()
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(3, 2).double()).eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    g = architectures.from_module(model, x)
    assert g.spaces() == []  # both calls' outputs are one space (axis 0 of L), whose axis 1 reads the input
    _assert_exact(model, g, x)
