"""from_module reproduces the builders' graphs, and graph equivalence is up to renaming only."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from architectures import assert_graphs_equivalent, from_module, graphs_equivalent
from extract_models import GRAPHS
from symmetries.testing.strategies import mlp_architectures


# -- the builders' graphs are reproduced ------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "abs", "tanh", "sin", "gelu", "silu", "sigmoid",
                                        "softplus", "elu", "identity"])
def test_mlp_graphs_are_reproduced(activation):
    for widths, bias in [([3, 4, 5, 2], True), ([3, 4, 5, 2], False), ([3, 2], True), ([3, 6, 2], True)]:
        arch = architectures.mlp(widths, activation=activation, bias=bias)
        g = from_module(arch.module(seed=0), torch.randn(2, widths[0]))
        assert_graphs_equivalent(arch.graph, g)


@settings(max_examples=40)
@given(mlp_architectures(), st.integers(1, 3))
def test_drawn_mlp_graphs_are_reproduced(arch, batch):
    x = torch.randn(batch, arch.config["widths"][0])
    assert_graphs_equivalent(arch.graph, from_module(arch.module(seed=0), x))


def _builders():
    out = [("vgg", lambda: architectures.vgg(), (torch.randn(2, 3, 8, 8),)),
           ("vgg-bn-hidden", lambda: architectures.vgg(batchnorm=True, hidden=(12,)), (torch.randn(2, 3, 8, 8),)),
           ("vgg-tanh", lambda: architectures.vgg(activation="tanh", bias=False), (torch.randn(2, 3, 8, 8),)),
           ("resnet8", lambda: architectures.resnet(8), (torch.randn(2, 3, 8, 8),)),
           ("resnet14-half", lambda: architectures.resnet(14, width=0.5), (torch.randn(2, 3, 8, 8),)),
           ("gcn", lambda: architectures.gcn([4, 6, 5, 3]), (torch.randn(5, 4), torch.rand(5, 5))),
           ("gcn-gelu", lambda: architectures.gcn([4, 6, 3], activation="gelu", bias=False),
            (torch.randn(5, 4), torch.rand(5, 5)))]
    from architectures.transformer import gpt2, vit
    for packed in (False, True):
        for norm in ("layernorm", "rms"):
            out.append((f"gpt2-{norm}{'-packed' if packed else ''}",
                        lambda p=packed, n=norm: gpt2(11, 6, 8, 2, 2, packed_qkv=p, norm=n), None))
            out.append((f"vit-{norm}{'-packed' if packed else ''}",
                        lambda p=packed, n=norm: vit(8, 4, 3, 8, 2, 1, packed_qkv=p, norm=n), None))
    out += [("gpt2-tied", lambda: gpt2(11, 6, 8, 2, 1, tie_embeddings=True), None),
            ("gpt2-tied-rms", lambda: gpt2(11, 6, 8, 2, 1, tie_embeddings=True, norm="rms"), None),
            ("gpt2-head-bias-dhead3", lambda: gpt2(11, 6, 8, 2, 1, head_bias=True, d_head=3), None)]
    return out


@pytest.mark.parametrize("name,build,inputs", _builders(), ids=[b[0] for b in _builders()])
def test_builder_graphs_are_reproduced(name, build, inputs):
    arch = build()
    if inputs is None:
        from architectures.transformer import example_inputs
        inputs = example_inputs(arch)
    assert_graphs_equivalent(arch.graph, from_module(arch.module(seed=0), inputs))


# -- graph equivalence ---------------------------------------------------------------------------------
def _renamed(g, mapping):
    h = architectures.WeightGraph(g.name)
    for p in g.parameters():
        h.add_parameter(p.name, p.shape, fixed=p.fixed)
    for s in g.spaces():
        h.add_space(mapping.get(s.name, s.name), s.size, s.classes, activation=s.activation,
                    head_group=None if s.head_group is None else mapping.get(s.head_group, s.head_group))
    for e in g.edges():
        h.connect(e.parameter, mapping.get(e.space, e.space), axis=e.axis, role=e.role, slice=e.slice)
    return h


def test_equivalence_is_up_to_renaming_only():
    g = GRAPHS["transformer"]
    renamed = _renamed(g, {"emb": "stream", "attn.qk": "q", "attn.vo": "v", "attn": "heads0"})
    assert graphs_equivalent(g, renamed)
    assert_graphs_equivalent(g, renamed)
    other = g.with_classes({"fc1": sy.SignedPermutation()})
    assert not graphs_equivalent(g, other)
    with pytest.raises(AssertionError, match="differ in classes"):
        assert_graphs_equivalent(g, other)
    mlp = architectures.mlp([3, 4, 2]).graph
    flipped = architectures.WeightGraph("flipped")
    for p in mlp.parameters():
        flipped.add_parameter(p.name, p.shape, fixed=p.fixed)
    flipped.add_space("h", 4, mlp.space("hidden.0").classes, activation="relu")
    flipped.connect("layers.0.weight", "h", axis=0, role="out")
    flipped.connect("layers.0.bias", "h", axis=0, role="out")
    flipped.connect("layers.1.weight", "h", axis=1, role="out")  # wrong role
    assert not graphs_equivalent(mlp, flipped)
    with pytest.raises(AssertionError, match="no counterpart"):
        assert_graphs_equivalent(mlp, flipped)
    shapes = architectures.mlp([3, 5, 2]).graph
    with pytest.raises(AssertionError, match="shape"):
        assert_graphs_equivalent(mlp, shapes)


def _mutated(g, kind, k):
    """A copy of ``g`` with one thing changed: an edge's role, axis or slice, a class list, an
    activation, or a parameter's fixed flag."""
    h = architectures.WeightGraph(g.name)
    params = g.parameters()
    edges = g.edges()
    target = edges[k % len(edges)] if edges else None
    for p in params:
        h.add_parameter(p.name, p.shape, fixed=p.fixed)
    for sp in g.spaces():
        classes, act = sp.classes, sp.activation
        if target is not None and sp.name == target.space and kind == "classes":
            classes = (sy.Trivial(),) + classes
        if target is not None and sp.name == target.space and kind == "activation":
            act = (act or "") + "?"
        h.add_space(sp.name, sp.size, classes, activation=act, head_group=sp.head_group)
    for e in edges:
        role, sl = e.role, e.slice
        if e is target and kind == "role":
            role = sy.Role.IN if e.role is sy.Role.OUT else sy.Role.OUT
        if e is target and kind == "slice":
            sl = (0, g.space(e.space).size) if e.slice is None else None
        h.connect(e.parameter, e.space, axis=e.axis, role=role, slice=sl)
    return h


@settings(max_examples=60)
@given(st.sampled_from(sorted(GRAPHS)), st.randoms(use_true_random=False),
       st.sampled_from(["role", "slice", "classes", "activation"]), st.integers(0, 10**6))
def test_equivalence_ignores_names_and_sees_every_change(name, rnd, kind, k):
    g = GRAPHS[name]
    names = [sp.name for sp in g.spaces()]
    shuffled = names[:]
    rnd.shuffle(shuffled)
    groups = {grp: f"group{i}" for i, grp in enumerate(g.head_groups())}
    renamed = _renamed(g, {**{a: f"space:{b}" for a, b in zip(names, shuffled)}, **groups})
    assert graphs_equivalent(g, renamed) and architectures.graph_difference(g, renamed) is None
    if not g.edges():
        return
    other = _mutated(g, kind, k)
    assert not graphs_equivalent(g, other) and not graphs_equivalent(renamed, other)
    with pytest.raises(AssertionError, match="differ"):
        assert_graphs_equivalent(renamed, other)


def test_head_groups_must_map_consistently():
    g = architectures.WeightGraph("heads")
    for p in ("w1", "w2"):
        g.add_parameter(p, (4, 3))
    cls = sy.HeadStructured(2, sy.Invertible())
    g.add_space("s1", 4, cls, head_group="A").add_space("s2", 4, cls, head_group="A")
    g.connect("w1", "s1", axis=0, role="out").connect("w2", "s2", axis=0, role="out")
    split = _renamed(g, {})
    split.nx.nodes["s2"]["head_group"] = "B"
    split._cache = None
    assert graphs_equivalent(g, _renamed(g, {"A": "Z"}))
    assert not graphs_equivalent(g, split)
    with pytest.raises(AssertionError, match="head group"):
        assert_graphs_equivalent(g, split)
