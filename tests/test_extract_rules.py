"""Extraction rules added through the public registry (architectures.register_rule): a
LocalResponseNorm rule and a custom function, using only public names. Without a rule extraction
refuses (naming the fx node) or fixes the region; with it, random transforms of every admitted
class keep the output."""
from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from symmetries.testing import check_invariance


def lrn_rule(ctx, node, mod, x):
    """LocalResponseNorm: y_c = x_c / (k + α/n Σ_{c' near c} x_c'²)^β. The squares see no sign, so
    flipping the sign of a channel flips its output; a permutation breaks the channel windows."""
    return ctx.per_feature(node, x, [], (sy.SignFlip(),), what="local response normalisation", dim=1)


class LRNNet(nn.Module):
    def __init__(self, size: int = 3, channels: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(2, channels, 3, padding=1)
        self.norm = nn.LocalResponseNorm(size, alpha=0.5, k=1.0)
        self.conv2 = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.tanh(self.norm(self.conv1(x)))).mean(dim=(2, 3))


def soft_clip(x):
    """A user's elementwise odd function: x / (1 + |x|)."""
    return x / (1 + x.abs())


class SoftClipNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(soft_clip(self.a(x)))


@contextlib.contextmanager
def local_response_norm():
    architectures.register_rule(nn.LocalResponseNorm, lrn_rule)
    try:
        yield
    finally:
        architectures.unregister_rule(nn.LocalResponseNorm)


def _inputs(seed=0):
    return torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_without_a_rule_local_response_norm_is_refused_or_fixed():
    model = LRNNet().double()
    with pytest.raises(architectures.ExtractionError) as err:
        architectures.from_module(model, _inputs())
    assert err.value.node == "norm"
    g = architectures.from_module(model, _inputs(), unknown="fixed")
    assert g.spaces() == [] or all(s.name != "conv1" for s in g.spaces())


@settings(max_examples=10, deadline=None)
@given(size=st.sampled_from([1, 2, 3, 5]), seed=st.integers(0, 2**16))
def test_registered_rule_gives_exact_symmetries(size, seed):
    model = LRNNet(size).double()
    with local_response_norm():
        g = architectures.from_module(model, _inputs())
    assert g.space("conv1").classes == (sy.SignFlip(),)
    report = check_invariance(model, g, _inputs(seed), examples=3, seed=seed, dtype=torch.float64)
    assert report.passed, report


def test_a_plain_permutation_across_channel_windows_changes_the_output():
    """The rule's class is the right one: a permutation of the channels is not exact."""
    model = LRNNet().double()
    with local_response_norm():
        g = architectures.from_module(model, _inputs())
    wrong = g.with_classes({"conv1": sy.Permutation()})
    assert not check_invariance(model, wrong, _inputs(), examples=5, widen=0, dtype=torch.float64).passed


def test_a_rule_for_a_custom_function_is_kept_whole_while_tracing():
    traced = architectures.from_module(SoftClipNet(), torch.randn(3, 4))  # traced through: abs, a quotient
    assert traced.space("a").classes == (sy.Permutation(),)
    architectures.register_rule(soft_clip, lambda ctx, node, x: ctx.elementwise(node, x, "soft_clip",
                                                                                 (sy.SignedPermutation(),)))
    try:
        model = SoftClipNet().double()
        g = architectures.from_module(model, torch.randn(3, 4, dtype=torch.float64))
        assert g.space("a").classes == (sy.SignedPermutation(),) and g.space("a").activation == "soft_clip"
        assert check_invariance(model, g, torch.randn(5, 4, dtype=torch.float64), examples=3).passed
    finally:
        architectures.unregister_rule(soft_clip)


def test_decorator_form_registers_and_returns_the_rule():
    @architectures.register_rule(nn.LocalResponseNorm)
    def rule(ctx, node, mod, x):
        return lrn_rule(ctx, node, mod, x)
    try:
        assert architectures.unregister_rule(nn.LocalResponseNorm) is rule
    finally:
        with pytest.raises(architectures.RuleError):
            architectures.unregister_rule(nn.LocalResponseNorm)


@pytest.mark.parametrize("target, rule, says", [
    (int, lrn_rule, "nn.Module subclass"),
    (3, lrn_rule, "got int"),
    ("not a name", lrn_rule, "method name"),
    (nn.LocalResponseNorm, "not callable", "must be callable"),
    (torch.tanh, architectures.extract.rules.TRACE, "module types only"),
    (nn.Linear, lrn_rule, "already has an extraction rule"),
    ("relu", lrn_rule, "already has an extraction rule"),
    (torch.tanh, lrn_rule, "already has an extraction rule"),
])
def test_bad_registrations_are_typed_errors_naming_the_target(target, rule, says):
    with pytest.raises(architectures.RuleError, match=says) as err:
        architectures.register_rule(target, rule)
    assert isinstance(err.value, sy.errors.SymmetryError) and err.value.target == target


def test_replacing_a_builtin_rule_and_putting_it_back():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    before = architectures.from_module(model, torch.randn(2, 3))
    builtin = architectures.unregister_rule(nn.Tanh)
    try:
        with pytest.raises(architectures.ExtractionError) as err:  # no rule: refused, naming the node
            architectures.from_module(model, torch.randn(2, 3))
        assert err.value.node == "_1"
        architectures.register_rule(nn.Tanh, lambda ctx, node, mod, x: ctx.opaque(node, "refused by test"))
        with pytest.raises(architectures.ExtractionError, match="refused by test"):
            architectures.from_module(model, torch.randn(2, 3))
    finally:
        architectures.register_rule(nn.Tanh, builtin, replace=True)
    assert architectures.graphs_equivalent(before, architectures.from_module(model, torch.randn(2, 3)))


def test_a_rule_by_qualified_name_waits_for_its_module(monkeypatch):
    """``register_rule("pkg.mod.Name", rule)``: nothing is imported; once the model's code imported
    ``pkg.mod``, extraction registers the rule for the object the name holds."""
    import sys
    import types

    mod = types.ModuleType("fakepkg_rules.layers")
    exec("from torch import nn\n"
         "class Scale(nn.Module):\n"
         "    def forward(self, x):\n"
         "        return x * 2.0 if x.shape[-1] > 100 else x.cumsum(-1)\n", mod.__dict__)
    rule = architectures.register_rule("fakepkg_rules.layers.Scale", lambda ctx, node, m, x: ctx.elementwise(
        node, x, "scale", (sy.PermutationScaling(),)))
    model = nn.Sequential(nn.Linear(3, 4), mod.Scale(), nn.Linear(4, 2))
    try:
        with pytest.raises(architectures.ExtractionError, match="cumsum"):  # not imported yet: traced into
            architectures.from_module(model, torch.randn(2, 3))
        monkeypatch.setitem(sys.modules, "fakepkg_rules", types.ModuleType("fakepkg_rules"))
        monkeypatch.setitem(sys.modules, "fakepkg_rules.layers", mod)
        g = architectures.from_module(model, torch.randn(2, 3))  # now kept whole, with the rule
        assert g.space("0").classes == (sy.PermutationScaling(),) and g.space("0").activation == "scale"
    finally:
        assert architectures.unregister_rule("fakepkg_rules.layers.Scale") is rule  # by name, once resolved


def test_trace_named_for_something_that_is_not_a_module_type_is_refused(monkeypatch):
    import sys
    import types

    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU()), nn.Linear(4, 2))
    assert architectures.TRACE is architectures.extract.rules.TRACE
    mod = types.ModuleType("fakepkg_trace")
    mod.fn = lambda x: x
    monkeypatch.setitem(sys.modules, "fakepkg_trace", mod)
    architectures.register_rule("fakepkg_trace.fn", architectures.TRACE)
    with pytest.raises(architectures.RuleError, match="not a module type"):
        architectures.from_module(model, torch.randn(2, 3))
    assert architectures.from_module(model, torch.randn(2, 3)).space("0").classes[0] == sy.PermutationScaling()
