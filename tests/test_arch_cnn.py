"""VGG/CNN builder: every admitted class leaves the function unchanged (with and without
BatchNorm, eval mode), semi-permutations widen it, and what is not admitted — scaling or
splitting across BatchNorm, sign flips across max pooling, orthogonal maps across ReLU —
changes it. The BatchNorm case is proven both ways: with ε > 0 scaling breaks the function,
with ε = 0 the same transform is exact, so ε is what rules it out."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from arch_checks import (admitted_classes, assert_params_close, assert_same, cond, max_cond, outputs, param_conds,
                         randomize, relative_change)
from symmetries.testing.strategies import seeds

ACTS = ["relu", "leaky_relu", "tanh", "gelu", "identity", "abs"]


def _image(arch, seed, batch=2, side=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, arch.config["in_channels"], side, side, generator=g, dtype=torch.float64)


@st.composite
def vggs(draw, activations=ACTS, batchnorm=None):
    convs = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    cfg = []
    for c in convs:
        cfg.append(c)
        if draw(st.booleans()):
            cfg.append("M")
    bn = draw(st.booleans()) if batchnorm is None else batchnorm
    hidden = draw(st.lists(st.integers(1, 4), max_size=2))
    return architectures.vgg(cfg, in_channels=draw(st.integers(1, 3)), num_classes=draw(st.integers(1, 3)),
                             hidden=hidden, batchnorm=bn, activation=draw(st.sampled_from(activations)),
                             bias=draw(st.booleans()))


@settings(max_examples=300)
@given(vggs(), st.data(), st.sampled_from([torch.float64, torch.float32]), seeds)
def test_admitted_classes_leave_the_function_unchanged(arch, data, dtype, seed):
    g = arch.graph
    classes = admitted_classes(data, g)
    T = sy.random_transforms(g, seed, classes=classes)
    params = randomize(arch, seed, dtype)
    new = sy.apply(g, params, T)
    x = _image(arch, seed)
    cond = max_cond(T, g)
    assert_same(outputs(arch, params, x, dtype=dtype), outputs(arch, new, x, dtype=dtype), dtype, cond)
    assert_params_close(sy.apply(g, new, T.inverse()), params, dtype, param_conds(g, T))


def test_float32_tolerance_stays_meaningful_with_invertible_maps_at_every_space():
    """Round-off grows with the conditions of the (two) spaces one tensor touches, not with the product
    over the network: that product made the float32 tolerance of this draw 1.5 relative (a check that
    could not fail), the per-tensor factor makes it ≈ 1e-3, and a 1% error is caught."""
    arch = architectures.vgg([4, 4, 4, 4], hidden=[4], activation="identity")
    g = arch.graph
    T = sy.random_transforms(g, 0, classes=sy.Invertible())
    chain = [s.name for s in g.spaces()]
    assert chain == ["conv.0", "conv.1", "conv.2", "conv.3", "hidden.0"]
    kappa = {s: cond(T[s]) for s in chain}
    assert max_cond(T, g) == pytest.approx(max(kappa[a] * kappa[b] for a, b in zip(chain, chain[1:])))
    assert max_cond(T, g) <= max_cond(T)  # the bound without the graph: the two largest conditions
    assert math.prod(kappa.values()) > 100 * max_cond(T, g)  # 7.7e3 against 57 for this draw
    params, x = randomize(arch, 0, torch.float32), _image(arch, 0)
    y, moved = outputs(arch, params, x, dtype=torch.float32), sy.apply(g, params, T)
    assert_same(y, outputs(arch, moved, x, dtype=torch.float32), torch.float32, max_cond(T, g))
    wrong = dict(moved, **{"classifier.2.bias": moved["classifier.2.bias"] + 1e-2 * max(1.0, float(y.abs().max()))})
    with pytest.raises(AssertionError, match="output changed"):
        assert_same(y, outputs(arch, wrong, x, dtype=torch.float32), torch.float32, max_cond(T, g))


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("activation", ACTS)
def test_each_maximal_class_at_every_space_that_admits_it(activation, batchnorm):
    arch = architectures.vgg([3, "M", 4, 2], hidden=[3], batchnorm=batchnorm, activation=activation)
    g = arch.graph
    maximal = {c for s in g.spaces() for c in s.classes if c.is_group}
    assert maximal
    params = randomize(arch, 1)
    x = _image(arch, 1)
    y = outputs(arch, params, x)
    for cls in maximal:
        T = sy.random_transforms(g, 2, classes={s.name: cls for s in g.spaces() if g.admits(s.name, cls)})
        assert_same(y, outputs(arch, sy.apply(g, params, T), x), torch.float64, max_cond(T, g))


def _widened(arch, sizes):
    cfg, i = [], 0
    for v in arch.config["cfg"]:
        if v == "M":
            cfg.append(v)
        else:
            cfg.append(sizes.get(f"conv.{i}", v))
            i += 1
    hidden = [sizes.get(f"hidden.{j}", h) for j, h in enumerate(arch.config["hidden"])]
    c = arch.config
    return architectures.vgg(cfg, in_channels=c["in_channels"], num_classes=c["num_classes"], hidden=hidden,
                             batchnorm=c["batchnorm"], activation=c["activation"], bias=c["bias"])


@settings(max_examples=100)
@given(vggs(activations=["relu", "leaky_relu", "abs"]), st.data(), seeds)
def test_semi_permutations_widen_without_changing_the_function(arch, data, seed):
    """Split into a wider VGG built by the same builder; merging gives the parameters back. With
    BatchNorm only the classifier's hidden spaces admit splits; conv spaces get a permutation."""
    g = arch.graph
    semi = [s.name for s in g.spaces() if g.admits(s.name, sy.SemiPermutation())]
    assert all(s.startswith("hidden.") for s in semi) or not arch.config["batchnorm"]
    sizes = {s: g.space(s).size + data.draw(st.integers(0, 3), label=s) for s in semi}
    T = sy.random_transforms(g, seed, classes={s: sy.SemiPermutation() for s in semi}, sizes=sizes)
    wide = _widened(arch, sizes)
    params = randomize(arch, seed)
    split = sy.apply(g, params, T)
    wide.graph.validate(split)
    x = _image(arch, seed)
    assert_same(outputs(arch, params, x), outputs(wide, split, x), torch.float64)
    assert_params_close(sy.apply(wide.graph, split, T.inverse()), params, torch.float64)


# -- BatchNorm: what ε rules out ---------------------------------------------------------------------
BN_BROKEN = [sy.PositiveScaling(), sy.PermutationScaling(), sy.SemiPermutation()]


@pytest.mark.parametrize("cls", BN_BROKEN, ids=repr)
def test_scaling_across_batchnorm_is_exact_only_without_eps(cls):
    """``y' = dγ(dz − dμ)/√(d²v + ε) + dβ`` equals ``d·y`` iff ``ε = 0``: with ε > 0 the
    transform changes the output (small running variances make ε matter), with ε = 0 it does not."""
    arch = architectures.vgg([3, 4], batchnorm=True, activation="relu")
    g = arch.graph
    assert not any(g.admits(s.name, cls) for s in g.spaces())
    with pytest.raises(sy.errors.NotAdmittedError):
        sy.random_transforms(g, 0, classes=cls)
    sizes = {s.name: s.size + 2 for s in g.spaces()} if cls.rectangular else None
    T = sy.random_transforms(g, 0, classes=cls, sizes=sizes, strict=False)
    params = randomize(arch, 0, var_range=(1e-5, 1e-4))
    new = sy.apply(g, params, T, check=False)
    target = _widened(arch, sizes or {})
    x = _image(arch, 0)
    assert relative_change(outputs(arch, params, x), outputs(target, new, x)) > 1e-3
    assert_same(outputs(arch, params, x, bn_eps=0.0), outputs(target, new, x, bn_eps=0.0), torch.float64, 1e4)


def test_sign_flips_across_batchnorm_change_the_function_even_without_eps():
    arch = architectures.vgg([3, 4], batchnorm=True, activation="tanh")
    T = sy.random_transforms(arch.graph, 0, classes=sy.SignFlip(), strict=False)
    params = randomize(arch, 0)
    x = _image(arch, 0)
    for eps in (None, 0.0):
        y, y2 = outputs(arch, params, x, bn_eps=eps), outputs(arch, sy.apply(arch.graph, params, T, check=False), x, bn_eps=eps)
        assert relative_change(y, y2) > 1e-4


@settings(max_examples=20)
@given(st.sampled_from(["relu", "tanh", "gelu"]), seeds)
def test_permutations_are_exact_with_batchnorm_in_training_mode_too(activation, seed):
    arch = architectures.vgg([3, "M", 4], hidden=[3], batchnorm=True, activation=activation)
    T = sy.random_transforms(arch.graph, seed, classes=sy.Permutation())
    params = randomize(arch, seed)
    x = _image(arch, seed, batch=4)
    assert_same(outputs(arch, params, x, train=True), outputs(arch, sy.apply(arch.graph, params, T), x, train=True),
                torch.float64)


# -- other classes that are not admitted ------------------------------------------------------------
NOT_ADMITTED = [
    ("relu", False, [3, 4], sy.Orthogonal()),
    ("relu", False, [3, 4], sy.SignFlip()),
    ("tanh", False, [3, "M", 4, "M"], sy.SignFlip()),       # max pooling is not odd
    ("identity", False, [3, "M", 4, "M"], sy.Invertible()),  # max pooling mixes nothing linearly
    ("gelu", False, [3, 4], sy.PositiveScaling()),
    ("gelu", True, [3, 4], sy.PositiveScaling()),
]


@pytest.mark.parametrize("activation,batchnorm,cfg,cls", NOT_ADMITTED, ids=str)
def test_classes_not_admitted_change_the_function(activation, batchnorm, cfg, cls):
    arch = architectures.vgg(cfg, batchnorm=batchnorm, activation=activation)
    g = arch.graph
    convs = [s.name for s in g.spaces() if s.name.startswith("conv.")]
    assert not any(g.admits(s, cls) for s in convs)
    T = sy.random_transforms(g, 3, classes={s: cls for s in convs}, strict=False)
    params = randomize(arch, 3)
    x = _image(arch, 3, batch=4)
    assert relative_change(outputs(arch, params, x), outputs(arch, sy.apply(g, params, T, check=False), x)) > 1e-3


def test_a_mixing_map_cannot_act_on_running_variances():
    arch = architectures.vgg([3, 4], batchnorm=True)
    T = sy.random_transforms(arch.graph, 0, classes=sy.Orthogonal(), strict=False)
    with pytest.raises(sy.errors.ElementShapeError, match="role 'var' needs a monomial map"):
        sy.apply(arch.graph, randomize(arch, 0), T, check=False)


def test_without_max_pooling_linear_and_odd_activations_admit_more():
    assert architectures.vgg([3, 4], activation="identity").graph.space("conv.0").classes == (sy.Invertible(),)
    assert architectures.vgg([3, 4], activation="tanh").graph.space("conv.0").classes == (sy.SignedPermutation(),)
    pooled = architectures.vgg([3, "M", 4], activation="tanh").graph
    assert pooled.space("conv.0").classes == (sy.Permutation(),)
    assert pooled.space("conv.1").classes == (sy.SignedPermutation(),)


# -- structure ----------------------------------------------------------------------------------------
def test_graph_structure_names_and_roles():
    arch = architectures.vgg([4, "M", 5], hidden=[6], batchnorm=True)
    g = arch.graph
    assert set(arch.module().state_dict()) == {p.name for p in g.parameters()}
    assert [s.name for s in g.spaces()] == ["conv.0", "conv.1", "hidden.0"]
    roles = {(e.parameter, e.axis, e.role.value) for e in g.edges_at("conv.0")}
    assert roles == {("features.0.weight", 0, "out"), ("features.1.weight", 0, "out"), ("features.1.bias", 0, "out"),
                     ("features.1.running_mean", 0, "out"), ("features.1.running_var", 0, "var"),
                     ("features.4.weight", 1, "in")}
    assert {(e.parameter, e.axis, e.role.value) for e in g.edges_at("conv.1")} >= {("classifier.0.weight", 1, "in")}
    assert g.parameter("features.1.num_batches_tracked").fixed and g.parameter("classifier.2.bias").fixed
    assert "features.0.bias" not in g  # bias defaults to `not batchnorm`
    plain = architectures.vgg([4, "M", 5])
    assert "features.0.bias" in plain.graph and plain.graph.space("conv.0").classes == (
        sy.PermutationScaling(), sy.SemiPermutation())


def test_named_configurations_and_width():
    arch = architectures.vgg("vgg11", width=1 / 16, num_classes=4)
    assert arch.config["cfg"][:3] == [4, "M", 8]
    m = arch.module(seed=0)
    arch.graph.validate(m.state_dict())
    assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="unknown VGG configuration 'vgg99'"):
        architectures.vgg("vgg99")
    with pytest.raises(ValueError, match="at least one conv width"):
        architectures.vgg(["M"])
    with pytest.raises(ValueError, match="unknown activation"):
        architectures.vgg([2], activation="nope")


def test_apply_rejects_a_wrong_state_dict():
    arch = architectures.vgg([3, 4], batchnorm=True)
    params = randomize(arch, 0)
    T = sy.random_transforms(arch.graph, 0)
    bad = dict(params)
    bad["features.1.running_var"] = torch.ones(5, dtype=torch.float64)
    with pytest.raises(sy.errors.ShapeMismatchError, match="features.1.running_var"):
        sy.apply(arch.graph, bad, T)
    missing = {k: v for k, v in params.items() if k != "features.1.running_mean"}
    with pytest.raises(sy.errors.MissingParameterError, match="features.1.running_mean"):
        sy.apply(arch.graph, missing, T)


def test_builders_page_examples_run():
    """Every Python block of docs/builders.md runs as written."""
    import re
    from pathlib import Path
    page = (Path(__file__).resolve().parents[1] / "docs" / "builders.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, "docs/builders.md", "exec"), {})
