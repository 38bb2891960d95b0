"""``symmetries.apply`` on whole parameter sets: slices, ties, heads, the var role, numpy input,
transform-set algebra and error paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from architectures import WeightGraph
from symmetries.errors import ElementShapeError, NotAdmittedError, TieError, UnknownSpaceError
from symmetries.testing.strategies import mlp_architectures, seeds, transform_sets


def attention_graph(d=4, heads=2, dh=3, packed=True):
    """One attention layer: scores use W_Qᵀ W_K per head, outputs W_O W_V per head."""
    g = WeightGraph("attention")
    hd = heads * dh
    g.add_space("qk", hd, sy.HeadStructured(heads, sy.Invertible()), head_group="attn")
    g.add_space("vo", hd, sy.HeadStructured(heads, sy.Invertible()), head_group="attn")
    if packed:
        g.add_parameter("qkv.weight", (3 * hd, d)).add_parameter("qkv.bias", (3 * hd,))
        for p in ("qkv.weight", "qkv.bias"):
            g.connect(p, "qk", axis=0, role="out", slice=(0, hd))
            g.connect(p, "qk", axis=0, role="in", slice=(hd, 2 * hd))
            g.connect(p, "vo", axis=0, role="out", slice=(2 * hd, 3 * hd))
    else:
        for name, role, space in (("q", "out", "qk"), ("k", "in", "qk"), ("v", "out", "vo")):
            g.add_parameter(f"{name}.weight", (hd, d)).add_parameter(f"{name}.bias", (hd,))
            g.connect(f"{name}.weight", space, axis=0, role=role).connect(f"{name}.bias", space, axis=0, role=role)
    g.add_parameter("o.weight", (d, hd)).add_parameter("o.bias", (d,), fixed=True)
    g.connect("o.weight", "vo", axis=1, role="in")
    return g


def attention(params, x, heads=2, packed=True):
    if packed:
        q, k, v = (params["qkv.weight"] @ x.T + params["qkv.bias"][:, None]).chunk(3)
    else:
        q, k, v = (params[f"{n}.weight"] @ x.T + params[f"{n}.bias"][:, None] for n in "qkv")
    split = lambda t: t.reshape(heads, -1, t.shape[-1])  # noqa: E731  (heads, dh, tokens)
    q, k, v = split(q), split(k), split(v)
    att = torch.softmax(torch.einsum("hdt,hds->hts", q, k), dim=-1)
    out = torch.einsum("hts,hds->hdt", att, v).reshape(-1, x.shape[0])
    return (params["o.weight"] @ out).T + params["o.bias"]


@settings(max_examples=100)
@given(st.booleans(), seeds)
def test_attention_heads_with_packed_or_separate_qkv(packed, seed):
    g = attention_graph(packed=packed)
    gen = torch.Generator().manual_seed(seed)
    params = {p.name: torch.randn(*p.shape, generator=gen, dtype=torch.float64) for p in g.parameters()}
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    T = sy.random_transforms(g, seed)
    assert T["qk"].head_perm.tolist() == T["vo"].head_perm.tolist()
    y, y2 = attention(params, x, packed=packed), attention(sy.apply(g, params, T), x, packed=packed)
    torch.testing.assert_close(y2, y, rtol=1e-9, atol=1e-9)


def test_untied_head_permutations_are_refused_and_break_attention():
    g = attention_graph(packed=False)
    params = {p.name: torch.randn(*p.shape, dtype=torch.float64) for p in g.parameters()}
    T = sy.random_transforms(g, 0)
    swapped = torch.tensor([1, 0]) if T["qk"].head_perm.tolist() == [0, 1] else torch.tensor([0, 1])
    bad = sy.TransformSet({"qk": T["qk"], "vo": T["vo"].with_head_perm(swapped)})
    with pytest.raises(TieError, match="must share one head permutation"):
        sy.apply(g, params, bad)
    with pytest.raises(TieError, match="must share one head permutation"):
        sy.apply(g, params, {"qk": T["qk"].with_head_perm(torch.tensor([1, 0]))})  # vo left at identity
    # the refusal is warranted: applied anyway (no checks), the function changes
    x = torch.randn(5, 4, dtype=torch.float64)
    y2 = attention(sy.apply(g, params, bad, check=False), x, packed=False)
    assert float((y2 - attention(params, x, packed=False)).abs().max()) > 1e-6


def batchnorm_graph():
    g = WeightGraph("linear-bn-relu-linear")
    for name, shape in (("fc1.weight", (5, 3)), ("bn.weight", (5,)), ("bn.bias", (5,)),
                        ("bn.running_mean", (5,)), ("bn.running_var", (5,)), ("fc2.weight", (2, 5))):
        g.add_parameter(name, shape)
    g.add_space("h", 5, sy.Permutation(), activation="relu")
    for name in ("fc1.weight", "bn.weight", "bn.bias", "bn.running_mean"):
        g.connect(name, "h", axis=0, role="out")
    g.connect("bn.running_var", "h", axis=0, role="var").connect("fc2.weight", "h", axis=1, role="in")
    return g


def bn_forward(p, x):
    z = x @ p["fc1.weight"].T
    z = (z - p["bn.running_mean"]) / torch.sqrt(p["bn.running_var"] + 1e-5) * p["bn.weight"] + p["bn.bias"]
    return torch.relu(z) @ p["fc2.weight"].T


def test_var_role_keeps_batchnorm_exact_under_permutations():
    g = batchnorm_graph()
    params = {p.name: torch.randn(*p.shape, dtype=torch.float64) for p in g.parameters()}
    params["bn.running_var"] = torch.rand(5, dtype=torch.float64) + 0.5
    T = sy.random_transforms(g, 3)
    x = torch.randn(8, 3, dtype=torch.float64)
    torch.testing.assert_close(bn_forward(sy.apply(g, params, T), x), bn_forward(params, x))
    d = sy.GatherElement.monomial(torch.arange(5), torch.full((5,), 2.0))
    assert torch.equal(d.apply(params["bn.running_var"], 0, "var"), 4 * params["bn.running_var"])


@settings(max_examples=100)
@given(mlp_architectures(), st.data())
def test_transform_sets_compose_and_invert_on_parameters(arch, data):
    g = arch.graph
    s, r = data.draw(transform_sets(g)), data.draw(transform_sets(g))
    params = arch.module(seed=0, dtype=torch.float64).state_dict()
    both = sy.apply(g, params, s @ r)
    seq = sy.apply(g, sy.apply(g, params, r), s)
    for k in params:
        torch.testing.assert_close(both[k], seq[k], rtol=1e-8, atol=1e-8)
    back = sy.apply(g, sy.apply(g, params, s), s.inverse())
    for k in params:
        torch.testing.assert_close(back[k], params[k], rtol=1e-8, atol=1e-8)


def test_apply_keeps_inputs_and_kinds():
    arch = architectures.mlp([3, 4, 4, 2])
    params = arch.module(seed=0, dtype=torch.float64).state_dict()
    copies = {k: v.clone() for k, v in params.items()}
    T = sy.random_transforms(arch.graph, 1)
    out = sy.apply(arch.graph, params, T)
    assert out is not params and list(out) == list(params)
    assert all(torch.equal(params[k], copies[k]) for k in params)
    as_numpy = {k: v.numpy() for k, v in params.items()}
    out_np = sy.apply(arch.graph, as_numpy, T)
    assert all(isinstance(v, np.ndarray) for v in out_np.values())
    for k in out:
        np.testing.assert_allclose(out_np[k], out[k].numpy(), rtol=0, atol=1e-15)
    half = sy.apply(arch.graph, {k: v.float() for k, v in params.items()}, T)
    assert all(v.dtype == torch.float32 for v in half.values())


def test_partial_and_identity_transform_sets():
    arch = architectures.mlp([3, 4, 4, 2])
    params = arch.module(seed=0).state_dict()
    only_first = sy.TransformSet({"hidden.0": sy.Permutation().random(4, seed=2)})
    out = sy.apply(arch.graph, params, only_first)
    assert out["layers.2.weight"] is params["layers.2.weight"]  # untouched tensors are shared, not copied
    ident = sy.apply(arch.graph, params, sy.identity_transforms(arch.graph))
    assert all(torch.equal(ident[k], params[k]) for k in params)


def test_apply_error_paths():
    arch = architectures.mlp([3, 4, 2])
    params = arch.module(seed=0).state_dict()
    with pytest.raises(UnknownSpaceError, match="no space 'hidden.7'"):
        sy.apply(arch.graph, params, {"hidden.7": sy.Permutation().random(4)})
    with pytest.raises(ElementShapeError, match="space 'hidden.0' maps size 5 but the space has size 4"):
        sy.apply(arch.graph, params, {"hidden.0": sy.Permutation().random(5)})
    with pytest.raises(TypeError, match="must be an Element"):
        sy.apply(arch.graph, params, {"hidden.0": torch.eye(4)})
    with pytest.raises(NotAdmittedError, match="space 'hidden.0' admits"):
        sy.random_transforms(arch.graph, classes={"hidden.0": sy.Orthogonal()})
    with pytest.raises(UnknownSpaceError):
        sy.random_transforms(arch.graph, classes={"nope": sy.Permutation()})
    with pytest.raises(UnknownSpaceError):
        sy.random_transforms(arch.graph, sizes={"nope": 3})


def test_transform_set_algebra_and_repr():
    a, b = sy.Permutation().random(4, seed=0), sy.Permutation().random(4, seed=1)
    s, r = sy.TransformSet({"x": a}), sy.TransformSet({"x": b, "y": a})
    both = s @ r
    assert set(both) == {"x", "y"} and both["x"].allclose(a @ b) and both["y"] is a
    assert len(s.inverse()) == 1 and (s.inverse()["x"] @ a).is_identity()
    assert "TransformSet" in repr(s) and s.to(dtype=torch.float32)["x"].shape == (4, 4)


@pytest.mark.parametrize("role", ["out", "in", "var"])
def test_a_scaling_applies_without_a_gather_and_never_aliases(role):
    """A diagonal element (a positive scaling) scales in place of gathering: the same values as the gather with
    the identity index would give, in a new tensor — whole axis and a slice of one (a concatenation)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, generator=g)
    c = torch.rand(5, dtype=torch.float64, generator=g) + 0.5
    el = sy.GatherElement.monomial(torch.arange(5), c)
    assert el.is_diagonal()
    out = el.apply(x, 1, role)
    factor = {"out": c, "in": 1 / c, "var": c * c}[role]
    torch.testing.assert_close(out, x * factor, rtol=0, atol=0)
    assert out.data_ptr() != x.data_ptr()
    graph = WeightGraph("cat")
    graph.add_space("s", 5, sy.PositiveScaling())
    graph.add_parameter("w", (6, 8))
    graph.connect("w", "s", axis=1, role=role, slice=(2, 7))
    params = {"w": torch.randn(6, 8, dtype=torch.float64, generator=g)}
    moved = sy.apply(graph, params, {"s": el}, check=False)["w"]
    torch.testing.assert_close(moved[:, 2:7], params["w"][:, 2:7] * factor, rtol=0, atol=0)
    torch.testing.assert_close(moved[:, :2], params["w"][:, :2], rtol=0, atol=0)
    assert moved.data_ptr() != params["w"].data_ptr()
