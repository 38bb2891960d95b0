"""Index-vector maps: permutations, scalings, signs, their products, semi-permutations and merges.

``GatherElement(index, a, b)``: ``T[j, index[j]] = a[j]`` and the ``in`` role reads
``W'[..j..] = b[j] · W[..index[j]..]``. A monomial map has ``b = 1/a``; a
semi-permutation (split) has ``a = fractions`` and ``b = 1[a > 0]``.

``ScatterElement(index, w, v)`` is the dual (a merge): ``out`` sums
``W'[i] = Σ_{index[j]=i} w[j] W[j]`` and ``in`` sums with weights ``v``.
"""
from __future__ import annotations

from typing import Any

import torch

from symmetries._arrays import like
from symmetries.errors import ElementShapeError
from symmetries.elements.base import Element

__all__ = ["GatherElement", "ScatterElement"]


def _scale(x) -> torch.Tensor | None:
    """A flat floating vector (float64 unless already floating), or ``None`` for all ones."""
    if x is None:
        return None
    t = torch.as_tensor(x)
    return (t if t.is_floating_point() else t.to(torch.float64)).reshape(-1)


def _mul(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a * b


class GatherElement(Element):
    """``T[j, index[j]] = out_scale[j]`` (index vector in the hot path, never a dense matrix)."""

    __slots__ = ("index", "n", "out_scale", "in_scale", "_bijective", "_diagonal")

    def __init__(self, index, n: int | None = None, out_scale=None, in_scale=None):
        self.index = torch.as_tensor(index).to(torch.long).reshape(-1)
        m = self.index.numel()
        self.n = m if n is None else int(n)
        if m and (int(self.index.min()) < 0 or int(self.index.max()) >= self.n):
            raise ElementShapeError(f"index entries must lie in [0, {self.n}); got range "
                                    f"[{int(self.index.min())}, {int(self.index.max())}]")
        self.out_scale = _scale(out_scale)
        self.in_scale = _scale(in_scale)
        for name, v in (("out_scale", self.out_scale), ("in_scale", self.in_scale)):
            if v is not None and v.numel() != m:
                raise ElementShapeError(f"{name} has {v.numel()} entries, index has {m}")
        self._bijective: bool | None = None
        self._diagonal: bool | None = None

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def identity(cls, n: int) -> "GatherElement":
        return cls(torch.arange(n), n)

    @classmethod
    def monomial(cls, perm, scale=None) -> "GatherElement":
        """``T = D P``: ``T[j, perm[j]] = scale[j]`` with ``in`` rule ``1/scale``."""
        scale = None if scale is None else torch.as_tensor(scale, dtype=torch.float64)
        if scale is not None and bool((scale == 0).any()):
            raise ElementShapeError("a monomial map needs non-zero scales")
        return cls(perm, None, scale, None if scale is None else 1.0 / scale)

    @classmethod
    def split(cls, source, fractions, n: int) -> "GatherElement":
        """Semi-permutation ``P̃``: wide unit ``j`` copies narrow unit ``source[j]`` with weight
        ``fractions[j]`` (``out``); ``in`` reads ``Bᵀ`` with ``B = 1[P̃ > 0]``."""
        fractions = torch.as_tensor(fractions, dtype=torch.float64)
        return cls(source, n, fractions, (fractions > 0).to(torch.float64))

    # -- properties ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.index.numel(), self.n

    @property
    def bijective(self) -> bool:
        if self._bijective is None:
            m, n = self.shape
            self._bijective = m == n and bool((torch.bincount(self.index.cpu(), minlength=n) == 1).all())
        return self._bijective

    # -- structure (membership checks in O(m), no dense matrix) ------------------------------
    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)``: ``out_scale`` and ``in_scale`` as CPU float64 vectors (ones where ``None``)."""
        ones = torch.ones(self.index.numel(), dtype=torch.float64)
        f = lambda v: ones if v is None else v.detach().cpu().to(torch.float64)  # noqa: E731
        return f(self.out_scale), f(self.in_scale)

    def is_diagonal(self) -> bool:
        """Whether ``index`` is ``0, 1, …, n−1`` (a diagonal map: scalings, signs, the identity; computed once)."""
        if self._diagonal is None:
            m, n = self.shape
            self._diagonal = m == n and bool(torch.equal(self.index.cpu(), torch.arange(n)))
        return self._diagonal

    def undoes(self, atol: float) -> bool:
        """Whether the scales are finite and the ``in`` map undoes the ``out`` map, ``Q T = I``:
        ``Σ_{j: index[j] = i} a[j] b[j] = 1`` for every unit ``i`` (to ``atol``)."""
        a, b = self.scales()
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            return False
        sums = torch.zeros(self.n, dtype=torch.float64).index_add_(0, self.index.cpu(), a * b)
        return bool(((sums - 1).abs() <= atol).all())

    # -- roles ---------------------------------------------------------------------------
    def _gather(self, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """``x`` re-indexed by ``index`` and row-scaled (a scaling only scales: the product is the new tensor)."""
        y = x if scale is not None and self.is_diagonal() else x.index_select(0, self.index.to(x.device))
        if scale is not None:
            y = y * like(scale, y).unsqueeze(1)
        return y

    def _out(self, x):
        return self._gather(x, self.out_scale)

    def _in(self, x):
        return self._gather(x, self.in_scale)

    def _var(self, x):
        return self._gather(x, None if self.out_scale is None else self.out_scale ** 2)

    # -- algebra -------------------------------------------------------------------------
    def as_matrix(self) -> torch.Tensor:
        return self._dense(self.out_scale)

    def in_matrix(self) -> torch.Tensor:
        return self._dense(self.in_scale).T.contiguous()

    def _dense(self, scale) -> torch.Tensor:
        m, n = self.shape
        t = torch.zeros(m, n, dtype=torch.float64)
        vals = torch.ones(m, dtype=torch.float64) if scale is None else scale.detach().cpu().to(torch.float64)
        t[torch.arange(m), self.index.cpu()] = vals
        return t

    def inverse(self) -> Element:
        if self.bijective:
            inv = torch.empty_like(self.index)
            inv[self.index] = torch.arange(self.index.numel(), device=self.index.device)
            a = None if self.out_scale is None else self.out_scale[inv]
            b = None if self.in_scale is None else self.in_scale[inv]
            # T⁻¹[i, j] = 1/a[j] at i = index[j]; its left inverse is T itself.
            return GatherElement(inv, self.n, b, a)
        return ScatterElement(self.index, self.n, out_weight=self.in_scale, in_weight=self.out_scale)

    def _compose(self, other: Element) -> Element:
        if isinstance(other, GatherElement):
            idx = self.index.to(other.index.device)
            pick = lambda v: None if v is None else v[idx]  # noqa: E731
            return GatherElement(other.index[idx], other.n,
                                 _mul(self.out_scale, pick(other.out_scale)),
                                 _mul(self.in_scale, pick(other.in_scale)))
        return super()._compose(other)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "GatherElement":
        f = (lambda v: None if v is None else v.to(device=device, dtype=dtype or v.dtype))
        g = GatherElement.__new__(GatherElement)
        g.index, g.n = self.index.to(device=device), self.n
        g.out_scale, g.in_scale, g._bijective = f(self.out_scale), f(self.in_scale), self._bijective
        g._diagonal = self._diagonal
        return g

    def __repr__(self) -> str:
        m, n = self.shape
        kind = "scaled " if self.out_scale is not None else ""
        return f"GatherElement({kind}{m}×{n})"


class ScatterElement(Element):
    """Merge map: ``out`` ``W'[i] = Σ_{index[j]=i} w[j] W[j]``; ``in`` ``W'[i] = Σ_{index[j]=i} v[j] W[j]``.

    The inverse of a split ``GatherElement``; exact on the image of that split (``Bᵀ P̃ = I``).
    """

    __slots__ = ("index", "m", "out_weight", "in_weight")

    def __init__(self, index, m: int, out_weight=None, in_weight=None):
        self.index = torch.as_tensor(index).to(torch.long).reshape(-1)
        self.m = int(m)
        if self.index.numel() and (int(self.index.min()) < 0 or int(self.index.max()) >= self.m):
            raise ElementShapeError(f"index entries must lie in [0, {self.m})")
        self.out_weight = _scale(out_weight)
        self.in_weight = _scale(in_weight)

    @property
    def shape(self) -> tuple[int, int]:
        return self.m, self.index.numel()

    def _scatter(self, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        if w is not None:
            x = x * like(w, x).unsqueeze(1)
        out = torch.zeros((self.m, x.shape[1]), dtype=x.dtype, device=x.device)
        return out.index_add_(0, self.index.to(x.device), x)

    def _out(self, x):
        return self._scatter(x, self.out_weight)

    def _in(self, x):
        return self._scatter(x, self.in_weight)

    def as_matrix(self) -> torch.Tensor:
        return GatherElement(self.index, self.m, self.out_weight).as_matrix().T.contiguous()

    def in_matrix(self) -> torch.Tensor:
        return GatherElement(self.index, self.m, self.in_weight).as_matrix()

    def inverse(self) -> GatherElement:
        return GatherElement(self.index, self.m, out_scale=self.in_weight, in_scale=self.out_weight)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "ScatterElement":
        f = (lambda v: None if v is None else v.to(device=device, dtype=dtype or v.dtype))
        return ScatterElement(self.index.to(device=device), self.m, f(self.out_weight), f(self.in_weight))
