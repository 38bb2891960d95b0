"""Head-structured class: a permutation of heads combined with a per-head map of any class."""
from __future__ import annotations

import numpy as np
import torch

from symmetries._arrays import rng
from symmetries.assignment import assignment_permutation
from symmetries.elements import GatherElement, HeadElement
from symmetries.errors import ElementShapeError
from symmetries.classes.base import SymmetryClass, element_tolerance

__all__ = ["HeadStructured"]


class HeadStructured(SymmetryClass):
    """``T = blockdiag(E_h) · (P_π ⊗ I_d)`` on a head-major axis of ``num_heads × d`` units.

    ``π`` permutes whole heads (shared by Q, K, V, O of one attention when spaces are tied
    by a ``head_group``); each ``E_h`` belongs to ``inner`` (e.g. ``Invertible()`` for a
    head's query/key basis). Exact across attention heads for the inner class's own rule.
    """

    name = "head-structured"
    exact_where = "attention heads: Q/K (scores use W_Qᵀ W_K) and V/O (outputs use W_O W_V) per head"

    def __init__(self, num_heads: int, inner: SymmetryClass):
        if int(num_heads) < 1:
            raise ValueError(f"num_heads must be ≥ 1, got {num_heads}")
        if not isinstance(inner, SymmetryClass) or isinstance(inner, HeadStructured):
            raise TypeError(f"inner must be a (non-head) SymmetryClass, got {inner!r}")
        self.num_heads = int(num_heads)
        self.inner = inner

    def _params(self) -> tuple:
        return (self.num_heads, self.inner)

    def __repr__(self) -> str:
        return f"HeadStructured({self.num_heads}, {self.inner!r})"

    @property
    def is_group(self) -> bool:  # type: ignore[override]
        return self.inner.is_group

    @property
    def rectangular(self) -> bool:  # type: ignore[override]
        return self.inner.rectangular

    @property
    def monomial(self) -> bool:  # type: ignore[override]
        return self.inner.monomial

    @property
    def orthogonal(self) -> bool:  # type: ignore[override]
        return self.inner.orthogonal

    @property
    def has_oracle(self) -> bool:  # type: ignore[override]
        return self.inner.has_oracle

    def head_dim(self, n: int) -> int:
        if n % self.num_heads:
            raise ElementShapeError(f"size {n} is not a multiple of num_heads={self.num_heads}")
        return n // self.num_heads

    def identity(self, n):
        d = self.head_dim(n)
        return HeadElement(torch.arange(self.num_heads), [self.inner.identity(d)] * self.num_heads)

    def random(self, n, *, m=None, seed=None, **inner_options):
        m = self._target(n, m)
        d, dm = self.head_dim(n), self.head_dim(m)
        g = rng(seed)
        perm = g.permutation(self.num_heads)
        return HeadElement(perm, [self.inner.random(d, m=dm, seed=g, **inner_options)
                                  for _ in range(self.num_heads)])

    def _blocks(self, t: torch.Tensor) -> torch.Tensor:
        m, n = t.shape
        h = self.num_heads
        dm, dn = self.head_dim(m), self.head_dim(n)
        return t.reshape(h, dm, h, dn).permute(0, 2, 1, 3)  # [row head, col head, dm, dn]

    def contains(self, matrix, *, atol=1e-8):
        t = self._matrix(matrix)
        try:
            blocks = self._blocks(t)
        except ElementShapeError:
            return False
        nonzero = blocks.abs().amax(dim=(2, 3)) > atol
        if not (bool((nonzero.sum(1) == 1).all()) and bool((nonzero.sum(0) == 1).all())):
            return False
        cols = nonzero.to(torch.int8).argmax(1)
        return all(self.inner.contains(blocks[h, int(c)], atol=atol) for h, c in enumerate(cols))

    def contains_element(self, element, *, atol=None):
        """A head map: ``num_heads`` heads and every per-head map in ``inner``. An index-form map
        is read head by head (it must move whole heads); other elements are checked densely."""
        atol = element_tolerance(element) if atol is None else atol
        if isinstance(element, HeadElement):
            return (element.num_heads == self.num_heads
                    and all(self.inner.contains_element(e, atol=atol) for e in element.inner))
        if isinstance(element, GatherElement):
            heads = self._gather_heads(element)
            if heads is None:
                return False
            return all(self.inner.contains_element(e, atol=atol) for e in heads)
        return super().contains_element(element, atol=atol)

    def _gather_heads(self, g: GatherElement) -> list[GatherElement] | None:
        """The per-head maps of an index-form map that moves whole heads, else ``None``."""
        (m, n), h = g.shape, self.num_heads
        if m % h or n % h:
            return None
        dm, dn = m // h, n // h
        index = g.index.cpu().reshape(h, dm)
        source = index // dn
        if dm and not bool((source == source[:, :1]).all()):
            return None
        if dm and not bool((torch.bincount(source[:, 0], minlength=h) == 1).all()):
            return None
        a, b = g.scales()
        return [GatherElement(index[k] % dn, dn, a.reshape(h, dm)[k], b.reshape(h, dm)[k]) for k in range(h)]

    def project(self, score, *, backend="auto"):
        """Assign heads by the value of their best per-head map, then take that map per head."""
        t = self._matrix(score)
        blocks = self._blocks(t)
        h = self.num_heads
        best = [[self.inner.project(blocks[i, j], backend=backend) for j in range(h)] for i in range(h)]
        value = np.array([[float((best[i][j].as_matrix() * blocks[i, j]).sum()) for j in range(h)]
                          for i in range(h)])
        perm = assignment_permutation(value, backend=backend)
        return HeadElement(perm, [best[i][int(perm[i])] for i in range(h)])
