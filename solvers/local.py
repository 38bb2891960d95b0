"""Per-space views of a problem: the tensors that meet at one space, as matrices — the data of a
weight-matching subproblem, and the building block of solvers that work space by space.

For a space ``s`` with every other space's transform fixed, each edge ``e`` contributes
A's rows ``A_e`` (``m × k``, the axis moved first, other axes flattened) and B's rows
``B_e`` (``n × k``, with the other spaces' current transforms applied). The local objective
of an element ``T`` is ``L(T) = Σ_e ‖A_e − T·B_e‖²`` with ``T·`` acting in the edge's role
(``out``: ``T B``; ``in``: ``Qᵀ B`` with ``Q`` the left inverse; ``var``: ``(T∘T) B``;
:meth:`symmetries.elements.Element.act`).

* :class:`Local` — one space's pairs ``(A_e, B_e)`` by role, their cross products and Grams;
* :class:`~solvers.matcher.Matcher` — builds the :class:`Local` of any space of a
  :class:`~solvers.Problem` for a given set of the other spaces' transforms (:mod:`solvers.matcher`,
  also importable from here);
* :func:`~solvers.matcher.search_units` — the spaces to visit, a head group counted as one unit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from symmetries.elements import DenseElement, Element, GatherElement, HeadElement
from symmetries.roles import Role

__all__ = ["Local", "Matcher", "search_units", "inner_product", "row_squares", "KEEP_BYTES"]


@dataclass
class Local:
    """``pairs[role]`` lists ``(A_e, B_e)`` for the edges of that role; ``m``, ``n`` are A's and B's widths."""
    m: int
    n: int
    pairs: dict[Role, list[tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=lambda: {Role.OUT: [], Role.IN: [], Role.VAR: []})
    _cache: dict = field(default_factory=dict, repr=False)
    _acc: dict = field(default_factory=dict, repr=False)
    _merged: set = field(default_factory=set, repr=False)  # streamed roles summed into one cached matrix
    _norms: dict = field(default_factory=dict, repr=False)  # streamed: B's row norms per role (add(norms=True))

    def add(self, role: Role, a: torch.Tensor, b: torch.Tensor, *, stream: bool = False, norms: bool = False) -> None:
        """Add an edge; with ``stream`` only ``A_e B_eᵀ`` is accumulated and ``B_e`` is dropped (enough
        for norm-keeping classes, whose loss is ``const − 2⟨T, M⟩``; memory: one ``m × n`` per role) — with
        ``norms`` also B's row norms ``‖B_e[i]‖²`` (the scale terms ``β, δ, ε`` of :mod:`solvers.scaling`)."""
        self._cache.clear()
        if stream:
            if self._merged:
                raise ValueError("edges added to a streamed Local after its roles were summed")
            if role in self._acc:  # accumulated in place: no m × n product beside the sum
                self._acc[role].addmm_(a, b.T)
            else:
                self._acc[role] = a @ b.T
            if norms:
                sq = row_squares(b)
                self._norms[role] = self._norms[role].add_(sq) if role in self._norms else sq
        else:
            if self._acc:
                raise ValueError("a Local is either streamed or not")
            self.pairs[role].append((a, b))

    def add_product(self, role: Role, product: torch.Tensor, norms: torch.Tensor | None = None) -> None:
        """Add an edge of a streamed Local by its ``A_e B_eᵀ`` (and B's row norms), computed elsewhere
        (:mod:`solvers.cross_cache`, a space's fixed edges); the sums are copies, so ``product`` may change
        afterwards."""
        self._cache.clear()
        if any(self.pairs.values()) or self._merged:
            raise ValueError("a product can only be added to a streamed Local before its roles are summed")
        if role in self._acc:
            self._acc[role].add_(product)
        else:
            self._acc[role] = product.clone()
        if norms is not None:
            self._norms[role] = self._norms[role].add_(norms) if role in self._norms else norms.clone()

    @property
    def streamed(self) -> bool:
        return bool(self._acc) or bool(self._merged)

    @property
    def keeps_norms(self) -> bool:
        """Whether B's row norms are at hand: a Local with its rows, or streamed with ``norms=True``."""
        return not self.streamed or bool(self._norms) or not any(self.has(r) for r in Role)

    @property
    def empty(self) -> bool:
        return not any(self.pairs.values()) and not self.streamed

    def has(self, role: Role) -> bool:
        """Whether any edge of ``role`` meets the space."""
        return bool(self.pairs[role]) or role in self._acc or role in self._merged

    def cross(self, *roles: Role) -> torch.Tensor:
        """``Σ_e A_e B_eᵀ`` over the edges of ``roles`` (``m × n``; computed once, then cached). A streamed
        Local sums several roles' accumulators in place (the same sums, no copy): after that those roles
        are only available together."""
        key = tuple(sorted({r for r in roles if self.has(r)}))
        if key not in self._cache:
            if self.streamed:
                if any(r in self._merged for r in key):
                    raise ValueError(f"roles {key} of a streamed Local were summed with others already")
                if len(key) > 1:
                    out = self._acc.pop(key[0])
                    for r in key[1:]:
                        out.add_(self._acc.pop(r))
                    self._merged.update(key)
                    for r in key:
                        self._cache.pop((r,), None)
                    self._cache[key] = out
                else:
                    self._cache[key] = self._acc[key[0]] if key else torch.zeros(self.m, self.n, dtype=torch.float64)
            else:
                self._cache[key] = self._cross(key)
        return self._cache[key]

    def _cross(self, roles) -> torch.Tensor:
        ref = next((a for r in roles for a, _ in self.pairs[r]), None)
        out = None
        for r in roles:
            for a, b in self.pairs[r]:
                out = a @ b.T if out is None else out.addmm_(a, b.T)
        if out is None:
            dtype = ref.dtype if ref is not None else torch.float64
            return torch.zeros(self.m, self.n, dtype=dtype)
        return out

    def cross_pairs(self, role: Role, index: torch.Tensor | None = None) -> torch.Tensor:
        """``(Σ_e A_e B_eᵀ)[j, index[j]]`` over the edges of ``role`` (``index`` ``None``: the diagonal) —
        read from the cached full product if there is one, else by row-wise products (``O(n k)``)."""
        full = self._cache.get((role,))
        if full is not None or self.streamed:
            full = self.cross(role) if full is None else full
            return full[torch.arange(self.m), index.to(full.device)] if index is not None else torch.diagonal(full)
        out = None
        for a, b in self.pairs[role]:
            d = (a * (b if index is None else b[index.to(b.device)])).sum(1)
            out = d if out is None else out.add_(d)
        return out if out is not None else torch.zeros(self.m, dtype=torch.float64)

    def gram_b(self, role: Role) -> torch.Tensor:
        """``Σ_e B_e B_eᵀ`` (``n × n``)."""
        return _gram([b for _, b in self.pairs[role]], self.n)

    def gram_a(self, role: Role) -> torch.Tensor:
        """``Σ_e A_e A_eᵀ`` (``m × m``)."""
        return _gram([a for a, _ in self.pairs[role]], self.m)

    def row_norms(self, role: Role, side: str) -> torch.Tensor:
        """``Σ_e ‖row_j‖²`` of A (``side='a'``) or B (``side='b'``) (computed once, then cached). A streamed
        Local has B's, where its edges were added with ``norms=True``."""
        key = ("row_norms", role, side)
        if key not in self._cache:
            idx, size = (0, self.m) if side == "a" else (1, self.n)
            if self.streamed and self.has(role):
                if side != "b" or role not in self._norms:
                    raise ValueError(f"a streamed Local keeps B's row norms only, and only when added with "
                                     f"norms=True; {side!r} norms of role {role} were asked")
                return self._norms[role]
            mats = [p[idx] for p in self.pairs[role]]
            self._cache[key] = sum((x * x).sum(1) for x in mats) if mats else torch.zeros(size, dtype=torch.float64)
        return self._cache[key]

    def loss(self, el: Element) -> float:
        """``L(T) = Σ_e ‖A_e − T·B_e‖²`` in each edge's role."""
        if self.streamed:
            raise ValueError("a streamed Local keeps only cross products; it has no loss")
        total = 0.0
        for role, pairs in self.pairs.items():
            for a, b in pairs:
                total += float(((a - el.act(b, role)) ** 2).sum())
        return total

    def head(self, heads: int, i: int, j: int) -> "Local":
        """The sub-problem between A's head ``i`` and B's head ``j`` (head-major rows)."""
        dm, dn = self.m // heads, self.n // heads
        sub = Local(dm, dn)
        for role, pairs in self.pairs.items():
            for a, b in pairs:
                sub.add(role, a[i * dm:(i + 1) * dm], b[j * dn:(j + 1) * dn])
        return sub


def row_squares(b: torch.Tensor) -> torch.Tensor:
    """``‖b[i]‖²`` per row of a matrix."""
    return torch.linalg.vector_norm(b, dim=1).square_()


def _gram(mats, size) -> torch.Tensor:
    out = None
    for x in mats:
        out = x @ x.T if out is None else out.addmm_(x, x.T)
    return out if out is not None else torch.zeros(size, size, dtype=torch.float64)


def inner_product(el: Element, score: torch.Tensor, squared: bool = False) -> float:
    """``⟨T, M⟩`` (or ``⟨T∘T, M⟩`` with ``squared``) without forming a dense permutation."""
    if isinstance(el, GatherElement):
        m = el.index.numel()
        vals = score[torch.arange(m, device=score.device), el.index.to(score.device)]
        if el.out_scale is not None:
            s = el.out_scale.to(score.device, score.dtype)
            vals = vals * (s * s if squared else s)
        return float(vals.sum())
    if isinstance(el, HeadElement):
        h = el.num_heads
        dm, dn = el.head_shape
        blocks = score.reshape(h, dm, h, dn)
        return sum(inner_product(e, blocks[i, :, int(j), :], squared)
                   for i, (j, e) in enumerate(zip(el.head_perm.tolist(), el.inner)))
    if isinstance(el, DenseElement):
        t = el.matrix.to(score.device, score.dtype)
    else:
        t = el.as_matrix().to(score.device, score.dtype)
    return float(((t * t if squared else t) * score).sum())


from solvers.matcher import KEEP_BYTES, Matcher, search_units  # noqa: E402  (the builder of Locals, re-exported)
