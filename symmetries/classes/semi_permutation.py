"""Semi-permutations: split units of a narrow space into fractions in a wider one."""
from __future__ import annotations

import numpy as np
import torch

from symmetries._arrays import rng
from symmetries.assignment import solve_assignment
from symmetries.elements import GatherElement
from symmetries.errors import ElementShapeError
from symmetries.classes.base import SymmetryClass

__all__ = ["SemiPermutation"]


class SemiPermutation(SymmetryClass):
    """``P̃ ∈ R^{m×n}``, ``m ≥ n``: columns non-negative summing to 1, rows with at most one
    positive entry. ``W1 ← P̃ W1``, ``b1 ← P̃ b1``, ``W2 ← W2 Bᵀ`` with ``B = 1[P̃ > 0]``.

    Unit ``i`` is split into the units ``j`` with ``P̃[j, i] > 0``; incoming weights are
    fractions, outgoing weights copies. Exact for linearly decomposable activations
    (``f(x) = f(αx) + f((1−α)x)``: ReLU, PReLU, ``|x|``, identity) and across attention
    heads. The inverse is the merge map (exact on the image, ``Bᵀ P̃ = I``); the square
    case is a permutation.
    """

    name = "semi-permutation"
    exact_where = ("linearly decomposable activations f(x) = f(αx) + f((1−α)x): ReLU, PReLU, |x|, "
                   "identity; attention heads")
    is_group = False
    rectangular = True
    monomial = True

    def random(self, n, *, m=None, seed=None):
        m = self._target(n, m)
        g = rng(seed)
        if n == 0 and m > 0:
            raise ElementShapeError("cannot split an empty space into a non-empty one")
        source = np.concatenate([np.arange(n), g.integers(0, max(n, 1), size=m - n)])[g.permutation(m)]
        weight = g.uniform(0.25, 1.0, size=m)
        fractions = weight / np.bincount(source, weights=weight, minlength=n)[source]
        return GatherElement.split(source, fractions, n)

    def contains(self, matrix, *, atol=1e-8):
        t = self._matrix(matrix)
        m, n = t.shape
        if m < n or bool((t < -atol).any()):
            return False
        ones = torch.ones(n, dtype=t.dtype)
        return (bool(torch.allclose(t.sum(0), ones, atol=atol))
                and bool(((t > atol).sum(1) <= 1).all()))

    def _contains_gather(self, g, atol):
        """Fractions ``a ≥ 0`` summing to 1 over each narrow unit's copies, and ``b = 1[a > 0]``."""
        a, b = g.scales()
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())) or bool((a < -atol).any()):
            return False
        sums = torch.zeros(g.n, dtype=torch.float64).index_add_(0, g.index.cpu(), a)
        return (bool(((sums - 1).abs() <= atol).all())
                and bool(((b - (a > atol).to(torch.float64)).abs() <= atol).all()))

    def _inverse_ok(self, t, q, atol):
        """The merge map reads copies: ``Q = Bᵀ`` with ``B = 1[P̃ > 0]``."""
        return bool(torch.allclose(q, (t > atol).to(t.dtype).T, atol=atol, rtol=0))

    def project(self, score, *, backend="auto"):
        """Rectangular assignment: each narrow unit goes whole to its best wide unit; the other
        wide units carry zero (their row of ``P̃`` is empty)."""
        t = self._matrix(score)
        m, n = t.shape
        if m < n:
            raise ElementShapeError(f"{self!r} needs a score matrix with m ≥ n, got {tuple(t.shape)}")
        rows, cols = solve_assignment(t, backend=backend)
        source = t.argmax(1).numpy() if n else np.zeros(m, dtype=np.int64)
        fractions = np.zeros(m)
        source[rows] = cols
        fractions[rows] = 1.0
        return GatherElement.split(source, fractions, n)
