"""Finite classes: the trivial group, permutations, sign flips and signed permutations."""
from __future__ import annotations

import numpy as np
import torch

from symmetries._arrays import rng
from symmetries.assignment import assignment_permutation
from symmetries.elements import GatherElement
from symmetries.errors import ElementShapeError
from symmetries.classes.base import SymmetryClass

__all__ = ["Trivial", "Permutation", "SignFlip", "SignedPermutation", "monomial_parts"]


def unit_scales(g: GatherElement, atol: float) -> bool:
    """Whether every ``out`` scale of ``g`` is 1 (to ``atol``)."""
    return g.out_scale is None or bool(((g.scales()[0] - 1).abs() <= atol).all())


def sign_scales(g: GatherElement, atol: float) -> bool:
    """Whether every ``out`` scale of ``g`` is ±1 (to ``atol``)."""
    return g.out_scale is None or bool(((g.scales()[0].abs() - 1).abs() <= atol).all())


def monomial_parts(t: torch.Tensor, atol: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(perm, values)`` with ``t[j, perm[j]] = values[j]`` if ``t`` is square monomial, else ``None``."""
    if t.shape[0] != t.shape[1]:
        return None
    nz = t.abs() > atol
    if not (bool((nz.sum(1) == 1).all()) and bool((nz.sum(0) == 1).all())):
        return None
    perm = nz.to(torch.int8).argmax(1)
    return perm, t[torch.arange(t.shape[0]), perm]


class Trivial(SymmetryClass):
    """Only the identity: a space with no symmetry."""

    name = "trivial"
    exact_where = "everywhere (the identity changes nothing)"
    monomial = True
    orthogonal = True

    def random(self, n, *, m=None, seed=None):
        self._target(n, m)
        return GatherElement.identity(n)

    def contains(self, matrix, *, atol=1e-8):
        t = self._matrix(matrix)
        return t.shape[0] == t.shape[1] and torch.allclose(t, torch.eye(t.shape[0], dtype=t.dtype), atol=atol)

    def _contains_gather(self, g, atol):
        return g.is_diagonal() and unit_scales(g, atol) and g.undoes(atol)

    def project(self, score, *, backend="auto"):
        t = self._matrix(score)
        if t.shape[0] != t.shape[1]:
            raise ElementShapeError(f"{self!r} needs a square score matrix, got {tuple(t.shape)}")
        return GatherElement.identity(t.shape[0])


class Permutation(SymmetryClass):
    """``P``: reorders units. ``W1 ← P W1``, ``b1 ← P b1``, ``W2 ← W2 Pᵀ``."""

    name = "permutation"
    exact_where = ("any elementwise activation, dropout, and BatchNorm whose parameters and running "
                   "statistics follow the channel")
    monomial = True
    orthogonal = True

    def random(self, n, *, m=None, seed=None):
        self._target(n, m)
        return GatherElement(rng(seed).permutation(n), n)

    def contains(self, matrix, *, atol=1e-8):
        t = self._matrix(matrix)
        parts = monomial_parts(t, atol)
        return parts is not None and bool(torch.allclose(parts[1], torch.ones_like(parts[1]), atol=atol))

    def _contains_gather(self, g, atol):
        return g.bijective and unit_scales(g, atol) and g.undoes(atol)

    def project(self, score, *, backend="auto"):
        # a CPU float32 score goes to the assignment as it is (its float64 cost is its exact copy): a float64
        # copy here as well was a second 72 MiB beside a 3072² score
        plain = isinstance(score, torch.Tensor) and score.dim() == 2 and score.device.type == "cpu" \
            and score.dtype in (torch.float32, torch.float64)
        t = score.detach() if plain else self._matrix(score)
        if t.shape[0] != t.shape[1]:
            raise ElementShapeError(f"{self!r} needs a square score matrix, got {tuple(t.shape)}; "
                                    f"use SemiPermutation to embed a narrow space into a wide one")
        return GatherElement(assignment_permutation(t, backend=backend), t.shape[0])


class SignFlip(SymmetryClass):
    """``S = diag(±1)``: exact through odd activations (tanh, sin): ``W1 ← S W1``, ``W2 ← W2 S``."""

    name = "sign flip"
    exact_where = "odd activations (tanh, sin, identity)"
    monomial = True
    orthogonal = True

    def random(self, n, *, m=None, seed=None):
        self._target(n, m)
        s = rng(seed).choice([-1.0, 1.0], size=n)
        return GatherElement.monomial(np.arange(n), s)

    def contains(self, matrix, *, atol=1e-8):
        t = self._matrix(matrix)
        if t.shape[0] != t.shape[1]:
            return False
        d = torch.diagonal(t)
        return (bool(torch.allclose(t, torch.diag(d), atol=atol))
                and bool(torch.allclose(d.abs(), torch.ones_like(d), atol=atol)))

    def _contains_gather(self, g, atol):
        return g.is_diagonal() and sign_scales(g, atol) and g.undoes(atol)

    def project(self, score, *, backend="auto"):
        t = self._matrix(score)
        if t.shape[0] != t.shape[1]:
            raise ElementShapeError(f"{self!r} needs a square score matrix, got {tuple(t.shape)}")
        s = torch.where(torch.diagonal(t) < 0, -1.0, 1.0).to(torch.float64)
        return GatherElement.monomial(torch.arange(t.shape[0]), s)


class SignedPermutation(SymmetryClass):
    """``S P``: permutation times sign flips; exact through odd activations."""

    name = "signed permutation"
    exact_where = "odd activations (tanh, sin, identity)"
    monomial = True
    orthogonal = True

    def random(self, n, *, m=None, seed=None):
        self._target(n, m)
        g = rng(seed)
        return GatherElement.monomial(g.permutation(n), g.choice([-1.0, 1.0], size=n))

    def contains(self, matrix, *, atol=1e-8):
        parts = monomial_parts(self._matrix(matrix), atol)
        return parts is not None and bool(torch.allclose(parts[1].abs(), torch.ones_like(parts[1]), atol=atol))

    def _contains_gather(self, g, atol):
        return g.bijective and sign_scales(g, atol) and g.undoes(atol)

    def project(self, score, *, backend="auto"):
        t = self._matrix(score)
        if t.shape[0] != t.shape[1]:
            raise ElementShapeError(f"{self!r} needs a square score matrix, got {tuple(t.shape)}")
        perm = assignment_permutation(t.abs(), backend=backend)
        vals = t[torch.arange(t.shape[0]), torch.as_tensor(perm)]
        return GatherElement.monomial(perm, torch.where(vals < 0, -1.0, 1.0).to(torch.float64))
