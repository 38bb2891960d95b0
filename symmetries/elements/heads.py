"""Head-structured maps: a permutation ``π`` of heads combined with one map ``E_h`` per head.

On an axis laid out head-major (``H × d``): ``out`` ``W'[h] = E_h W[π(h)]``,
``in`` ``W'[h] = W[π(h)] Q_h``. The whole map is block-monomial; with index-form
per-head maps it runs as one gather, otherwise as one batched matmul.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from symmetries._arrays import like
from symmetries.errors import ElementShapeError
from symmetries.elements.base import Element
from symmetries.elements.gather import GatherElement

__all__ = ["HeadElement"]


class HeadElement(Element):
    """``T = blockdiag(E_0..E_{H-1}) · (P_π ⊗ I)``."""

    def __init__(self, head_perm, inner: Sequence[Element]):
        self.head_perm = torch.as_tensor(head_perm).to(torch.long).reshape(-1)
        self.inner = tuple(inner)
        h = self.head_perm.numel()
        if len(self.inner) != h:
            raise ElementShapeError(f"{h} heads but {len(self.inner)} per-head maps")
        if sorted(self.head_perm.tolist()) != list(range(h)):
            raise ElementShapeError("head_perm must be a permutation of range(num_heads)")
        shapes = {e.shape for e in self.inner}
        if len(shapes) != 1:
            raise ElementShapeError(f"per-head maps must share one shape, got {sorted(shapes)}")
        self._flat: Element | None = None
        self._stack: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_heads(self) -> int:
        return self.head_perm.numel()

    @property
    def head_shape(self) -> tuple[int, int]:
        return self.inner[0].shape

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.head_shape
        return self.num_heads * m, self.num_heads * n

    # -- vectorised forms ------------------------------------------------------------------
    def gather_form(self) -> GatherElement | None:
        """The whole map as one :class:`GatherElement` when every per-head map is index-form
        (cached), else ``None``."""
        if self._flat is None and all(isinstance(e, GatherElement) for e in self.inner):
            m, n = self.head_shape
            base = (self.head_perm * n).repeat_interleave(m)
            index = base + torch.cat([e.index.cpu() for e in self.inner])

            def cat(attr):
                vals = [getattr(e, attr) for e in self.inner]
                if all(v is None for v in vals):
                    return None
                return torch.cat([torch.ones(m, dtype=torch.float64) if v is None
                                  else v.detach().cpu().to(torch.float64) for v in vals])
            self._flat = GatherElement(index, self.num_heads * n, cat("out_scale"), cat("in_scale"))
        return self._flat if isinstance(self._flat, GatherElement) else None

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stack is None:
            self._stack = (torch.stack([e.as_matrix() for e in self.inner]),
                           torch.stack([e.in_matrix() for e in self.inner]))
        return self._stack

    def _blocks(self, x: torch.Tensor, mats: torch.Tensor, transpose: bool) -> torch.Tensor:
        h = self.num_heads
        xb = x.reshape(h, -1, x.shape[1]).index_select(0, self.head_perm.to(x.device))
        mats = like(mats, x)
        y = torch.einsum("hji,hjk->hik" if transpose else "hij,hjk->hik", mats, xb)
        return y.reshape(-1, x.shape[1])

    def _out(self, x):
        g = self.gather_form()
        return g._out(x) if g is not None else self._blocks(x, self._stacked()[0], False)

    def _in(self, x):
        g = self.gather_form()
        return g._in(x) if g is not None else self._blocks(x, self._stacked()[1], True)

    def _var(self, x):
        g = self.gather_form()
        return g._var(x) if g is not None else super()._var(x)

    # -- algebra -------------------------------------------------------------------------------
    def as_matrix(self) -> torch.Tensor:
        return self._block_matrix([e.as_matrix() for e in self.inner], transpose=False)

    def in_matrix(self) -> torch.Tensor:
        return self._block_matrix([e.in_matrix() for e in self.inner], transpose=True)

    def _block_matrix(self, blocks, transpose: bool) -> torch.Tensor:
        m, n = self.head_shape
        h = self.num_heads
        t = torch.zeros(h * m, h * n, dtype=torch.float64)
        for i, (src, blk) in enumerate(zip(self.head_perm.tolist(), blocks)):
            t[i * m:(i + 1) * m, src * n:(src + 1) * n] = blk.T if transpose else blk
        return t.T.contiguous() if transpose else t

    def inverse(self) -> "HeadElement":
        inv = torch.argsort(self.head_perm)
        return HeadElement(inv, [self.inner[j].inverse() for j in inv.tolist()])

    def _compose(self, other: Element) -> Element:
        if isinstance(other, HeadElement) and other.num_heads == self.num_heads:
            p1 = self.head_perm.tolist()
            return HeadElement(other.head_perm[self.head_perm],
                               [self.inner[h] @ other.inner[p1[h]] for h in range(self.num_heads)])
        return super()._compose(other)

    def with_head_perm(self, head_perm) -> "HeadElement":
        """The same per-head maps behind another head permutation (used to tie spaces)."""
        return HeadElement(head_perm, self.inner)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "HeadElement":
        return HeadElement(self.head_perm.to(device=device), [e.to(device, dtype) for e in self.inner])

    def __repr__(self) -> str:
        return f"HeadElement({self.num_heads} heads × {self.head_shape[0]}×{self.head_shape[1]})"
