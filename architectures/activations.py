"""Elementwise activations and the largest classes exact across each.

* ReLU, leaky ReLU, ``|x|``: positively homogeneous → ``PermutationScaling``; linearly
  decomposable (``f(x) = f(αx) + f((1−α)x)``) → ``SemiPermutation``.
* tanh, sin: odd → ``SignedPermutation``.
* GELU, SiLU, sigmoid, softplus, ELU: permutations only.
* identity (a linear network): ``Invertible``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from symmetries.classes import (Invertible, Permutation, PermutationScaling, SemiPermutation,
                                SignedPermutation, SymmetryClass)

__all__ = ["Activation", "ACTIVATIONS", "activation"]


class Abs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


@dataclass(frozen=True)
class Activation:
    """An activation, its torch module and the maximal classes exact across it."""
    name: str
    module: Callable[[], nn.Module]
    classes: tuple[SymmetryClass, ...]
    reason: str


_RELU_LIKE = (PermutationScaling(), SemiPermutation())
ACTIVATIONS: dict[str, Activation] = {a.name: a for a in [
    Activation("relu", nn.ReLU, _RELU_LIKE, "positively homogeneous and linearly decomposable"),
    Activation("leaky_relu", nn.LeakyReLU, _RELU_LIKE, "positively homogeneous and linearly decomposable"),
    Activation("abs", Abs, _RELU_LIKE, "positively homogeneous and linearly decomposable"),
    Activation("tanh", nn.Tanh, (SignedPermutation(),), "odd"),
    Activation("sin", Sin, (SignedPermutation(),), "odd"),
    Activation("gelu", nn.GELU, (Permutation(),), "elementwise, neither homogeneous nor odd"),
    Activation("silu", nn.SiLU, (Permutation(),), "elementwise, neither homogeneous nor odd"),
    Activation("sigmoid", nn.Sigmoid, (Permutation(),), "elementwise, neither homogeneous nor odd"),
    Activation("softplus", nn.Softplus, (Permutation(),), "elementwise, neither homogeneous nor odd"),
    Activation("elu", nn.ELU, (Permutation(),), "elementwise, neither homogeneous nor odd"),
    Activation("identity", nn.Identity, (Invertible(),), "linear"),
]}


def activation(name: str) -> Activation:
    """Look up an activation by name (case-insensitive)."""
    try:
        return ACTIVATIONS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None
