"""Repeated edges ``repeat=(count, block)``: the action on each copy, validation, group laws, and the
output of two hand-declared models (a flatten into a Linear, grouped-query attention with and without
rotary embeddings) kept by every admitted class, in float64 (1e-10) and float32 (round-off)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import symmetries as sy
from architectures import graph_difference, graphs_equivalent
from conftest import RTOL
from repeat_models import (FlattenNet, GQAttention, admitted_classes, flatten_graph, gqa_graph, output, state)
from symmetries.errors import ElementShapeError, GraphError, OverlappingAxisError, ShapeMismatchError
from symmetries.testing.invariance import roundoff_factor
from symmetries.testing.strategies import GROUPS, random_element

SEEDS = st.integers(0, 2**31 - 1)
FAST = settings(max_examples=8, deadline=None)


# -- the action on one axis ----------------------------------------------------------------------------
def _per_copy(x, el, role, count, block, block_out):
    """The definition: view the axis (length count·n) as (n/block, count, block), act on each copy."""
    n = el.shape[1]
    v = x.reshape(n // block, count, block, -1)
    copies = [el.apply(v[:, c].reshape(n, -1), 0, role).reshape(-1, 1, block_out, v.shape[-1]) for c in range(count)]
    return torch.cat(copies, 1).reshape(-1, *x.shape[1:])


@FAST
@given(seed=SEEDS, cls=st.sampled_from([*GROUPS, sy.SemiPermutation(), sy.HeadStructured(2, sy.Orthogonal()),
                                        sy.HeadStructured(2, sy.Permutation())]),
       count=st.integers(1, 3), layout=st.sampled_from(["flatten", "tile", "heads"]), role=st.sampled_from(["out", "in", "var"]))
def test_a_repeated_edge_acts_on_every_copy(seed, cls, count, layout, role):
    """apply over a repeated edge (gather fast path and general path) = the element on each copy."""
    if role == "var" and not cls.monomial:
        role = "out"
    n = 4
    m = n + 2 if cls.rectangular else n
    block = {"flatten": 1, "tile": n, "heads": 2}[layout]
    block_out = {"flatten": 1, "tile": m, "heads": 2 * m // n}[layout]
    el = random_element(cls, n, m, seed=seed)
    g = sy.WeightGraph().add_space("s", n, cls).add_parameter("w", (count * n, 3))
    g.connect("w", "s", axis=0, role=role, repeat=(count, block))
    x = torch.randn(count * n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    want = _per_copy(x, el, role, count, block, block_out)
    got = sy.apply(g, {"w": x}, {"s": el}, check=False)["w"]
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-12)
    if role != "var":  # the general path (a dense map) agrees with the gather
        dense = sy.DenseElement(el.as_matrix(), el.in_matrix())
        assert torch.allclose(sy.apply(g, {"w": x}, {"s": dense}, check=False)["w"], want, atol=1e-12)
    h = sy.WeightGraph().add_space("s", n, cls).add_parameter("w", (3, count * n + 2))  # a slice of axis 1
    h.connect("w", "s", axis=1, role=role, slice=(1, 1 + count * n), repeat=(count, block))
    xt = torch.randn(3, count * n + 2, dtype=torch.float64)
    out = sy.apply(h, {"w": xt}, {"s": el}, check=False)["w"]
    assert torch.equal(out[:, 0], xt[:, 0]) and torch.equal(out[:, -1], xt[:, -1])
    assert torch.allclose(out[:, 1:-1], _per_copy(xt[:, 1:-1].T, el, role, count, block, block_out).T, atol=1e-12)


def test_count_one_is_a_plain_edge_and_numpy_works():
    g = sy.WeightGraph().add_space("s", 4, sy.Permutation()).add_parameter("w", (4, 2))
    g.connect("w", "s", axis=0, role="out", repeat=(1, 2))
    assert g.edges()[0].repeat is None and g.edges()[0].count == 1
    h = sy.WeightGraph().add_space("s", 2, sy.Permutation()).add_parameter("w", (6,))
    h.connect("w", "s", axis=0, role="out", repeat=(3, 1))
    x = torch.arange(6.0)
    el = sy.GatherElement(torch.tensor([1, 0]))
    assert sy.apply(h, {"w": x}, {"s": el})["w"].tolist() == [3, 4, 5, 0, 1, 2]
    assert sy.apply(h, {"w": x.numpy()}, {"s": el})["w"].tolist() == [3, 4, 5, 0, 1, 2]


# -- validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("repeat", [(0, 1), (2, 0), (2, 3), (2,), (2, 1, 1), (2.5, 1), "ab", (True, 1), 3])
def test_bad_repeats_are_refused_naming_the_edge(repeat):
    g = sy.WeightGraph().add_space("s", 4, sy.Permutation()).add_parameter("w", (8, 2))
    with pytest.raises(GraphError) as info:
        g.connect("w", "s", axis=0, role="out", repeat=repeat)
    assert info.value.parameter == "w" and info.value.space == "s"


def test_validation_of_repeated_axes():
    g = sy.WeightGraph().add_space("s", 4, sy.Permutation()).add_parameter("w", (10, 2))
    g.connect("w", "s", axis=0, role="out", repeat=(2, 2))
    with pytest.raises(ShapeMismatchError, match="2 copies") as info:
        g.validate()
    assert (info.value.parameter, info.value.axis, info.value.space) == ("w", 0, "s")
    g = sy.WeightGraph().add_space("s", 4, sy.Permutation()).add_parameter("w", (8, 2))
    g.connect("w", "s", axis=0, role="out", repeat=(2, 2))
    g.validate({"w": torch.zeros(8, 2)})
    lazy = sy.WeightGraph().add_space("s", 4, sy.Permutation()).add_parameter("w")   # shape from the tensor
    lazy.connect("w", "s", axis=0, role="out", repeat=(2, 2))
    with pytest.raises(ShapeMismatchError):
        lazy.validate({"w": torch.zeros(4, 2)})
    key = next(iter(g.nx.edges(keys=True)))
    g.nx.edges[key]["repeat"] = (2, 3)          # edited through networkx: the block no longer divides 4
    with pytest.raises(ShapeMismatchError, match="block"):
        g.validate()
    # a tied axis must repeat alike; two spaces may not share the copies of one span
    t = sy.WeightGraph().add_space("s", 4, sy.Orthogonal()).add_parameter("w", (8, 8))
    t.connect("w", "s", axis=0, role="out", repeat=(2, 1)).connect("w", "s", axis=0, role="in", repeat=(2, 2))
    with pytest.raises(OverlappingAxisError):
        t.validate()
    t = sy.WeightGraph().add_space("s", 4, sy.Orthogonal()).add_parameter("w", (8, 8))
    t.connect("w", "s", axis=0, role="out", repeat=(2, 2)).connect("w", "s", axis=0, role="in", repeat=(2, 2))
    t.validate()
    o = sy.WeightGraph().add_space("a", 4, sy.Permutation()).add_space("b", 2, sy.Permutation())
    o.add_parameter("w", (8,)).connect("w", "a", axis=0, role="out", repeat=(2, 1))
    o.connect("w", "b", axis=0, role="out", slice=(6, 8))
    with pytest.raises(OverlappingAxisError):
        o.validate()


def test_apply_refuses_maps_that_do_not_fit_the_copies():
    g = sy.WeightGraph().add_space("s", 4, sy.SemiPermutation()).add_parameter("w", (8,))
    g.connect("w", "s", axis=0, role="out", repeat=(2, 2))
    wide = sy.SemiPermutation().random(4, m=5, seed=0)          # 5 units: no whole block of 2·5/4
    with pytest.raises(ElementShapeError, match="repeat"):
        sy.apply(g, {"w": torch.zeros(8)}, {"s": wide}, check=False)
    with pytest.raises(ElementShapeError):
        sy.apply(g, {"w": torch.zeros(8)}, {"s": sy.Permutation().random(3, seed=0)}, check=False)


def test_equivalence_sees_the_repeat():
    a, b = flatten_graph(), flatten_graph(channels_last=True)
    assert graphs_equivalent(a, a.copy()) and not graphs_equivalent(a, b)
    assert "repeat" in graph_difference(a, b)


# -- group laws on a repeated graph ------------------------------------------------------------------------
@FAST
@given(seed=SEEDS, rope=st.booleans())
def test_group_laws_and_the_inverse_round_trip(seed, rope):
    g = gqa_graph(rope=rope)
    p = state(GQAttention(rope=rope).double())
    a, b = sy.random_transforms(g, seed=seed), sy.random_transforms(g, seed=seed + 1)
    ab = sy.TransformSet({s: a[s] @ b[s] for s in a})
    two = sy.apply(g, sy.apply(g, p, b), a)
    assert all(torch.allclose(sy.apply(g, p, ab)[k], two[k], atol=1e-10) for k in p)
    back = sy.apply(g, sy.apply(g, p, a), a.inverse())
    assert all(torch.allclose(back[k], p[k], atol=1e-10) for k in p)


# -- the outputs ----------------------------------------------------------------------------------------
def _cases():
    return {"flatten": (lambda: FlattenNet(), flatten_graph, lambda gen: torch.randn(3, 2, 2, 3, generator=gen)),
            "flatten-channels-last": (lambda: FlattenNet(channels_last=True), lambda: flatten_graph(channels_last=True),
                                      lambda gen: torch.randn(3, 2, 2, 3, generator=gen)),
            "gqa": (lambda: GQAttention(), gqa_graph, lambda gen: torch.randn(2, 5, 8, generator=gen)),
            "gqa-rope": (lambda: GQAttention(rope=True), lambda: gqa_graph(rope=True),
                         lambda gen: torch.randn(2, 5, 8, generator=gen)),
            "gqa-r4-no-bias": (lambda: GQAttention(heads=8, groups=2, bias=False),
                               lambda: gqa_graph(heads=8, groups=2, bias=False),
                               lambda gen: torch.randn(2, 5, 8, generator=gen))}


@pytest.mark.parametrize("case", sorted(_cases()))
@settings(max_examples=4, deadline=None)
@given(seed=SEEDS, dtype=st.sampled_from([torch.float64, torch.float32]))
def test_every_admitted_class_keeps_the_output(case, seed, dtype):
    make, graph, inputs = _cases()[case]
    g = graph()
    torch.manual_seed(seed % 1000)
    model = make().to(dtype)
    p = state(model)
    x = inputs(torch.Generator().manual_seed(seed)).to(dtype)
    y = output(model, p, x)
    scale = 1 + float(y.abs().max())
    for space in g.spaces():
        classes = admitted_classes(space)
        assert len(classes) >= 2, classes
        for i, cls in enumerate(classes):
            el = random_element(cls, space.size, seed=seed + i, cond=4.0)
            t = sy.TransformSet(sy.tie_heads(g, {space.name: el})).to(dtype=dtype)
            err = float((output(model, sy.apply(g, p, t), x) - y).abs().max())
            assert err < RTOL[dtype] * roundoff_factor(g, t) * scale * 10, (space.name, cls, err)
    t = sy.random_transforms(g, seed=seed).to(dtype=dtype)          # every space at once
    err = float((output(model, sy.apply(g, p, t), x) - y).abs().max())
    assert err < RTOL[dtype] * roundoff_factor(g, t) * scale * 10


@pytest.mark.parametrize("case", ["flatten", "gqa-rope"])
def test_undeclared_maps_change_the_output(case):
    """The checks can fail: maps the models do not admit (an orthogonal map of ReLU channels; a
    general invertible map on rotary heads; the right map on the wrong layout) change the output."""
    make, graph, inputs = _cases()[case]
    g = graph()
    model = make().double()
    p = state(model)
    x = inputs(torch.Generator().manual_seed(0)).double()
    y = output(model, p, x)
    space = g.spaces()[0]
    bad = sy.Orthogonal() if case == "flatten" else sy.HeadStructured(2, sy.Invertible())
    el = random_element(bad, space.size, seed=1)
    t = sy.tie_heads(g, {space.name: el})
    assert float((output(model, sy.apply(g, p, t, check=False), x) - y).abs().max()) > 1e-3
    if case == "flatten":  # the channels-last repeat (S, C) on this channel-major model
        wrong = flatten_graph(channels_last=True)
        good = {space.name: sy.Permutation().random(space.size, seed=2)}
        assert float((output(model, sy.apply(wrong, p, good), x) - y).abs().max()) > 1e-3


# -- landscape ----------------------------------------------------------------------------------------------
def test_landscape_clouds_read_every_copy_and_activations_refuse_repeated_producers():
    from symmetries.landscape.activations import producers
    from symmetries.landscape.dimension import neuron_cloud
    g = flatten_graph()
    p = state(FlattenNet().double())
    cloud = neuron_cloud(g, p, "channels")
    fc = p["fc.weight"].reshape(5, 3, 6)                          # (hidden, channel, position)
    want = torch.cat([p["conv.weight"].reshape(3, -1), p["conv.bias"][:, None], fc.permute(1, 0, 2).reshape(3, -1)], 1)
    assert torch.equal(cloud, want)
    perm = sy.Permutation().random(3, seed=1)
    moved = neuron_cloud(g, sy.apply(g, p, {"channels": perm}), "channels")   # the rows move with the units
    assert torch.equal(moved, want[perm.index])
    assert set(producers(FlattenNet(), g)) == {"channels", "hidden"}
    with pytest.raises(GraphError, match="repeated"):
        producers(GQAttention(), gqa_graph(), ["qk"])


def test_the_declaring_page_example_runs():
    import contextlib
    import io
    import re
    from pathlib import Path
    page = (Path(__file__).resolve().parents[1] / "docs" / "declaring.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "repeat=(" in b]
    assert len(blocks) == 1
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(blocks[0], "declaring.md (repeat)", "exec"), {"__name__": "declaring_repeat"})
    out = buf.getvalue().split()
    assert float(out[0]) < 1e-12 and out[1:] == ["fc.weight", "channels"]
