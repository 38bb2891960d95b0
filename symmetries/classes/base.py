"""The class protocol: a group (or monoid of embeddings) of maps of a space.

A class is a size-free description (``Permutation()``); sizes come with each call.
Every class offers ``identity(n)``, a seeded ``random(n, m=None, seed=…)``, a
membership test ``contains(matrix)``, and — where one exists — the linear
maximisation oracle ``project(M) = argmax_{T ∈ class} ⟨T, M⟩`` that solvers use.
"""
from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np
import torch

from symmetries._arrays import as_float64
from symmetries.elements import Element, GatherElement
from symmetries.errors import ElementShapeError, NoOracleError

__all__ = ["SymmetryClass"]


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
