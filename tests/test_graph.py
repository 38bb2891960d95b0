"""Weight-graph construction and validation: every error names the parameter, axis and space."""
from __future__ import annotations

import networkx as nx
import pytest
import torch

import architectures
import symmetries as sy
from architectures import WeightGraph
from symmetries.errors import (GraphError, MissingParameterError, OverlappingAxisError, RoleClassError,
                               ShapeMismatchError, TieError, UncoveredParameterError, UnknownParameterError,
                               UnknownSpaceError)


def two_layer(classes=sy.Permutation()) -> WeightGraph:
    g = WeightGraph("two-layer")
    g.add_parameter("fc1.weight", (4, 3)).add_parameter("fc1.bias", (4,)).add_parameter("fc2.weight", (2, 4))
    g.add_parameter("fc2.bias", (2,), fixed=True)
    g.add_space("h", 4, classes)
    g.connect("fc1.weight", "h", axis=0, role="out").connect("fc1.bias", "h", axis=0, role="out")
    g.connect("fc2.weight", "h", axis=1, role="in")
    return g


def params():
    return {"fc1.weight": torch.zeros(4, 3), "fc1.bias": torch.zeros(4), "fc2.weight": torch.zeros(2, 4),
            "fc2.bias": torch.zeros(2)}


def test_graph_is_a_networkx_object_users_can_query():
    g = two_layer().validate(params())
    assert isinstance(g.nx, nx.MultiDiGraph)
    assert set(g.nx.predecessors("h")) == {"fc1.weight", "fc1.bias", "fc2.weight"}
    assert g.nx.nodes["h"]["kind"] == "space" and g.nx.nodes["h"]["size"] == 4
    roles = sorted(str(d["role"]) for _, _, d in g.nx.in_edges("h", data=True))
    assert roles == ["in", "out", "out"]
    assert [e.axis for e in g.edges_of("fc2.weight")] == [1]
    assert g.space("h").cls == sy.Permutation() and g.admits("h", sy.Trivial())
    assert not g.admits("h", sy.Orthogonal())
    assert "3 edges" in repr(g)


def test_unknown_and_missing_parameters_are_named():
    g = two_layer()
    p = params() | {"extra.weight": torch.zeros(1)}
    with pytest.raises(UnknownParameterError, match="'extra.weight' is not in graph") as e:
        g.validate(p)
    assert e.value.parameter == "extra.weight"
    p = params()
    del p["fc1.bias"]
    with pytest.raises(MissingParameterError, match="'fc1.bias'.*missing") as e:
        g.validate(p)
    assert e.value.parameter == "fc1.bias"


def test_size_mismatch_names_parameter_axis_and_space():
    g = WeightGraph()
    g.add_parameter("w").add_parameter("v")
    g.add_space("h", 5, sy.Permutation())
    g.connect("w", "h", axis=1, role="in").connect("v", "h", axis=0, role="out")
    with pytest.raises(ShapeMismatchError, match=r"parameter 'w' axis 1 has size 4 but space 'h' has size 5") as e:
        g.validate({"w": torch.zeros(2, 4), "v": torch.zeros(5)})
    assert (e.value.parameter, e.value.axis, e.value.space) == ("w", 1, "h")
    with pytest.raises(ShapeMismatchError, match="parameter 'w' axis 1 does not exist"):
        g.validate({"w": torch.zeros(5), "v": torch.zeros(5)})
    g2 = two_layer()
    with pytest.raises(ShapeMismatchError, match="has shape \\(4, 4\\), the graph declares \\(4, 3\\)"):
        g2.validate(params() | {"fc1.weight": torch.zeros(4, 4)})


def test_declared_shapes_are_checked_without_tensors():
    g = WeightGraph()
    g.add_parameter("w", (3, 2)).add_space("h", 4, sy.Permutation()).connect("w", "h", axis=0, role="out")
    with pytest.raises(ShapeMismatchError, match="size 3 but space 'h' has size 4"):
        g.validate()


def test_index_claimed_twice_is_an_error():
    g = WeightGraph()
    g.add_parameter("qkv", (6, 2))
    g.add_space("a", 4, sy.Permutation()).add_space("b", 4, sy.Permutation())
    g.connect("qkv", "a", axis=0, role="out", slice=(0, 4)).connect("qkv", "b", axis=0, role="out", slice=(2, 6))
    with pytest.raises(OverlappingAxisError, match="'qkv' axis 0\\[2:6\\] is claimed twice") as e:
        g.validate()
    assert e.value.parameter == "qkv" and e.value.axis == 0



def test_negative_axis_claims_the_same_axis():
    """``axis=-1`` and ``axis=1`` of a matrix are one axis: two spaces on it overlap (with a declared
    shape, and with the shape taken from the tensor)."""
    for shape in [(3, 3), None]:
        g = WeightGraph()
        g.add_parameter("w", shape)
        g.add_space("a", 3, sy.Permutation()).add_space("b", 3, sy.Permutation())
        g.connect("w", "a", axis=1, role="in").connect("w", "b", axis=-1, role="out")
        with pytest.raises(OverlappingAxisError, match="'w' axis -1 is claimed twice") as e:
            g.validate({"w": torch.zeros(3, 3)})
        assert e.value.parameter == "w" and e.value.axis == 1

def test_disjoint_slices_are_fine():
    g = WeightGraph()
    g.add_parameter("qkv", (6, 2))
    g.add_space("a", 3, sy.Permutation()).add_space("b", 3, sy.Permutation())
    g.connect("qkv", "a", axis=0, role="out", slice=(0, 3)).connect("qkv", "b", axis=0, role="out", slice=(3, 6))
    g.validate({"qkv": torch.zeros(6, 2)})


def tied(classes) -> WeightGraph:
    g = WeightGraph("tied")
    g.add_parameter("embed", (10, 4))
    g.add_space("stream", 4, classes)
    g.connect("embed", "stream", axis=1, role="out").connect("embed", "stream", axis=1, role="in")
    return g


def test_tied_axis_requires_orthogonal_type_classes():
    tied(sy.Orthogonal()).validate()
    tied(sy.SignedPermutation()).validate()
    with pytest.raises(RoleClassError, match="both produces and consumes space 'stream'.*Invertible") as e:
        tied(sy.Invertible()).validate()
    assert (e.value.parameter, e.value.axis, e.value.space) == ("embed", 1, "stream")
    with pytest.raises(RoleClassError, match="PermutationScaling"):
        tied((sy.Permutation(), sy.PermutationScaling())).validate()


def test_tied_axis_is_transformed_once():
    g = tied(sy.Orthogonal())
    o = sy.Orthogonal().random(4, seed=0)
    e = torch.randn(10, 4, dtype=torch.float64)
    out = sy.apply(g, {"embed": e}, {"stream": o})["embed"]
    torch.testing.assert_close(out, e @ o.as_matrix().T)


def test_var_role_requires_monomial_classes():
    g = WeightGraph()
    g.add_parameter("w", (3, 2)).add_parameter("running_var", (3,))
    g.add_space("h", 3, sy.Orthogonal())
    g.connect("w", "h", axis=0, role="out").connect("running_var", "h", axis=0, role="var")
    with pytest.raises(RoleClassError, match="'running_var' axis 0 has role 'var'.*Orthogonal"):
        g.validate()


def test_coverage_rules():
    g = WeightGraph()
    g.add_parameter("w", (3, 2))
    with pytest.raises(UncoveredParameterError, match="'w' is not covered by any space and not declared fixed"):
        g.validate()
    g = WeightGraph()
    g.add_parameter("w", (3, 2), fixed=True).add_space("h", 3, sy.Permutation())
    g.connect("w", "h", axis=0, role="out")
    with pytest.raises(UncoveredParameterError, match="declared fixed but parameter 'w' axis 0"):
        g.validate()


def test_building_errors():
    g = two_layer()
    with pytest.raises(GraphError, match="already declared as a parameter"):
        g.add_space("fc1.weight", 3, sy.Permutation())
    with pytest.raises(UnknownSpaceError, match="unknown space 'nowhere'"):
        g.connect("fc1.weight", "nowhere", axis=0, role="out")
    with pytest.raises(UnknownParameterError, match="unknown parameter 'ghost'"):
        g.connect("ghost", "h", axis=0, role="out")
    with pytest.raises(ValueError, match="unknown role"):
        g.connect("fc1.weight", "h", axis=0, role="both")
    with pytest.raises(GraphError, match="0 ≤ start < stop"):
        g.connect("fc1.weight", "h", axis=0, role="out", slice=(3, 1))
    with pytest.raises(GraphError, match="SymmetryClass"):
        g.add_space("k", 3, "permutation")
    for size in (-4, 0, 2.5, True, "3"):  # a negative or truncated size used to be accepted
        with pytest.raises(GraphError, match="space 'k': size must be a positive integer") as e:
            g.add_space("k", size, sy.Permutation())
        assert e.value.space == "k"
    for shape in ((3, -1), (3, 2.5), 3):
        with pytest.raises(GraphError, match="parameter 'w'") as e:
            g.add_parameter("w", shape)
        assert e.value.parameter == "w"
    ok = WeightGraph().add_parameter("empty", (0, 3), fixed=True).add_space("z", 3.0, sy.Permutation())
    assert ok.parameter("empty").shape == (0, 3) and ok.space("z").size == 3  # torch allows empty axes
    with pytest.raises(UnknownSpaceError, match="has no space 'k'.*spaces: h"):
        g.space("k")


def test_head_groups_are_checked():
    g = WeightGraph()
    g.add_parameter("q", (4, 2)).add_parameter("v", (6, 2))
    g.add_space("qk", 4, sy.HeadStructured(2, sy.Invertible()), head_group="attn")
    g.add_space("vo", 6, sy.HeadStructured(3, sy.Invertible()), head_group="attn")
    g.connect("q", "qk", axis=0, role="out").connect("v", "vo", axis=0, role="out")
    with pytest.raises(TieError, match="disagree on the number of heads"):
        g.validate()
    g = WeightGraph()
    g.add_parameter("q", (4, 2)).add_space("qk", 4, sy.Permutation(), head_group="attn")
    g.connect("q", "qk", axis=0, role="out")
    with pytest.raises(TieError, match="no head permutation to share"):
        g.validate()
    g = WeightGraph()
    g.add_parameter("q", (6, 2)).add_space("qk", 6, sy.HeadStructured(4, sy.Permutation()))
    g.connect("q", "qk", axis=0, role="out")
    with pytest.raises(ShapeMismatchError, match="not a multiple of 4 heads"):
        g.validate()


def test_with_classes_returns_a_redeclared_copy():
    net = architectures.mlp([3, 5, 2], activation="gelu")
    wrong = net.graph.with_classes({"hidden.0": sy.PermutationScaling()})
    assert wrong.space("hidden.0").cls == sy.PermutationScaling()
    assert net.graph.space("hidden.0").cls == sy.Permutation()


def test_edits_through_networkx_are_seen_by_every_query():
    """``graph.nx`` is documented for users; networkx does not notify, so the index must not go stale."""
    g = two_layer().validate(params())
    assert len(g.edges_of("fc2.weight")) == 1 and len(g.edges_at("h")) == 3
    g.nx.remove_edge("fc2.weight", "h")
    assert g.edges_of("fc2.weight") == [] and len(g.edges_at("h")) == 2 and "2 edges" in repr(g)
    with pytest.raises(UncoveredParameterError, match="'fc2.weight' is not covered"):
        g.validate()

    g = two_layer().validate(params())
    g.nx.nodes["h"]["classes"] = (sy.Orthogonal(),)
    assert g.space("h").classes == (sy.Orthogonal(),) and g.admits("h", sy.Orthogonal())
    with pytest.raises(TieError):  # the structure check ran again: a head group needs head classes
        g.nx.nodes["h"]["head_group"] = "attn"
        g.validate()

    g = two_layer().validate(params())
    key = next(iter(g.nx.get_edge_data("fc2.weight", "h")))
    g.nx.edges["fc2.weight", "h", key]["axis"] = 0  # fc2.weight axis 0 has size 2, h has 4
    assert [e.axis for e in g.edges_of("fc2.weight")] == [0]
    with pytest.raises(ShapeMismatchError, match="'fc2.weight' axis 0"):
        g.validate(params())

    g = two_layer().validate(params())
    g.nx.add_node("extra.weight", kind="parameter", shape=(4,), fixed=False)
    with pytest.raises(UncoveredParameterError, match="extra.weight"):
        g.validate()
    g.nx.remove_node("extra.weight")
    g.validate()


def test_a_replaced_networkx_graph_is_read_afresh():
    g = two_layer().validate(params())
    plain = nx.MultiDiGraph(g.nx)  # a graph that does not track its edits
    g.nx = plain
    assert len(g.edges_of("fc1.weight")) == 1
    plain.remove_edge("fc1.weight", "h")
    assert g.edges_of("fc1.weight") == []
    with pytest.raises(GraphError, match="MultiDiGraph"):
        g.nx = {"not": "a graph"}
