"""The class protocol: a group (or monoid of embeddings) of maps of a space.

A class is a size-free description (``Permutation()``); sizes come with each call.
Every class offers ``identity(n)``, a seeded ``random(n, m=None, seed=…)``, a
membership test ``contains(matrix)``, and — where one exists — the linear
maximisation oracle ``project(M) = argmax_{T ∈ class} ⟨T, M⟩`` that solvers use.
"""
from __future__ import annotations

import abc
import math
from typing import ClassVar

import numpy as np
import torch

from symmetries._arrays import as_float64
from symmetries.elements import Element, GatherElement, HeadElement
from symmetries.errors import ElementShapeError, NoOracleError

__all__ = ["SymmetryClass", "element_tolerance"]


def _element_dtype(el: Element) -> torch.dtype:
    """The floating dtype an element stores its numbers in (the least precise of a head map's)."""
    if isinstance(el, HeadElement):
        return max((_element_dtype(e) for e in el.inner), key=lambda d: torch.finfo(d).eps)
    for attr in ("matrix", "out_scale", "out_weight", "re"):
        v = getattr(el, attr, None)
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.dtype
    return torch.float64


def _kappa(t: torch.Tensor, q: torch.Tensor) -> float:
    """``max(1, ‖T‖_F ‖Q‖_F / n)``: a cheap condition estimate of ``T`` given its left inverse ``Q``."""
    return max(1.0, float(torch.linalg.matrix_norm(t) * torch.linalg.matrix_norm(q)) / max(t.shape[1], 1))


def element_tolerance(el: Element) -> float:
    """Membership tolerance for ``el``: ``√eps`` of the dtype it stores its numbers in
    (float64 1.5e-8, float32 3.5e-4, bfloat16/float16 ≈ 0.03–0.09)."""
    return math.sqrt(torch.finfo(_element_dtype(el)).eps)


class SymmetryClass(abc.ABC):
    """Base of every symmetry class.

    Class attributes describe the algebra:

    * ``is_group`` — closed under inverse (``False`` for semi-permutations);
    * ``rectangular`` — elements may map a size ``n`` to a larger ``m``;
    * ``monomial`` — elements are index maps (allowing the ``var`` role);
    * ``orthogonal`` — ``T⁻ᵀ = T`` (allowing tied ``out``/``in`` axes);
    * ``exact_where`` — where the class leaves a network's function unchanged.
    """

    name: ClassVar[str]
    exact_where: ClassVar[str]
    is_group: ClassVar[bool] = True
    rectangular: ClassVar[bool] = False
    monomial: ClassVar[bool] = False
    orthogonal: ClassVar[bool] = False

    # -- identity -------------------------------------------------------------------------
    def _params(self) -> tuple:
        return ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._params() == other._params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._params()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __le__(self, other: "SymmetryClass") -> bool:
        """``a <= b``: every element of ``a`` is an element of ``b`` (the class lattice)."""
        from symmetries.lattice import is_subclass
        return is_subclass(self, other)

    def __lt__(self, other: "SymmetryClass") -> bool:
        return self != other and self <= other

    def __mul__(self, other: "SymmetryClass") -> "SymmetryClass":
        """Monomial products: ``Permutation() * PositiveScaling()`` is ``PermutationScaling()``."""
        from symmetries.lattice import product
        return product(self, other)

    __rmul__ = __mul__

    # -- the interface --------------------------------------------------------------------
    def identity(self, n: int) -> Element:
        return GatherElement.identity(n)

    @abc.abstractmethod
    def random(self, n: int, *, m: int | None = None,
               seed: int | np.random.Generator | None = None) -> Element:
        """A random element mapping size ``n`` to ``m`` (default ``n``), reproducible from ``seed``."""

    @abc.abstractmethod
    def contains(self, matrix, *, atol: float = 1e-8) -> bool:
        """Whether ``matrix`` (array, tensor or element) is an element of the class."""

    def contains_element(self, element: Element, *, atol: float | None = None) -> bool:
        """Whether ``element`` is an element of the class — both maps it acts with: ``T`` (role
        ``out``) passes :meth:`contains`, and its left inverse ``Q`` (role ``in``) is the class's
        own (``Q T = I``; ``Tᵀ`` for orthogonal maps, ``Bᵀ`` for semi-permutations). Non-finite
        numbers are never members. Index-form elements of the built-in classes are checked from
        their index vector and scales in O(n) (no dense matrix); others densely.
        ``atol`` defaults to :func:`element_tolerance` (scaled to the element's dtype)."""
        atol = element_tolerance(element) if atol is None else atol
        if isinstance(element, GatherElement):
            verdict = self._contains_gather(element, atol)
            if verdict is not None:
                return verdict
        t, q = element.as_matrix(), element.in_matrix()
        if not (bool(torch.isfinite(t).all()) and bool(torch.isfinite(q).all())):
            return False
        return self._contains_dense(t, q, atol)

    def _contains_dense(self, t: torch.Tensor, q: torch.Tensor, atol: float) -> bool:
        """Membership of the finite maps ``T`` and ``Q`` (float64): :meth:`contains` and the inverse rule."""
        return self.contains(t, atol=atol) and self._inverse_ok(t, q, atol)

    def _contains_gather(self, g: GatherElement, atol: float) -> bool | None:
        """Structural membership of an index-form element, or ``None`` to check it densely."""
        return None

    def _inverse_ok(self, t: torch.Tensor, q: torch.Tensor, atol: float) -> bool:
        """``Q T = I`` to ``atol · κ`` with ``κ = max(1, ‖T‖_F ‖Q‖_F / n)`` (1 for orthogonal maps,
        at most about cond(T) otherwise: the round-off of a computed inverse grows with it)."""
        n = t.shape[1]
        return bool(((q @ t - torch.eye(n, dtype=t.dtype)).abs() <= atol * _kappa(t, q)).all())

    def project(self, score, *, backend: str = "auto") -> Element:
        """``argmax_{T ∈ class} ⟨T, M⟩`` for a score matrix ``M`` of shape ``(m, n)``."""
        raise NoOracleError(f"{self!r} is unbounded and has no linear maximisation oracle; "
                            f"solvers use its closed-form or least-squares update instead")

    @property
    def has_oracle(self) -> bool:
        """Whether ``project`` exists (bounded classes); unbounded ones raise ``NoOracleError``."""
        return type(self).project is not SymmetryClass.project

    # -- helpers for subclasses --------------------------------------------------------
    def _target(self, n: int, m: int | None) -> int:
        if n < 0:
            raise ElementShapeError(f"size must be non-negative, got {n}")
        m = n if m is None else int(m)
        if m != n and not self.rectangular:
            raise ElementShapeError(f"{self!r} maps a space to itself; got m={m} ≠ n={n}")
        if m < n:
            raise ElementShapeError(f"{self!r} embeds a space into one at least as large; got m={m} < n={n}")
        return m

    @staticmethod
    def _matrix(x) -> torch.Tensor:
        t = as_float64(x)
        if t.dim() != 2:
            raise ElementShapeError(f"expected a matrix, got shape {tuple(t.shape)}")
        return t
