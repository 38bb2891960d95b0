"""GCN builder: ``Â = D^-1/2 (A + I) D^-1/2`` is computed from data (never a parameter), and the
feature-space symmetries of each hidden space — the activation's classes — leave the node
outputs unchanged, while non-admitted classes change them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from arch_checks import (admitted_classes, assert_params_close, assert_same, max_cond, outputs, param_conds, randomize,
                         relative_change)
from architectures import normalized_adjacency
from symmetries.testing.strategies import seeds


@st.composite
def graphs(draw, min_nodes=1, max_nodes=7):
    """An undirected graph as an edge index (both directions) or a dense 0/1 float matrix."""
    n = draw(st.integers(min_nodes, max_nodes))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    if draw(st.booleans()):
        ei = [(i, j) for i, j in edges] + [(j, i) for i, j in edges]
        return n, torch.tensor(ei, dtype=torch.long).reshape(-1, 2).T.contiguous()
    a = torch.zeros(n, n, dtype=torch.float64)
    for i, j in edges:
        a[i, j] = a[j, i] = 1.0
    return n, a


@st.composite
def gcns(draw, activations=None):
    widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    act = draw(st.sampled_from(activations or list(architectures.builder_activations())))
    return architectures.gcn(widths, activation=act, bias=draw(st.booleans()))


def _dense(n, adj):
    """The 0/1 (or weighted) adjacency matrix of a drawn graph."""
    if adj.is_floating_point():
        return adj
    a = torch.zeros(n, n, dtype=torch.float64)
    return a.index_put_((adj[1], adj[0]), torch.ones(adj.shape[1], dtype=torch.float64), accumulate=True)


def _features(n, f, seed):
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=300)
@given(gcns(), graphs(), st.data(), st.sampled_from([torch.float64, torch.float32]), seeds)
def test_admitted_classes_leave_the_function_unchanged(arch, graph, data, dtype, seed):
    g = arch.graph
    classes = admitted_classes(data, g)
    T = sy.random_transforms(g, seed, classes=classes)
    params = randomize(arch, seed, dtype)
    new = sy.apply(g, params, T)
    n, adj = graph
    x = _features(n, arch.config["widths"][0], seed)
    assert_same(outputs(arch, params, x, adj, dtype=dtype), outputs(arch, new, x, adj, dtype=dtype), dtype,
                max_cond(T, g))
    assert_params_close(sy.apply(g, new, T.inverse()), params, dtype, param_conds(g, T))


@settings(max_examples=60)
@given(gcns(activations=["relu", "leaky_relu", "abs", "identity"]), graphs(), st.data(), seeds)
def test_semi_permutations_widen_without_changing_the_function(arch, graph, data, seed):
    g = arch.graph
    sizes = {s.name: s.size + data.draw(st.integers(0, 4), label=s.name) for s in g.spaces()}
    T = sy.random_transforms(g, seed, classes=sy.SemiPermutation(), sizes=sizes)
    widths = list(arch.config["widths"])
    for i in range(1, len(widths) - 1):
        widths[i] = sizes[f"hidden.{i - 1}"]
    wide = architectures.gcn(widths, activation=arch.config["activation"], bias=arch.config["bias"])
    params = randomize(arch, seed)
    split = sy.apply(g, params, T)
    wide.graph.validate(split)
    n, adj = graph
    x = _features(n, widths[0], seed)
    assert_same(outputs(arch, params, x, adj), outputs(wide, split, x, adj), torch.float64)
    assert_params_close(sy.apply(wide.graph, split, T.inverse()), params, torch.float64)


NOT_ADMITTED = [("relu", sy.Orthogonal()), ("relu", sy.SignFlip()), ("tanh", sy.PositiveScaling()),
                ("gelu", sy.SignFlip()), ("sigmoid", sy.Orthogonal())]


@pytest.mark.parametrize("activation,cls", NOT_ADMITTED, ids=str)
def test_classes_not_admitted_change_the_function(activation, cls):
    arch = architectures.gcn([4, 6, 6, 3], activation=activation)
    assert not any(arch.graph.admits(s.name, cls) for s in arch.graph.spaces())
    with pytest.raises(sy.errors.NotAdmittedError):
        sy.random_transforms(arch.graph, 0, classes=cls)
    T = sy.random_transforms(arch.graph, 0, classes=cls, strict=False)
    params = randomize(arch, 0)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    x = _features(5, 4, 0)
    assert relative_change(outputs(arch, params, x, ei), outputs(arch, sy.apply(arch.graph, params, T, check=False), x, ei)) > 1e-3


# -- the normalised adjacency is data ----------------------------------------------------------------
@settings(max_examples=60)
@given(graphs(min_nodes=1))
def test_normalized_adjacency_matches_its_definition(graph):
    n, adj = graph
    a_hat = normalized_adjacency(adj, n).numpy()
    a = _dense(n, adj).numpy() + np.eye(n)
    d = np.diag(1.0 / np.sqrt(a.sum(1)))
    np.testing.assert_allclose(a_hat, d @ a @ d, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a_hat, a_hat.T, atol=1e-12)
    eig = np.linalg.eigvalsh(a_hat)
    assert eig.max() <= 1 + 1e-9 and eig.min() >= -1 - 1e-9  # spectrum of Â lies in [-1, 1]


@settings(max_examples=40)
@given(gcns(), graphs(min_nodes=2), seeds)
def test_relabelling_the_nodes_permutes_the_outputs(arch, graph, seed):
    """Node permutation equivariance: ``f(P x, P A Pᵀ) = P f(x, A)`` (the adjacency is an input)."""
    n, adj = graph
    dense = _dense(n, adj)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    params = randomize(arch, seed)
    x = _features(n, arch.config["widths"][0], seed)
    y = outputs(arch, params, x, dense)
    y2 = outputs(arch, params, x[perm], dense[perm][:, perm])
    assert_same(y[perm], y2, torch.float64)


def test_edge_index_and_dense_adjacency_agree_and_are_not_parameters():
    arch = architectures.gcn([3, 4, 2])
    m = arch.module(seed=0, dtype=torch.float64).eval()
    assert set(m.state_dict()) == {p.name for p in arch.graph.parameters()} == {
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    dense = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)
    x = _features(3, 3, 0)
    with torch.no_grad():
        torch.testing.assert_close(m(x, ei), m(x, dense), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m(x, ei), m(x, dense.bool()), rtol=1e-12, atol=1e-12)
        # a graph with no edges: Â = I, every node is an MLP of its own features
        mlp = architectures.mlp([3, 4, 2]).module(dtype=torch.float64).eval()
        mlp.load_state_dict(m.state_dict())
        torch.testing.assert_close(m(x, torch.zeros(2, 0, dtype=torch.long)), mlp(x), rtol=1e-12, atol=1e-12)


def test_bad_adjacencies_are_refused():
    with pytest.raises(ValueError, match="edge index of shape \\(2, E\\)"):
        normalized_adjacency(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in \\[0, 3\\)"):
        normalized_adjacency(torch.tensor([[0, 5], [1, 0]]), 3)
    with pytest.raises(ValueError, match="square"):
        normalized_adjacency(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="has 3 nodes, expected 4"):
        normalized_adjacency(torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match="non-positive degree"):
        normalized_adjacency(-torch.ones(2, 2))
    with pytest.raises(ValueError, match="unknown activation"):
        architectures.gcn([2, 3, 1], activation="nope")
