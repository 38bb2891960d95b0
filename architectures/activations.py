"""The activation table: every elementwise activation the library knows, the facts about it that
fix the classes exact across it, and where extraction meets it (module types, functions, methods).

* positively homogeneous and linearly decomposable (``f(αx) = αf(x)`` for ``α > 0`` and
  ``f(x) = f(αx) + f((1−α)x)``: ReLU, leaky ReLU, ``|x|``) → ``PermutationScaling``, ``SemiPermutation``;
* odd (``f(−x) = −f(x)``: tanh, sin) → ``SignedPermutation``;
* linear (identity) → ``Invertible``;
* any other elementwise ``f`` (GELU, SiLU, sigmoid, …) → ``Permutation``.

Builders (``mlp``, ``vgg``, ``gcn``) take the activations that have a module; extraction
(:func:`architectures.from_module`) registers one rule per module type, function and tensor method
listed here; the hypothesis strategies draw from :func:`builder_activations`.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from symmetries.classes import (Invertible, Permutation, PermutationScaling, SemiPermutation,
                                SignedPermutation, SymmetryClass)
from symmetries.errors import SymmetryError

__all__ = ["Activation", "ACTIVATIONS", "activation", "builder_activations", "representative_activations",
           "UnknownActivationError"]


class UnknownActivationError(SymmetryError, ValueError):
    """A builder was given an activation name the table does not list with a module."""


class Abs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation ``f``: its facts, the module builders use (``None``: a function
    only) and the module types, functions and tensor-method names extraction matches.
    ``odd_when``: for a module whose oddness depends on its arguments (Hardtanh's bounds)."""
    name: str
    module: Callable[[], nn.Module] | None
    homogeneous: bool = False
    odd: bool = False
    linear: bool = False
    modules: tuple[type, ...] = ()
    functions: tuple[Callable, ...] = ()
    methods: tuple[str, ...] = ()
    odd_when: Callable[[nn.Module], bool] | None = None

    @property
    def classes(self) -> tuple[SymmetryClass, ...]:
        """The maximal classes exact across ``f``, from its facts."""
        return _classes(self.linear, self.homogeneous, self.odd)

    @property
    def reason(self) -> str:
        """Why those classes (the fact that gives them)."""
        if self.linear:
            return "linear"
        if self.homogeneous:
            return "positively homogeneous and linearly decomposable"
        return "odd" if self.odd else "elementwise, neither homogeneous nor odd"

    def classes_of(self, module: nn.Module) -> tuple[SymmetryClass, ...]:
        """The classes exact across this module instance (``odd_when`` read from its arguments)."""
        if self.odd_when is None:
            return self.classes
        return _classes(self.linear, self.homogeneous, bool(self.odd_when(module)))


def _classes(linear: bool, homogeneous: bool, odd: bool) -> tuple[SymmetryClass, ...]:
    if linear:
        return (Invertible(),)
    if homogeneous:
        return (PermutationScaling(), SemiPermutation())
    return (SignedPermutation(),) if odd else (Permutation(),)


def _module(cls: type, **facts) -> Activation:
    """A torch activation module matched by its type, named after it (``nn.Mish`` → ``mish``)."""
    return Activation(cls.__name__.lower(), cls, modules=(cls,), **facts)


def _torch_function(name: str, **facts) -> Activation:
    """An elementwise torch function (``torch.exp``, ``y.exp()``): extraction only, no module."""
    return Activation(name, None, functions=(getattr(torch, name),), methods=(name,), **facts)


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in [
    Activation("relu", nn.ReLU, homogeneous=True, modules=(nn.ReLU,), functions=(torch.relu, F.relu, torch.relu_),
               methods=("relu", "relu_")),
    Activation("leaky_relu", nn.LeakyReLU, homogeneous=True, modules=(nn.LeakyReLU,), functions=(F.leaky_relu,)),
    Activation("abs", Abs, homogeneous=True, modules=(Abs,), functions=(torch.abs, operator.abs), methods=("abs",)),
    Activation("tanh", nn.Tanh, odd=True, modules=(nn.Tanh,), functions=(torch.tanh, F.tanh), methods=("tanh",)),
    Activation("sin", Sin, odd=True, modules=(Sin,), functions=(torch.sin,), methods=("sin",)),
    Activation("gelu", nn.GELU, modules=(nn.GELU,), functions=(F.gelu,)),
    Activation("silu", nn.SiLU, modules=(nn.SiLU,), functions=(F.silu,)),
    Activation("sigmoid", nn.Sigmoid, modules=(nn.Sigmoid,), functions=(torch.sigmoid, F.sigmoid),
               methods=("sigmoid",)),
    Activation("softplus", nn.Softplus, modules=(nn.Softplus,), functions=(F.softplus,)),
    Activation("elu", nn.ELU, modules=(nn.ELU,), functions=(F.elu,)),
    Activation("identity", nn.Identity, linear=True, modules=(nn.Identity,)),
    *(_module(cls) for cls in (nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.SELU, nn.CELU, nn.LogSigmoid)),
    _module(nn.Softsign, odd=True),
    _module(nn.Tanhshrink, odd=True),
    _module(nn.Hardtanh, odd=True, odd_when=lambda m: m.min_val == -m.max_val),  # clamp(x, a, b): odd iff a = −b
    *(_torch_function(f) for f in ("exp", "log", "sqrt", "rsqrt", "reciprocal", "cos", "cosh", "square", "log1p",
                                    "expm1")),
    *(_torch_function(f, odd=True) for f in ("erf", "atan", "asinh", "sinh", "tan", "sign")),
]}


def builder_activations() -> tuple[str, ...]:
    """The names builders accept: the activations with a module."""
    return tuple(n for n, a in ACTIVATIONS.items() if a.module is not None)


def representative_activations() -> tuple[str, ...]:
    """One builder activation per nonlinear class family (the first listed): ``relu``, ``tanh``, ``gelu``."""
    seen: dict[tuple, str] = {}
    for n in builder_activations():
        act = ACTIVATIONS[n]
        if not act.linear:
            seen.setdefault(act.classes, n)
    return tuple(seen.values())


def activation(name: str) -> Activation:
    """The builder activation called ``name`` (case-insensitive)."""
    act = ACTIVATIONS.get(name.lower()) if isinstance(name, str) else None
    if act is None or act.module is None:
        raise UnknownActivationError(f"unknown activation {name!r}; choose one of {', '.join(builder_activations())}")
    return act
