"""MLP builder: the network's function is unchanged by every admitted class, and changed by the
classes it does not admit (the check can fail)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from arch_checks import admitted_classes, max_cond
from conftest import RTOL
from symmetries.testing.strategies import mlp_architectures, seeds


def _outputs(arch, params, x, dtype):
    m = arch.module(dtype=dtype)
    m.load_state_dict(params)
    with torch.no_grad():
        return m(x.to(dtype))


def _assert_same_function(arch, params, new_arch, new_params, dtype, cond=1.0, seed=0):
    x = torch.randn(7, arch.config["widths"][0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y, y2 = _outputs(arch, params, x, dtype), _outputs(new_arch, new_params, x, dtype)
    tol = RTOL[dtype] * cond * max(1.0, float(y.abs().max()))
    err = float((y - y2).abs().max())
    assert err <= tol, f"output changed by {err:.3e} (tolerance {tol:.3e})"


@settings(max_examples=300)
@given(mlp_architectures(), st.data(), st.sampled_from([torch.float64, torch.float32]), seeds)
def test_admitted_classes_leave_the_function_unchanged(arch, data, dtype, seed):
    g = arch.graph
    classes = admitted_classes(data, g)
    T = sy.random_transforms(g, seed, classes=classes)
    params = arch.module(seed=seed, dtype=dtype).state_dict()
    new = sy.apply(g, params, T)
    _assert_same_function(arch, params, arch, new, dtype, max_cond(T, g), seed)
    # the inverse brings the parameters back
    back = sy.apply(g, new, T.inverse())
    for k in params:
        torch.testing.assert_close(back[k], params[k], rtol=RTOL[dtype] * max_cond(T, g) * 10,
                                   atol=RTOL[dtype] * max_cond(T, g) * 10)


@settings(max_examples=100)
@given(mlp_architectures(activations=["relu", "leaky_relu", "abs", "identity"]), st.data(), seeds)
def test_semi_permutations_widen_without_changing_the_function(arch, data, seed):
    """A narrow model split into a wider one computes the same function; merging brings it back."""
    g = arch.graph
    sizes = {s.name: s.size + data.draw(st.integers(0, 4), label=s.name) for s in g.spaces()}
    T = sy.random_transforms(g, seed, classes=sy.SemiPermutation(), sizes=sizes)
    widths = list(arch.config["widths"])
    for i in range(1, len(widths) - 1):
        widths[i] = sizes[f"hidden.{i - 1}"]
    wide = architectures.mlp(widths, activation=arch.config["activation"], bias=arch.config["bias"])
    params = arch.module(seed=seed, dtype=torch.float64).state_dict()
    split = sy.apply(g, params, T)
    wide.graph.validate(split)
    _assert_same_function(arch, params, wide, split, torch.float64, seed=seed)
    merged = sy.apply(wide.graph, split, T.inverse())
    for k in params:
        torch.testing.assert_close(merged[k], params[k], rtol=1e-12, atol=1e-12)


@settings(max_examples=50)
@given(st.lists(st.integers(1, 6), min_size=3, max_size=5), st.data(), seeds)
def test_linear_networks_admit_rectangular_invertible_maps(widths, data, seed):
    arch = architectures.mlp(widths, activation="identity")
    sizes = {s.name: s.size + data.draw(st.integers(0, 3), label=s.name) for s in arch.graph.spaces()}
    cls = data.draw(st.sampled_from([sy.Orthogonal(), sy.Invertible()]))
    T = sy.random_transforms(arch.graph, seed, classes=cls, sizes=sizes)
    wide = architectures.mlp([widths[0], *[sizes[f"hidden.{i}"] for i in range(len(widths) - 2)], widths[-1]],
                             activation="identity")
    params = arch.module(seed=seed, dtype=torch.float64).state_dict()
    _assert_same_function(arch, params, wide, sy.apply(arch.graph, params, T), torch.float64, max_cond(T, arch.graph), seed)


# -- the check can fail: classes a space does not admit change the function -------------------------
NOT_ADMITTED = [
    ("relu", sy.Orthogonal()),
    ("relu", sy.SignFlip()),
    ("gelu", sy.PositiveScaling()),
    ("gelu", sy.SignFlip()),
    ("silu", sy.Orthogonal()),
    ("tanh", sy.PositiveScaling()),
    ("tanh", sy.Orthogonal()),
    ("sigmoid", sy.SignFlip()),
    ("sin", sy.PositiveScaling()),
]


@pytest.mark.parametrize("activation,cls", NOT_ADMITTED, ids=lambda v: str(v))
def test_classes_not_admitted_change_the_function(activation, cls):
    arch = architectures.mlp([6, 8, 8, 3], activation=activation)
    assert not any(arch.graph.admits(s.name, cls) for s in arch.graph.spaces())
    with pytest.raises(sy.errors.NotAdmittedError, match=f"activation: {activation}"):
        sy.random_transforms(arch.graph, 0, classes=cls)
    T = sy.random_transforms(arch.graph, 0, classes=cls, strict=False)
    params = arch.module(seed=0, dtype=torch.float64).state_dict()
    x = torch.randn(32, 6, dtype=torch.float64)
    y = _outputs(arch, params, x, torch.float64)
    y2 = _outputs(arch, sy.apply(arch.graph, params, T, check=False), x, torch.float64)
    assert float((y - y2).abs().max()) > 1e-3 * float(y.abs().max())


@pytest.mark.parametrize("activation", ["tanh", "gelu", "sigmoid"])
def test_semi_permutation_breaks_non_decomposable_activations(activation):
    arch = architectures.mlp([4, 5, 3], activation=activation)
    assert not arch.graph.admits("hidden.0", sy.SemiPermutation())
    T = sy.random_transforms(arch.graph, 1, classes=sy.SemiPermutation(), sizes={"hidden.0": 9}, strict=False)
    params = arch.module(seed=0, dtype=torch.float64).state_dict()
    wide = architectures.mlp([4, 9, 3], activation=activation)
    x = torch.randn(16, 4, dtype=torch.float64)
    diff = _outputs(arch, params, x, torch.float64) - _outputs(wide, sy.apply(arch.graph, params, T, check=False), x, torch.float64)
    assert float(diff.abs().max()) > 1e-4


def test_builder_declares_largest_classes_and_matching_names():
    cases = {"relu": (sy.PermutationScaling(), sy.SemiPermutation()), "tanh": (sy.SignedPermutation(),),
             "gelu": (sy.Permutation(),), "silu": (sy.Permutation(),), "identity": (sy.Invertible(),)}
    for act, classes in cases.items():
        arch = architectures.mlp([3, 4, 5, 2], activation=act)
        assert [s.classes for s in arch.graph.spaces()] == [classes, classes]
        assert set(arch.module().state_dict()) == {p.name for p in arch.graph.parameters()}
    nobias = architectures.mlp([3, 4, 2], bias=False)
    assert set(nobias.module().state_dict()) == {"layers.0.weight", "layers.1.weight"}
    single = architectures.mlp([3, 2])
    assert single.graph.spaces() == [] and all(p.fixed for p in single.graph.parameters())
    with pytest.raises(ValueError, match="at least two positive sizes"):
        architectures.mlp([3])
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        architectures.mlp([3, 2, 1], activation="swish2")


def test_module_seed_is_reproducible_and_leaves_global_rng_alone():
    arch = architectures.mlp([3, 4, 2])
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = arch.module(seed=5), arch.module(seed=5)
    assert torch.equal(torch.rand(1), expected)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
