"""Dense maps: orthogonal and invertible elements (and any composition that leaves index form)."""
from __future__ import annotations

from typing import Any

import torch

from symmetries._arrays import like
from symmetries.errors import ElementShapeError, InvalidElementError
from symmetries.elements.base import Element

__all__ = ["DenseElement"]


def _left_inverse(t: torch.Tensor) -> torch.Tensor:
    """``T⁻¹`` (square) or ``T⁺`` (tall), refused with :class:`InvalidElementError` when ``T`` has
    non-finite entries or is numerically singular: the computed inverse must undo ``T`` on a probe
    vector to ``eps^¼`` of ``T``'s dtype (float64 1.2e-4, float32 1.9e-2) — a singular matrix misses
    by O(1), an invertible one by about cond(T)·eps."""
    m, n = t.shape
    if not bool(torch.isfinite(t).all()):
        raise InvalidElementError(f"the {m}×{n} matrix of a dense element has NaN or infinite entries")
    if m < n:  # a merge map (wide to narrow): its pseudo-inverse is a right inverse
        return torch.linalg.pinv(t)
    if m == n:
        q, info = torch.linalg.inv_ex(t)
        singular = bool(info.any())
    else:
        q, singular = torch.linalg.pinv(t), False
    if not singular and n:
        probe = torch.cos(torch.arange(1, n + 1, dtype=t.dtype, device=t.device) * 0.7548776662466927)
        miss = float(torch.linalg.vector_norm(q @ (t @ probe) - probe) / torch.linalg.vector_norm(probe))
        singular = not miss <= torch.finfo(t.dtype).eps ** 0.25
    if singular:
        raise InvalidElementError(f"the {m}×{n} matrix of a dense element is singular (rank-deficient): it has "
                                  f"no {'inverse' if m == n else 'left inverse'}, so it is no map of a symmetry class")
    return q


class DenseElement(Element):
    """``T`` (``m×n``) with left inverse ``Q`` (``n×m``): ``out`` ``W ← T W``, ``in`` ``W ← W Q``.

    ``in_matrix`` defaults to ``T⁻¹`` (square) or the pseudo-inverse ``T⁺`` (``m > n``).
    """

    __slots__ = ("matrix", "left_inverse")

    def __init__(self, matrix, in_matrix=None):
        t = torch.as_tensor(matrix)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.dim() != 2:
            raise ElementShapeError(f"a dense element needs a 2-D matrix, got shape {tuple(t.shape)}")
        m, n = t.shape
        q = _left_inverse(t) if in_matrix is None else torch.as_tensor(in_matrix).to(dtype=t.dtype, device=t.device)
        if tuple(q.shape) != (n, m):
            raise ElementShapeError(f"in_matrix must have shape {(n, m)}, got {tuple(q.shape)}")
        self.matrix, self.left_inverse = t, q

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    def _out(self, x):
        return like(self.matrix, x) @ x

    def _in(self, x):
        return like(self.left_inverse, x).T @ x

    def as_matrix(self) -> torch.Tensor:
        return self.matrix.detach().cpu().to(torch.float64)

    def in_matrix(self) -> torch.Tensor:
        return self.left_inverse.detach().cpu().to(torch.float64)

    def inverse(self) -> "DenseElement":
        return DenseElement(self.left_inverse, self.matrix)

    def _compose(self, other: Element) -> Element:
        if isinstance(other, DenseElement):
            b = other.to(self.matrix.device, self.matrix.dtype)
            return DenseElement(self.matrix @ b.matrix, b.left_inverse @ self.left_inverse)
        return super()._compose(other)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "DenseElement":
        d = DenseElement.__new__(DenseElement)
        d.matrix = self.matrix.to(device=device, dtype=dtype or self.matrix.dtype)
        d.left_inverse = self.left_inverse.to(device=device, dtype=dtype or self.left_inverse.dtype)
        return d
