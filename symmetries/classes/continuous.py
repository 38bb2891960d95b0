"""Continuous classes: orthogonal maps (polar-factor oracle) and invertible maps."""
from __future__ import annotations

import numpy as np
import torch

from symmetries._arrays import rng
from symmetries.elements import DenseElement
from symmetries.errors import ElementShapeError
from symmetries.classes.base import SymmetryClass, _kappa

__all__ = ["Orthogonal", "Invertible", "haar_stiefel"]


def haar_stiefel(g: np.random.Generator, m: int, n: int) -> torch.Tensor:
    """A Haar-random ``m×n`` matrix with orthonormal columns (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(g.standard_normal((m, n)))
    return torch.from_numpy(q * np.where(np.diag(r) < 0, -1.0, 1.0))


class Orthogonal(SymmetryClass):
    """``O`` with ``Oᵀ O = I`` (orthonormal columns when ``m > n``): writers ``W ← O W``,
    readers ``W ← W Oᵀ``. Exact on spaces reached only linearly and normalised by RMSNorm
    without gain (a transformer's residual stream after the LayerNorm rewrite)."""

    name = "orthogonal"
    exact_where = ("spaces reached only linearly and normalised by gain-free RMSNorm "
                   "(a residual stream after the LayerNorm rewrite); linear networks")
    rectangular = True
    orthogonal = True

    def random(self, n, *, m=None, seed=None):
        m = self._target(n, m)
        q = haar_stiefel(rng(seed), m, n)
        return DenseElement(q, q.T.contiguous())

    def contains(self, matrix, *, atol=1e-8):
        t = self._matrix(matrix)
        m, n = t.shape
        return m >= n and bool(torch.allclose(t.T @ t, torch.eye(n, dtype=t.dtype), atol=atol))

    def _contains_gather(self, g, atol):
        """Orthonormal columns in index form: ``Σ_{index[j]=i} a[j]² = 1``, and ``b = a`` (``Q = Tᵀ``)."""
        a, b = g.scales()
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            return False
        sums = torch.zeros(g.n, dtype=torch.float64).index_add_(0, g.index.cpu(), a * a)
        return bool(((sums - 1).abs() <= atol).all()) and bool(((a - b).abs() <= atol).all())

    def _inverse_ok(self, t, q, atol):
        """An orthogonal map's inverse is its transpose: ``Q = Tᵀ``."""
        return bool(torch.allclose(q, t.T, atol=atol, rtol=0))

    def project(self, score, *, backend="auto"):
        """Polar factor ``U Vᵀ`` of ``M = U Σ Vᵀ``: the orthogonal Procrustes solution."""
        t = self._matrix(score)
        if t.shape[0] < t.shape[1]:
            raise ElementShapeError(f"{self!r} needs a score matrix with m ≥ n, got {tuple(t.shape)}")
        u, _, vh = torch.linalg.svd(t, full_matrices=False)
        q = u @ vh
        return DenseElement(q, q.T.contiguous())


class Invertible(SymmetryClass):
    """``A ∈ GL(n)`` (full column rank when ``m > n``): ``out`` ``W ← A W``, ``in`` ``W ← W A⁻¹``.

    Exact where a space sits between two linear maps with nothing in between (attention
    query/key and value/output spaces per head, low-rank factors, linear networks).
    ``random`` draws ``U diag(s) Vᵀ`` with ``s`` log-uniform so that ``cond(A) ≤ cond``.
    """

    name = "invertible"
    exact_where = ("a space between two linear maps with nothing in between: per-head Q/K and V/O "
                   "spaces of attention, low-rank factors W = U V, linear networks")
    rectangular = True

    def random(self, n, *, m=None, seed=None, cond: float = 10.0):
        m = self._target(n, m)
        if cond < 1:
            raise ValueError(f"cond must be ≥ 1, got {cond}")
        g = rng(seed)
        u, v = haar_stiefel(g, m, n), haar_stiefel(g, n, n)
        s = torch.from_numpy(np.exp(g.uniform(-0.5, 0.5, size=n) * np.log(cond)))
        return DenseElement(u * s @ v.T, (v / s) @ u.T)

    def _contains_gather(self, g, atol):
        """Full column rank in index form: the ``in`` map undoes the ``out`` map (``Q T = I``)."""
        return g.undoes(atol)

    def _contains_dense(self, t, q, atol):
        """``Q T = I`` (which makes ``T`` full column rank) with a condition estimate below ``1/atol``
        — one product, no SVD: the same cutoff as :meth:`contains`, up to a factor n."""
        return t.shape[0] >= t.shape[1] and _kappa(t, q) * atol < 1 and self._inverse_ok(t, q, atol)

    def contains(self, matrix, *, atol=1e-8):
        t = self._matrix(matrix)
        m, n = t.shape
        if m < n or n == 0:
            return m >= n
        if not bool(torch.isfinite(t).all()):
            return False
        s = torch.linalg.svdvals(t)
        return bool(s[-1] > atol * max(1.0, float(s[0])))
