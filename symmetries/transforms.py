"""Transform sets: one element per space of a weight graph.

A ``TransformSet`` maps space names to elements; spaces it leaves out are the identity.
``(S @ R)[s] = S[s] ∘ R[s]`` (``R`` acts first) and ``S.inverse()[s] = S[s]⁻¹``.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch

from symmetries._arrays import rng
from symmetries.classes import HeadStructured
from symmetries.elements import Element, HeadElement
from symmetries.errors import ArgumentTypeError
from symmetries.graph import WeightGraph
from symmetries.policy import resolve_classes

__all__ = ["TransformSet", "random_transforms", "identity_transforms", "tie_heads"]


class TransformSet(Mapping[str, Element]):
    """An immutable mapping ``space name → element``."""

    def __init__(self, elements: Mapping[str, Element] | None = None):
        elements = dict(elements or {})
        for space, el in elements.items():
            if not isinstance(el, Element):
                raise ArgumentTypeError(f"transform for space {space!r} must be an Element, got {type(el).__name__}",
                                        argument=str(space))
        self._elements = elements

    def __getitem__(self, space: str) -> Element:
        return self._elements[space]

    def __iter__(self) -> Iterator[str]:
        return iter(self._elements)

    def __len__(self) -> int:
        return len(self._elements)

    def inverse(self) -> "TransformSet":
        """``T⁻¹`` space by space (merge maps for embeddings)."""
        return TransformSet({s: e.inverse() for s, e in self._elements.items()})

    def __matmul__(self, other: "TransformSet") -> "TransformSet":
        """``self ∘ other``: apply ``other`` first, then ``self``."""
        if not isinstance(other, TransformSet):
            return NotImplemented
        out = dict(other._elements)
        for s, e in self._elements.items():
            out[s] = e @ other[s] if s in other else e
        return TransformSet(out)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "TransformSet":
        return TransformSet({s: e.to(device, dtype) for s, e in self._elements.items()})

    def __repr__(self) -> str:
        inner = ", ".join(f"{s!r}: {e!r}" for s, e in self._elements.items())
        return f"TransformSet({{{inner}}})"


def identity_transforms(graph: WeightGraph) -> TransformSet:
    """The identity at every space of ``graph``."""
    return TransformSet({s.name: s.cls.identity(s.size) for s in graph.spaces()})


def tie_heads(graph: WeightGraph, elements: Mapping[str, Element]) -> dict[str, Element]:
    """Make each head group share one head permutation: that of its first space holding a
    head-structured element. Spaces of such a group that have no element get that permutation
    with identity per-head maps (so one space's draw extends to its whole attention)."""
    out = dict(elements)
    for names in graph.head_groups().values():
        first = next((out[n] for n in names if isinstance(out.get(n), HeadElement)), None)
        if first is None:
            continue
        for n in names:
            el = out.get(n)
            if isinstance(el, HeadElement):
                out[n] = el if el is first else el.with_head_perm(first.head_perm)
            elif el is None:
                cls = next(c for c in graph.space(n).classes if isinstance(c, HeadStructured))
                d = graph.space(n).size // cls.num_heads
                out[n] = HeadElement(first.head_perm, [cls.inner.identity(d)] * cls.num_heads)
    return out


def random_transforms(graph: WeightGraph, seed: int | np.random.Generator | None = None, *,
                      classes: Any = None, sizes: Mapping[str, int] | None = None,
                      strict: bool = True) -> TransformSet:
    """Draw one element per space, reproducibly from ``seed``.

    ``classes`` — ``None`` (each space's declared default group), one class for every space, or a
    mapping ``space → class``; a class is an instance, a type or a name (``"permutation"``), read by
    :func:`symmetries.resolve_classes`. Each must be admitted by its space unless ``strict=False``
    (useful to show that a non-admitted class breaks the function). ``sizes`` — target sizes for
    rectangular classes (``SemiPermutation``, ``Orthogonal``) to widen spaces. Spaces sharing a
    ``head_group`` get one shared head permutation (:func:`tie_heads`).
    """
    g = rng(seed)
    chosen = resolve_classes(graph, classes, strict=strict)
    sizes = dict(sizes or {})
    for name in sizes:
        graph.space(name)
    elements = {s.name: chosen[s.name].random(s.size, m=sizes.get(s.name), seed=g) for s in graph.spaces()}
    return TransformSet(tie_heads(graph, elements))
