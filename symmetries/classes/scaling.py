"""Positive diagonal scalings and their product with permutations (ReLU-type symmetries)."""
from __future__ import annotations

import numpy as np
import torch

from symmetries._arrays import rng
from symmetries.elements import GatherElement
from symmetries.classes.base import SymmetryClass
from symmetries.classes.discrete import monomial_parts

__all__ = ["PositiveScaling", "PermutationScaling"]


def _log_uniform(g: np.random.Generator, n: int, spread: float) -> np.ndarray:
    if spread < 1:
        raise ValueError(f"spread must be ≥ 1, got {spread}")
    return np.exp(g.uniform(-np.log(spread), np.log(spread), size=n))


class PositiveScaling(SymmetryClass):
    """``D = diag(c)``, ``c > 0``: incoming row and bias × c, outgoing column × 1/c.

    Exact through positively homogeneous activations (ReLU, leaky ReLU, PReLU, ``|x|``).
    ``random`` draws ``c`` log-uniformly in ``[1/spread, spread]``.
    """

    name = "positive scaling"
    exact_where = "positively homogeneous activations: ReLU, leaky ReLU, PReLU, |x|"
    monomial = True

    def random(self, n, *, m=None, seed=None, spread: float = 4.0):
        self._target(n, m)
        return GatherElement.monomial(np.arange(n), _log_uniform(rng(seed), n, spread))

    def contains(self, matrix, *, atol=1e-8):
        t = self._matrix(matrix)
        if t.shape[0] != t.shape[1]:
            return False
        d = torch.diagonal(t)
        return bool(torch.allclose(t, torch.diag(d), atol=atol)) and bool((d > atol).all())

    def _contains_gather(self, g, atol):
        return g.is_diagonal() and bool((g.scales()[0] > atol).all()) and g.undoes(atol)


class PermutationScaling(SymmetryClass):
    """``D P`` (positive monomial maps): the full symmetry group of a ReLU layer."""

    name = "permutation × positive scaling"
    exact_where = "positively homogeneous activations: ReLU, leaky ReLU, PReLU, |x|"
    monomial = True

    def random(self, n, *, m=None, seed=None, spread: float = 4.0):
        self._target(n, m)
        g = rng(seed)
        return GatherElement.monomial(g.permutation(n), _log_uniform(g, n, spread))

    def contains(self, matrix, *, atol=1e-8):
        parts = monomial_parts(self._matrix(matrix), atol)
        return parts is not None and bool((parts[1] > atol).all())

    def _contains_gather(self, g, atol):
        return g.bijective and bool((g.scales()[0] > atol).all()) and g.undoes(atol)
