"""Dense maps: orthogonal and invertible elements (and any composition that leaves index form)."""
from __future__ import annotations

from typing import Any

import torch

from symmetries._arrays import like
from symmetries.errors import ElementShapeError
from symmetries.elements.base import Element

__all__ = ["DenseElement"]


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
        if in_matrix is None:
            in_matrix = torch.linalg.inv(t) if m == n else torch.linalg.pinv(t)
        q = torch.as_tensor(in_matrix).to(dtype=t.dtype, device=t.device)
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
