"""Cross products ``A_e B_eᵀ`` kept between visits and updated where the other axis moved.

A space's subproblem reads, per edge, ``M_e = A_e B̃_eᵀ`` where ``B̃_e`` is B's tensor with the other
spaces' current elements applied. When that tensor has one other transformed axis and the element
there is a gather (a permutation, a head permutation, an embedding — no scales), ``B̃`` is B with that
axis re-indexed by a source map ``σ``: ``B̃[…, p, …] = B[…, σ(p), …]``. Between two visits of the space,
``σ`` typically changes at few positions ``P`` (the neighbour's permutation moved a few units), and

    ``M_new = M_old + A_P (B_{σ_new(P)} − B_{σ_old(P)})ᵀ``

(``A_P``: A's entries at positions ``P`` of that axis, flattened into columns like ``A_e``). That costs
``|P|/L`` of the product. It pays where the product is large against what it holds: the inner size
``k`` at least :data:`MIN_DEPTH` × the space's width (VGG's 4096-wide classifier reads 25 088 inputs; a
transformer's residual reads every MLP's 3072 rows), within the bytes of the largest score matrix the
solve builds anyway, an eighth of the two models' bytes, and :data:`CACHE_BYTES` (0: off) — or, where every
product the solve could keep fits in :data:`SMALL_BYTES`, all of them whatever their depth (an MLP's hidden
layers: memory is no concern there, and each revisit then costs the moved columns only). A solve still
moving units after :data:`WIDEN_AFTER` sweeps widens its cache to edges as long as the space is wide,
within a quarter of the models' bytes (:meth:`CrossCache.widen`; VGG's three 4096 × 4096 products). Every
:data:`REFRESH` updates the product is recomputed whole, so round-off never accumulates further. Spans (a
concatenation's part) and repeated edges (a flatten's channels × positions) are kept like plain ones:
:func:`~symmetries.blocks.unit_rows` reads them alike whole and at the moved positions. Another solve's
products can be handed over (:meth:`CrossCache.kept`, :meth:`CrossCache.put`; the staged start's).
"""
from __future__ import annotations

import os

import torch

from symmetries.action import apply_axis
from symmetries.blocks import unit_rows
from symmetries.elements import GatherElement, HeadElement

__all__ = ["CrossCache", "source_map", "MIN_DEPTH", "CACHE_BYTES", "SMALL_BYTES", "REFRESH", "MAX_CHANGED",
           "WIDEN_AFTER", "WIDE_SHARE"]

#: An edge is cached only if its rows are at least this many times longer than the space is wide.
MIN_DEPTH = 4
#: Most bytes of cached products per solve (``SYMMETRIES_CROSS_CACHE_BYTES`` overrides it; 0: off).
CACHE_BYTES = int(os.environ.get("SYMMETRIES_CROSS_CACHE_BYTES", 256 << 20))
#: If all the products a solve could keep fit in this many bytes, every eligible edge is kept, at any depth.
SMALL_BYTES = min(CACHE_BYTES, 32 << 20)
#: Updates between two whole recomputations of one product.
REFRESH = 8
#: Above this fraction of moved positions the product is recomputed whole.
MAX_CHANGED = 0.4
#: A solve still moving units after this many sweeps is creeping (many sweeps, each moving a few units of
#: wide spaces: VGG's two 4096-wide classifier spaces under ``PermutationScaling``): its cache then widens to
#: edges as long as the space is wide, within :data:`WIDE_SHARE` of the models' bytes (:meth:`CrossCache.widen`).
WIDEN_AFTER = 2
#: The share of A's and B's bytes a widened cache may hold (and at most :data:`CACHE_BYTES`); a streamed
#: problem never widens.
WIDE_SHARE = 0.25


class CrossCache:
    """Per (space, edge) the last ``M_e`` and the source map it was built with (:meth:`cross`)."""

    def __init__(self, budget: int = CACHE_BYTES, min_depth: int = MIN_DEPTH):
        self.budget = budget
        self.min_depth = min_depth
        self.used = 0
        self._entries: dict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._work: dict[tuple, int] = {}  # per entry: the multiply-adds of recomputing it whole
        self.stats = {"whole": 0, "updated": 0, "reused": 0, "evicted": 0}

    def widen(self, budget: int) -> None:
        """Take edges whose rows are as long as the space is wide (depth 1), within ``budget`` bytes: a
        solve past :data:`WIDEN_AFTER` sweeps revisits its spaces often enough for such products to pay."""
        self.budget = max(self.budget, min(budget, CACHE_BYTES))
        self.min_depth = min(self.min_depth, 1)

    def kept(self) -> list[tuple]:
        """``(key, σ, product, age, work)`` of every kept product, the costliest to recompute first."""
        return [(k, *self._entries[k], self._work[k]) for k in sorted(self._entries, key=lambda k: -self._work[k])]

    def put(self, key, sigma: torch.Tensor, product: torch.Tensor, age: int, work: int) -> bool:
        """Keep ``product`` under ``key`` if the key is new and it fits the budget; whether it was kept (a
        product built here, or elsewhere: another solve's, rescaled — :meth:`~solvers.matcher.Matcher.adopt`)."""
        size = _nbytes(product)
        if key in self._entries or self.used + size > self.budget:
            return False
        self._entries[key] = (sigma, product, age)
        self._work[key] = work
        self.used += size
        return True

    def eligible(self, shape_b: tuple[int, ...], eb, other_axes: dict, transforms: dict, m: int,
                 n: int) -> int | None:
        """The one other axis of B's tensor that ``transforms`` move by a pure gather, if the edge is worth
        caching; else ``None``. ``other_axes[ax]``: B's edges on axis ``ax`` whose spaces have elements."""
        moved = {ax: g for ax, g in other_axes.items() if g}
        if len(moved) != 1:
            return None
        (ax, group), = moved.items()
        if not all(f.space not in transforms or _pure_gather(transforms[f.space]) for f in group):
            return None
        numel = 1
        for s in shape_b:
            numel *= s
        k = numel // max(shape_b[eb.axis % len(shape_b)], 1)
        if eb.repeat is not None:
            k *= eb.repeat[0]
        if k < self.min_depth * max(m, n):
            return None
        return ax

    def cross(self, key, a_t: torch.Tensor, b_t: torch.Tensor, ea, eb, ax: int, group, transforms: dict,
              m: int, n: int) -> torch.Tensor:
        """``A_e B̃_eᵀ`` (``m × n``) for the edge, from the kept product where the source map along ``ax``
        moved at few positions. ``a_t``, ``b_t``: A's and B's whole tensors; ``group``: B's edges on ``ax``."""
        sigma = source_map(b_t, ax, group, transforms)
        hit = self._entries.get(key)
        if hit is not None and hit[0].shape == sigma.shape:
            old_sigma, product, age = hit
            moved = torch.nonzero(old_sigma != sigma).flatten()
            if moved.numel() == 0:
                self.stats["reused"] += 1
                return product
            if age < REFRESH and moved.numel() <= MAX_CHANGED * sigma.numel():
                a_p = unit_rows(a_t.index_select(ax, moved), ea, m)
                diff = b_t.index_select(ax, sigma[moved]) - b_t.index_select(ax, old_sigma[moved])
                product.addmm_(a_p, unit_rows(diff, eb, n).T)  # in place: Local.add_product copies what it keeps
                self._entries[key] = (sigma, product, age + 1)
                self.stats["updated"] += 1
                return product
        b_rows = unit_rows(apply_axis(b_t, ax, group, transforms), eb, n)
        a_rows = unit_rows(a_t, ea, m)
        product = a_rows @ b_rows.T
        work = a_rows.shape[0] * a_rows.shape[1] * b_rows.shape[0]  # multiply-adds a recomputation costs
        del b_rows, a_rows
        size = _nbytes(product)
        if hit is not None:
            self.used -= _nbytes(hit[1])
            del self._entries[key]
            self._work.pop(key, None)
        if self.used + size > self.budget:
            self._make_room(size, work)
        self.put(key, sigma, product, 0, work)
        self.stats["whole"] += 1
        return product

    def _make_room(self, size: int, work: int) -> None:
        """Drop kept products that are cheaper to recompute than the new one (least work first) when that
        frees room for it; else drop nothing. VGG's 4096 × 4096 classifier product (4·10¹¹ multiply-adds) thus
        takes the place of a 512-wide conv's (2·10⁹) that came first."""
        victims, free = [], self.budget - self.used
        for w, key in sorted((w, k) for k, w in self._work.items() if w < work):
            if free >= size:
                break
            victims.append(key)
            free += _nbytes(self._entries[key][1])
        if free >= size:
            for key in victims:
                self.used -= _nbytes(self._entries[key][1])
                del self._entries[key], self._work[key]
                self.stats["evicted"] += 1


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _pure_gather(el) -> bool:
    if isinstance(el, HeadElement):
        el = el.gather_form()
    return isinstance(el, GatherElement) and el.out_scale is None and el.in_scale is None


def source_map(b_t: torch.Tensor, ax: int, group, transforms: dict) -> torch.Tensor:
    """``σ`` with ``B̃[…, p, …] = B[…, σ(p), …]`` along ``ax``: square gathers without repeats read from their
    index vectors (each on its span), anything else by applying the transforms to a ruler."""
    size = b_t.shape[ax]
    els = [transforms[f.space] for f in group]
    if all(f.repeat is None for f in group) and all(isinstance(el, GatherElement) and el.shape[0] == el.shape[1]
                                                    for el in els):
        spans = {f.span(size): el for f, el in zip(group, els)}  # a tied axis names one span twice
        if len(spans) == 1 and next(iter(spans)) == (0, size):
            return next(iter(spans.values())).index.cpu()
        sigma = torch.arange(size)
        for (start, stop), el in spans.items():
            if el.shape[0] != stop - start:
                break
            sigma[start:stop] = el.index.cpu() + start
        else:
            return sigma
    shape = [1] * b_t.dim()
    shape[ax] = size
    ruler = torch.arange(size, dtype=torch.float64).reshape(shape)
    return apply_axis(ruler, ax, group, transforms).flatten().round().to(torch.int64)
