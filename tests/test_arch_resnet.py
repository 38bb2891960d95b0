"""CIFAR ResNet builder: permutations of every stream and block space leave the function
unchanged (eval mode, float64 and float32); a residual stream split into two spaces, scaling
across BatchNorm and mixing maps change it; the graph ties every tensor that adds into a stream."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from arch_checks import (admitted_classes, assert_params_close, assert_same, max_cond, outputs, randomize,
                         relative_change, split_space)
from symmetries.testing.strategies import seeds


def _image(seed, batch=2, side=8, channels=3):
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@st.composite
def resnets(draw):
    channels = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    return architectures.resnet(draw(st.sampled_from([8, 14])), width=1, num_classes=draw(st.integers(1, 3)),
                                channels=channels)


@settings(max_examples=150)
@given(resnets(), st.data(), st.sampled_from([torch.float64, torch.float32]), seeds)
def test_admitted_classes_leave_the_function_unchanged(arch, data, dtype, seed):
    g = arch.graph
    classes = admitted_classes(data, g)
    T = sy.random_transforms(g, seed, classes=classes)
    params = randomize(arch, seed, dtype)
    new = sy.apply(g, params, T)
    x = _image(seed)
    assert_same(outputs(arch, params, x, dtype=dtype), outputs(arch, new, x, dtype=dtype), dtype, max_cond(T, g))
    assert_params_close(sy.apply(g, new, T.inverse()), params, dtype)


@settings(max_examples=10)
@given(seeds)
def test_permutations_are_exact_in_training_mode(seed):
    arch = architectures.resnet(8, channels=(3, 4, 2))
    T = sy.random_transforms(arch.graph, seed)
    params = randomize(arch, seed)
    x = _image(seed, batch=4)
    assert_same(outputs(arch, params, x, train=True), outputs(arch, sy.apply(arch.graph, params, T), x, train=True),
                torch.float64)


def test_composition_acts_as_successive_application():
    arch = architectures.resnet(14, channels=(3, 4, 5))
    g = arch.graph
    a, b = sy.random_transforms(g, 1), sy.random_transforms(g, 2)
    params = randomize(arch, 0)
    assert_params_close(sy.apply(g, params, a @ b), sy.apply(g, sy.apply(g, params, b), a), torch.float64)


# -- what breaks a ResNet ------------------------------------------------------------------------------
SPLITS = [
    ("stream.0", ["layer1.0.conv2.weight", "layer1.0.bn2.weight", "layer1.0.bn2.bias", "layer1.0.bn2.running_mean",
                  "layer1.0.bn2.running_var"]),  # a block's writer untied from the stem's
    ("stream.1", ["layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.weight", "layer2.0.shortcut.1.bias",
                  "layer2.0.shortcut.1.running_mean", "layer2.0.shortcut.1.running_var"]),  # the shortcut's
    ("stream.1", ["layer3.0.conv1.weight"]),  # a reader untied from the stream
]


@pytest.mark.parametrize("space,moved", SPLITS, ids=lambda v: v if isinstance(v, str) else v[0])
def test_a_residual_stream_split_into_two_spaces_changes_the_function(space, moved):
    arch = architectures.resnet(8, channels=(3, 4, 5))
    wrong = split_space(arch.graph, space, moved)
    T = sy.random_transforms(wrong, 0)
    assert not T[space].allclose(T[space + "'"])
    params = randomize(arch, 0)
    x = _image(0, batch=4)
    assert relative_change(outputs(arch, params, x), outputs(arch, sy.apply(wrong, params, T), x)) > 1e-3
    # the same draw with the two halves tied is exact
    tied = sy.TransformSet({k: v for k, v in T.items() if k != space + "'"})
    assert_same(outputs(arch, params, x), outputs(arch, sy.apply(arch.graph, params, tied), x), torch.float64)


@pytest.mark.parametrize("cls", [sy.PositiveScaling(), sy.PermutationScaling()], ids=repr)
@pytest.mark.parametrize("space", ["stream.1", "layer2.0.inner"])
def test_scaling_across_batchnorm_changes_the_function(cls, space):
    arch = architectures.resnet(8, channels=(3, 4, 5))
    assert not arch.graph.admits(space, cls)
    T = sy.random_transforms(arch.graph, 0, classes={space: cls}, strict=False)
    params = randomize(arch, 0, var_range=(1e-6, 1e-5))  # running variances near ε: ε matters
    x = _image(0, batch=4)
    assert relative_change(outputs(arch, params, x), outputs(arch, sy.apply(arch.graph, params, T, check=False), x)) > 1e-3
    # with ε = 0 the same scaling is exact: ε is what rules it out
    assert_same(outputs(arch, params, x, bn_eps=0.0), outputs(arch, sy.apply(arch.graph, params, T, check=False), x, bn_eps=0.0),
                torch.float64, 1e4)


def test_sign_flips_change_the_function():
    arch = architectures.resnet(8, channels=(3, 4, 5))
    T = sy.random_transforms(arch.graph, 0, classes={"layer1.0.inner": sy.SignFlip()}, strict=False)
    params = randomize(arch, 0)
    x = _image(0, batch=4)
    assert relative_change(outputs(arch, params, x), outputs(arch, sy.apply(arch.graph, params, T, check=False), x)) > 1e-3


# -- structure -----------------------------------------------------------------------------------------
def test_resnet20_structure():
    arch = architectures.resnet(20)
    g = arch.graph
    m = arch.module(seed=0)
    assert set(m.state_dict()) == {p.name for p in g.parameters()}
    assert sum(p.numel() for p in m.parameters()) == 272_474  # the published ResNet-20 (0.27M)
    spaces = [s.name for s in g.spaces()]
    assert [s for s in spaces if s.startswith("stream")] == ["stream.0", "stream.1", "stream.2"]
    assert len([s for s in spaces if s.endswith(".inner")]) == 9
    assert all(s.classes == (sy.Permutation(),) for s in g.spaces())
    writers = {e.parameter for e in g.edges_at("stream.1") if e.role.value == "out" and e.parameter.endswith("weight")}
    assert writers == {"layer2.0.conv2.weight", "layer2.1.conv2.weight", "layer2.2.conv2.weight",
                       "layer2.0.shortcut.0.weight", "layer2.0.bn2.weight", "layer2.1.bn2.weight",
                       "layer2.2.bn2.weight", "layer2.0.shortcut.1.weight"}
    readers = {(e.parameter, e.axis) for e in g.edges_at("stream.1") if e.role.value == "in"}
    assert readers == {("layer2.1.conv1.weight", 1), ("layer2.2.conv1.weight", 1), ("layer3.0.conv1.weight", 1),
                       ("layer3.0.shortcut.0.weight", 1)}
    assert {(e.parameter, e.axis) for e in g.edges_at("stream.2") if e.role.value == "in"} >= {("linear.weight", 1)}
    assert "layer1.0.shortcut.0.weight" not in g and g.parameter("linear.bias").fixed
    assert m.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_multiplier_and_bad_depths():
    arch = architectures.resnet(8, width=2, channels=(2, 3, 4), num_classes=5)
    assert arch.config["widths"] == [4, 6, 8]
    assert [arch.graph.space(f"stream.{s}").size for s in range(3)] == [4, 6, 8]
    assert arch.graph.parameter("linear.weight").shape == (5, 8)
    for depth in (7, 9, 2):
        with pytest.raises(ValueError, match="6n \\+ 2"):
            architectures.resnet(depth)
