"""Graph convolutional networks (Kipf & Welling 2017): ``H' = f(Â H Wᵀ + b)``.

``Â = D^{-1/2} (A + I) D^{-1/2}`` is the symmetrically normalised adjacency with self loops,
``D`` the degree matrix of ``A + I``. The adjacency is *data*: ``forward(x, adjacency)``
takes node features ``(N, F)`` and either a dense ``(N, N)`` adjacency or an edge index
``(2, E)``; it is never a parameter.

``Â`` acts on the node axis and a hidden-space map ``T`` on the feature axis, so they commute
(``Â (H Tᵀ) = (Â H) Tᵀ``): each hidden space ``hidden.i`` (the features after ``layers.i``)
admits exactly what the activation admits, as in an MLP — ``layers.i.weight`` (axis 0,
``out``) and ``layers.i.bias`` produce it, ``layers.{i+1}.weight`` (axis 1, ``in``) consumes it.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import torch
from torch import nn

from symmetries.errors import ArgumentError
from symmetries._args import sizes
from architectures.activations import activation as lookup
from architectures.architecture import Architecture, randn
from architectures.mlp import mlp

__all__ = ["gcn", "GCN", "GCNLayer", "normalized_adjacency", "propagate"]


def normalized_adjacency(adjacency: torch.Tensor, num_nodes: int | None = None) -> torch.Tensor:
    """Dense ``Â = D^{-1/2} (A + I) D^{-1/2}`` from a dense floating or boolean ``(N, N)``
    adjacency (weights kept) or an integer edge index ``(2, E)`` (each listed edge ``j → i`` has
    weight 1; list both directions for an undirected graph)."""
    a = torch.as_tensor(adjacency)
    if not a.is_floating_point() and a.dtype != torch.bool:
        if a.dim() != 2 or a.shape[0] != 2:
            raise ArgumentError(f"an integer adjacency is an edge index of shape (2, E); got {tuple(a.shape)}",
                                argument="adjacency")
        if num_nodes is None and not a.numel():
            raise ArgumentError("an empty edge index needs num_nodes", argument="num_nodes")
        n = int(num_nodes) if num_nodes is not None else int(a.max()) + 1
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= n):
            raise ArgumentError(f"edge index entries must lie in [0, {n}), got [{int(a.min())}, {int(a.max())}]",
                                argument="adjacency")
        dense = torch.zeros(n, n, dtype=torch.float64, device=a.device)
        dense.index_put_((a[1], a[0]), torch.ones(a.shape[1], dtype=torch.float64, device=a.device), accumulate=True)
        a = dense
    elif a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ArgumentError(f"a dense adjacency must be a square (N, N) matrix; got shape {tuple(a.shape)}",
                            argument="adjacency")
    elif num_nodes is not None and a.shape[0] != num_nodes:
        raise ArgumentError(f"adjacency has {a.shape[0]} nodes, expected {num_nodes}", argument="adjacency")
    a = a.to(torch.float64) if not a.is_floating_point() else a
    a = a + torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    deg = a.sum(1)
    if bool((deg <= 0).any()):
        raise ArgumentError("A + I has a node with non-positive degree; Â = D^-1/2 (A + I) D^-1/2 is undefined",
                            argument="adjacency")
    s = deg.rsqrt()
    return s[:, None] * a * s[None, :]


def propagate(a_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``Â H`` along the node axis (the second-to-last axis of ``h``)."""
    return a_hat.to(dtype=h.dtype, device=h.device) @ h


class GCNLayer(nn.Module):
    """``x ↦ Â x Wᵀ + b`` with ``weight`` ``(out, in)`` and ``bias`` ``(out,)`` (Glorot init)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        bound = math.sqrt(6.0 / (in_features + out_features))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        y = propagate(a_hat, x @ self.weight.T)
        return y if self.bias is None else y + self.bias


class GCN(nn.Module):
    """GCN layers ``layers.0 … layers.{k-1}`` with one activation between them."""

    def __init__(self, widths: Sequence[int], activation: str = "relu", bias: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(GCNLayer(a, b, bias) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = lookup(activation).module()

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        a_hat = normalized_adjacency(adjacency, x.shape[-2])
        for i, layer in enumerate(self.layers):
            x = layer(x, a_hat)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


def gcn(widths: Sequence[int], activation: str = "relu", bias: bool = True) -> Architecture:
    """A GCN with feature ``widths`` (positive integers, input features first, output features last)."""
    widths, act = sizes("widths", widths), lookup(activation)
    graph = mlp(widths, act.name, bias).graph.copy()  # same weight graph: Â only touches the node axis
    graph.nx.graph["name"] = f"gcn{widths}"
    graph.validate()
    return Architecture(graph.name, graph, lambda: GCN(widths, act.name, bias),
                        dict(widths=widths, activation=act.name, bias=bias), inputs=partial(_inputs, widths[0]))


def _inputs(d_in: int, batch: int, generator: torch.Generator, dtype: torch.dtype, nodes: int = 6):
    """One graph (``batch`` does not apply): node features ``(nodes, d_in)`` and a symmetric 0/1
    adjacency with edges drawn with probability 0.4."""
    a = (torch.rand(nodes, nodes, generator=generator) < 0.4).to(torch.float64)
    return randn(generator, dtype, nodes, d_in), ((a + a.T) > 0).to(dtype)
