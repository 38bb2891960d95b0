"""How a parameter axis is touched by the map ``T`` of the space it indexes.

* ``out`` — the tensor produces the space: ``W ← T · W`` along the axis,
  ``W'[..j..] = Σ_i T[j,i] W[..i..]``.
* ``in``  — the tensor consumes the space: ``W ← W · T⁻¹`` along the axis,
  ``W'[..j..] = Σ_i W[..i..] T⁻¹[i,j]`` (``T⁻¹`` is the element's left inverse
  for rectangular embeddings, e.g. ``Bᵀ`` for a semi-permutation).
* ``var`` — a per-unit variance of a produced quantity (BatchNorm
  ``running_var``): ``v'[j] = Σ_i T[j,i]² v[i]``; defined only for monomial maps.
"""
from __future__ import annotations

import enum

from symmetries.errors import ArgumentError

__all__ = ["Role"]


class Role(str, enum.Enum):
    OUT = "out"
    IN = "in"
    VAR = "var"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, role: "Role | str") -> "Role":
        try:
            return cls(role)
        except ValueError:
            valid = ", ".join(repr(r.value) for r in cls)
            raise ArgumentError(f"unknown role {role!r}; expected one of {valid}", argument="role") from None
