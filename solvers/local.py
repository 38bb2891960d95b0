"""The tensors that meet at one space, as matrices: the data of a weight-matching subproblem.

For a space ``s`` with every other space's transform fixed, each edge ``e`` contributes
A's rows ``A_e`` (``m × k``, the axis moved first, other axes flattened) and B's rows
``B_e`` (``n × k``, with the other spaces' current transforms applied). The local objective
of an element ``T`` is ``L(T) = Σ_e ‖A_e − T·B_e‖²`` with ``T·`` acting in the edge's role
(``out``: ``T B``; ``in``: ``Qᵀ B`` with ``Q`` the left inverse; ``var``: ``(T∘T) B``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from symmetries.elements import DenseElement, Element, GatherElement, HeadElement
from symmetries.roles import Role

__all__ = ["Local", "inner_product"]


@dataclass
class Local:
    """``pairs[role]`` lists ``(A_e, B_e)`` for the edges of that role; ``m``, ``n`` are A's and B's widths."""
    m: int
    n: int
    pairs: dict[Role, list[tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=lambda: {Role.OUT: [], Role.IN: [], Role.VAR: []})
    _cache: dict = field(default_factory=dict, repr=False)
    _acc: dict = field(default_factory=dict, repr=False)

    def add(self, role: Role, a: torch.Tensor, b: torch.Tensor, *, stream: bool = False) -> None:
        """Add an edge; with ``stream`` only ``A_e B_eᵀ`` is accumulated and ``B_e`` is dropped (enough
        for norm-keeping classes, whose loss is ``const − 2⟨T, M⟩``; memory: one ``m × n`` per role)."""
        self._cache.clear()
        if stream:
            prod = a @ b.T
            self._acc[role] = prod if role not in self._acc else self._acc[role].add_(prod)
        else:
            if self._acc:
                raise ValueError("a Local is either streamed or not")
            self.pairs[role].append((a, b))

    @property
    def streamed(self) -> bool:
        return bool(self._acc)

    @property
    def empty(self) -> bool:
        return not any(self.pairs.values()) and not self._acc

    def has(self, role: Role) -> bool:
        """Whether any edge of ``role`` meets the space."""
        return bool(self.pairs[role]) or role in self._acc

    def cross(self, *roles: Role) -> torch.Tensor:
        """``Σ_e A_e B_eᵀ`` over the edges of ``roles`` (``m × n``; computed once, then cached)."""
        key = tuple(sorted({r for r in roles if self.has(r)}))
        if key not in self._cache:
            if self._acc:
                parts = [self._acc[r] for r in key]
                self._cache[key] = (parts[0] if len(parts) == 1 else sum(parts[1:], parts[0].clone())) if parts \
                    else torch.zeros(self.m, self.n, dtype=torch.float64)
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

    def gram_b(self, role: Role) -> torch.Tensor:
        """``Σ_e B_e B_eᵀ`` (``n × n``)."""
        return _gram([b for _, b in self.pairs[role]], self.n)

    def gram_a(self, role: Role) -> torch.Tensor:
        """``Σ_e A_e A_eᵀ`` (``m × m``)."""
        return _gram([a for a, _ in self.pairs[role]], self.m)

    def row_norms(self, role: Role, side: str) -> torch.Tensor:
        """``Σ_e ‖row_j‖²`` of A (``side='a'``) or B (``side='b'``)."""
        idx, size = (0, self.m) if side == "a" else (1, self.n)
        mats = [p[idx] for p in self.pairs[role]]
        if not mats:
            return torch.zeros(size, dtype=torch.float64)
        return sum((x * x).sum(1) for x in mats)

    def loss(self, el: Element) -> float:
        """``L(T) = Σ_e ‖A_e − T·B_e‖²`` in each edge's role."""
        if self._acc:
            raise ValueError("a streamed Local keeps only cross products; it has no loss")
        total = 0.0
        for role, pairs in self.pairs.items():
            fn = {Role.OUT: el._out, Role.IN: el._in, Role.VAR: el._var}[role]
            for a, b in pairs:
                total += float(((a - fn(b)) ** 2).sum())
        return total

    def head(self, heads: int, i: int, j: int) -> "Local":
        """The sub-problem between A's head ``i`` and B's head ``j`` (head-major rows)."""
        dm, dn = self.m // heads, self.n // heads
        sub = Local(dm, dn)
        for role, pairs in self.pairs.items():
            for a, b in pairs:
                sub.add(role, a[i * dm:(i + 1) * dm], b[j * dn:(j + 1) * dn])
        return sub


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
