"""The rotary class: the query/key maps that survive rotary position embeddings.

Rotary embeddings (RoPE, Hugging Face's ``rotate_half`` layout) rotate pair ``i = (i, i + d/2)`` of
each query and key head by ``R(p θᵢ)`` at position ``p``, so a head's score between positions ``p``
and ``p'`` is ``qᵀ R(p)ᵀ R(p') k = qᵀ R(p' − p) k`` with ``R`` block diagonal over the pairs. A map
``A`` of the head's query/key space (``W_Q ← A W_Q``, ``W_K ← A⁻ᵀ W_K``, biases alike) changes the
score to ``qᵀ Aᵀ R(δ) A⁻ᵀ k``: it is exact for every offset ``δ`` iff ``Aᵀ`` commutes with every
``R(δ)``. With pairwise distinct frequencies ``θᵢ ∉ πℤ`` (RoPE's ``θᵢ = base^{−2i/d}``), those
are exactly the block diagonals of scaled 2×2 rotations ``[[a, −b], [b, a]]`` — in complex form
``zᵢ ↦ cᵢ zᵢ`` with ``cᵢ ≠ 0`` — a commutative group ``(ℂ*)^{d/2}``, closed under transpose
(``c ↦ c̄``). The identity holds for any cosine/sine values (``[[c, −s], [s, c]]`` is in the same
algebra), so rounded tables, ``attention_scaling`` and frequency rescalings (linear, dynamic,
Llama-3) keep it exact. Equal frequencies would admit more (a subgroup is still exact).

Inside ``Invertible`` in the lattice; ``HeadStructured(H, Rotary())`` adds a head permutation.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from symmetries._arrays import rng
from symmetries.classes.base import SymmetryClass
from symmetries.elements import Element
from symmetries.elements.rotary import RotaryElement
from symmetries.errors import ElementShapeError

__all__ = ["Rotary"]


class Rotary(SymmetryClass):
    """``T = ⊕ᵢ rᵢ R(φᵢ)`` on the pairs ``(i, i + d/2)`` of an even-width space (``rᵢ > 0``): per pair a
    scaled 2×2 rotation. Exact on the query/key space of a rotary attention head (the maps that
    commute with every rotation of the pairs); elements are :class:`~symmetries.elements.RotaryElement`.
    ``random`` draws angles uniformly and scales log-uniformly with ``max r / min r ≤ cond``."""

    name = "rotary"
    exact_where = ("the query/key space of an attention head with rotary position embeddings "
                   "(HF rotate_half pairs i, i + d/2): W_Q ← A W_Q, W_K ← A⁻ᵀ W_K, A commuting with every rotation")

    def identity(self, n: int) -> RotaryElement:
        return RotaryElement.identity(self._even(n))

    def random(self, n, *, m=None, seed=None, cond: float = 10.0):
        m = self._target(self._even(n), m)
        if cond < 1:
            raise ValueError(f"cond must be ≥ 1, got {cond}")
        g = rng(seed)
        h = m // 2
        r = np.exp(g.uniform(-0.5, 0.5, size=h) * math.log(cond))
        phi = g.uniform(-math.pi, math.pi, size=h)
        return RotaryElement(torch.from_numpy(r * np.cos(phi)), torch.from_numpy(r * np.sin(phi)))

    @staticmethod
    def _even(n: int) -> int:
        if n % 2:
            raise ElementShapeError(f"a rotary space pairs its units: its width must be even, got {n}")
        return n

    def contains(self, matrix, *, atol=1e-8):
        """``[[diag(a), −diag(b)], [diag(b), diag(a)]]`` (nothing else non-zero) with every ``aᵢ² + bᵢ²``
        above ``atol`` relative to the largest."""
        t = self._matrix(matrix)
        d = t.shape[0]
        if t.shape[1] != d or d % 2 or not bool(torch.isfinite(t).all()):
            return False
        if d == 0:
            return True
        h = d // 2
        a, b = torch.diagonal(t[:h, :h]), torch.diagonal(t[h:, :h])
        expected = RotaryElement._dense(a, b)
        if not bool(torch.allclose(t, expected, atol=atol, rtol=0)):
            return False
        if not (bool(torch.allclose(torch.diagonal(t[h:, h:]), a, atol=atol, rtol=0))
                and bool(torch.allclose(torch.diagonal(t[:h, h:]), -b, atol=atol, rtol=0))):
            return False
        mod = (a * a + b * b).sqrt()
        return bool(mod.min() > atol * max(1.0, float(mod.max())))

    def contains_element(self, element: Element, *, atol: float | None = None) -> bool:
        """A :class:`RotaryElement` is one by construction (its ``in`` map is its exact inverse):
        finite, non-singular pairs with ``min |cᵢ| > √eps · max |cᵢ|`` of its dtype; other elements
        are checked densely (``T`` in the class, ``Q T = I``)."""
        if isinstance(element, RotaryElement):
            eps = math.sqrt(torch.finfo(element.re.dtype).eps) if atol is None else atol
            mod = element.complex.abs()
            return mod.numel() == 0 or bool(mod.min() > eps * max(1.0, float(mod.max())))
        return super().contains_element(element, atol=atol)
