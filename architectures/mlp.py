"""Multi-layer perceptrons: ``x ↦ L_k ∘ f ∘ … ∘ f ∘ L_1 (x)``.

Hidden space ``hidden.i`` (the units after ``layers.i``) is produced by ``layers.i.weight``
(axis 0, ``out``) and ``layers.i.bias``, and consumed by ``layers.{i+1}.weight`` (axis 1,
``in``). It admits the largest classes exact across the activation
(:mod:`architectures.activations`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from symmetries.errors import ArgumentError
from symmetries._args import sizes
from architectures.activations import activation as lookup
from architectures.architecture import Architecture, randn
from symmetries.graph import WeightGraph

__all__ = ["mlp", "MLP"]


class MLP(nn.Module):
    """Linear layers ``layers.0 … layers.{k-1}`` with one activation between them; inputs with
    more than two dimensions are flattened after the batch dimension."""

    def __init__(self, widths: Sequence[int], activation: str = "relu", bias: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = lookup(activation).module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


def mlp(widths: Sequence[int], activation: str = "relu", bias: bool = True) -> Architecture:
    """An MLP with the given layer ``widths`` (positive integers, input first, output last)."""
    widths = sizes("widths", widths)
    if len(widths) < 2:
        raise ArgumentError(f"widths needs at least two positive sizes (input and output), got {widths}",
                            argument="widths")
    act = lookup(activation)
    g = WeightGraph(f"mlp{widths}")
    n = len(widths) - 1
    for i in range(n):
        last = i == n - 1
        g.add_parameter(f"layers.{i}.weight", (widths[i + 1], widths[i]), fixed=last and i == 0)
        if bias:
            g.add_parameter(f"layers.{i}.bias", (widths[i + 1],), fixed=last)
        if not last:
            g.add_space(f"hidden.{i}", widths[i + 1], act.classes, activation=act.name)
            g.connect(f"layers.{i}.weight", f"hidden.{i}", axis=0, role="out")
            if bias:
                g.connect(f"layers.{i}.bias", f"hidden.{i}", axis=0, role="out")
        if i > 0:
            g.connect(f"layers.{i}.weight", f"hidden.{i - 1}", axis=1, role="in")
    g.validate()
    return Architecture(g.name, g, lambda: MLP(widths, act.name, bias),
                        dict(widths=widths, activation=act.name, bias=bias),
                        inputs=lambda batch, generator, dtype: randn(generator, dtype, batch, widths[0]))
