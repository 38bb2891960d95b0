"""The element protocol: a linear map ``T: R^n → R^m`` of a hidden space.

An element knows two matrices: ``T`` (``as_matrix()``, shape ``(m, n)``) used by
the ``out`` role, and a left inverse ``Q`` (``in_matrix()``, shape ``(n, m)``,
``Q T = I_n``) used by the ``in`` role. For square groups ``Q = T⁻¹``; for a
semi-permutation ``Q = Bᵀ``; for orthonormal columns ``Q = Tᵀ``.
Composition ``a @ b`` is ``a ∘ b`` (``b`` acts first): matrices ``T_a T_b``
and ``Q_b Q_a``.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch

from symmetries._arrays import Array, restore, to_tensor
from symmetries.errors import ArgumentTypeError, ElementShapeError
from symmetries.roles import Role

__all__ = ["Element", "moved_apply"]


def moved_apply(t: torch.Tensor, axis: int, fn) -> torch.Tensor:
    """Apply ``fn`` to ``t`` viewed as a matrix ``(size along axis, rest)`` and restore the layout."""
    moved = t.movedim(axis, 0)
    rest = moved.shape[1:]
    out = fn(moved.reshape(moved.shape[0], -1))
    return out.reshape((out.shape[0], *rest)).movedim(0, axis)


class Element(abc.ABC):
    """A map of a space. Subclasses implement the three roles on an axis moved to the front."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """``(m, n)``: the element maps a space of size ``n`` to one of size ``m``."""

    # -- the three roles on a (n, k) matrix; return (m, k) -------------------------------
    @abc.abstractmethod
    def _out(self, x: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _in(self, x: torch.Tensor) -> torch.Tensor: ...

    def _var(self, x: torch.Tensor) -> torch.Tensor:
        raise ElementShapeError(
            f"role 'var' needs a monomial map (permutation, scaling, signs, semi-permutation); "
            f"{type(self).__name__} is not one")

    @abc.abstractmethod
    def as_matrix(self) -> torch.Tensor:
        """Dense ``T`` of shape ``(m, n)`` (float64; for inspection, never the hot path)."""

    @abc.abstractmethod
    def in_matrix(self) -> torch.Tensor:
        """Dense left inverse ``Q`` of shape ``(n, m)`` used by the ``in`` role."""

    @abc.abstractmethod
    def inverse(self) -> "Element":
        """The map undoing this one: ``T⁻¹`` for groups, the merge map for embeddings."""

    @abc.abstractmethod
    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "Element":
        """A copy whose floating data live on ``device`` with ``dtype``."""

    # -- public API ------------------------------------------------------------------------
    def apply(self, x: Array, axis: int = 0, role: Role | str = Role.OUT) -> Array:
        """Transform ``x`` (torch tensor or numpy array) along ``axis`` in ``role``.

        ``out``: ``x ← T x`` along the axis; ``in``: ``x ← x Q``; ``var``: ``x ← (T∘T) x``.
        Returns a new array of the input's kind; the input is never modified.
        """
        role = Role.parse(role)
        t, was_numpy = to_tensor(x)
        if t.dim() == 0:
            raise ElementShapeError("cannot transform a 0-dimensional tensor along an axis")
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer, torch.Tensor)) or \
                (isinstance(axis, torch.Tensor) and (axis.dim() or axis.is_floating_point())):
            raise ArgumentTypeError(f"axis must be an integer, got {axis!r}", argument="axis")
        axis = int(axis)
        if not -t.dim() <= axis < t.dim():
            raise ElementShapeError(f"axis {axis} is out of range for a tensor of shape {tuple(t.shape)}")
        axis %= t.dim()
        m, n = self.shape
        if t.shape[axis] != n:
            raise ElementShapeError(
                f"element maps a space of size {n} but the tensor has size {t.shape[axis]} "
                f"along axis {axis} (shape {tuple(t.shape)})")
        return restore(moved_apply(t, axis, lambda rows: self.act(rows, role)), was_numpy)

    def act(self, x: torch.Tensor, role: Role | str = Role.OUT) -> torch.Tensor:
        """The map on the rows of a matrix: ``x`` is ``(n, k)`` (row ``i`` = unit ``i`` of the space);
        returns ``(m, k)`` — ``out``: ``T x``, ``in``: ``Qᵀ x``, ``var``: ``(T∘T) x``. The building block
        of :meth:`apply` for solvers that hold tensors with the space's axis already moved first."""
        role = Role.parse(role)
        if x.dim() != 2 or x.shape[0] != self.shape[1]:
            raise ElementShapeError(f"act needs an ({self.shape[1]}, k) matrix (the space's units as rows), "
                                    f"got shape {tuple(x.shape)}")
        return {Role.OUT: self._out, Role.IN: self._in, Role.VAR: self._var}[role](x)

    def __matmul__(self, other: "Element") -> "Element":
        if not isinstance(other, Element):
            return NotImplemented
        if other.shape[0] != self.shape[1]:
            raise ElementShapeError(
                f"cannot compose: right operand maps to size {other.shape[0]}, "
                f"left operand expects size {self.shape[1]}")
        return self._compose(other)

    def _compose(self, other: "Element") -> "Element":
        from symmetries.elements.dense import DenseElement
        return DenseElement(self.as_matrix() @ other.as_matrix(), other.in_matrix() @ self.in_matrix())

    def allclose(self, other: "Element", atol: float = 1e-10) -> bool:
        """Whether both maps (``T`` and ``Q``) agree entrywise to ``atol``."""
        return (self.shape == other.shape
                and torch.allclose(self.as_matrix(), other.as_matrix(), atol=atol, rtol=0)
                and torch.allclose(self.in_matrix(), other.in_matrix(), atol=atol, rtol=0))

    def is_identity(self, atol: float = 1e-10) -> bool:
        m, n = self.shape
        eye = torch.eye(n, dtype=torch.float64)
        return m == n and torch.allclose(self.as_matrix(), eye, atol=atol, rtol=0)

    @property
    def size(self) -> int:
        """Size of the space the element acts on (``n``)."""
        return self.shape[1]

    def __repr__(self) -> str:
        m, n = self.shape
        return f"{type(self).__name__}({m}×{n})"
