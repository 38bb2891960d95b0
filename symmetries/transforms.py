"""Transform sets: one element per space of a weight graph.

A ``TransformSet`` maps space names to elements; spaces it leaves out are the identity.
``(S @ R)[s] = S[s] ∘ R[s]`` (``R`` acts first) and ``S.inverse()[s] = S[s]⁻¹``.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ._arrays import rng
from .classes import SymmetryClass
from .elements import Element, HeadElement
from .errors import NotAdmittedError

__all__ = ["TransformSet", "random_transforms", "identity_transforms"]


class TransformSet(Mapping[str, Element]):
    """An immutable mapping ``space name → element``."""

    def __init__(self, elements: Mapping[str, Element] | None = None):
        elements = dict(elements or {})
        for space, el in elements.items():
            if not isinstance(el, Element):
                raise TypeError(f"transform for space {space!r} must be an Element, got {type(el).__name__}")
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


def identity_transforms(graph) -> TransformSet:
    """The identity at every space of ``graph``."""
    return TransformSet({s.name: s.cls.identity(s.size) for s in graph.spaces()})


def random_transforms(graph, seed: int | np.random.Generator | None = None, *,
                      classes: SymmetryClass | Mapping[str, SymmetryClass] | None = None,
                      sizes: Mapping[str, int] | None = None, strict: bool = True) -> TransformSet:
    """Draw one element per space, reproducibly from ``seed``.

    ``classes`` — a class for every space, or a mapping ``space → class`` (others use their
    default class); each must be admitted by its space unless ``strict=False`` (useful to show
    that a non-admitted class breaks the function). ``sizes`` — target sizes for rectangular
    classes (``SemiPermutation``, ``Orthogonal``) to widen spaces. Spaces sharing a
    ``head_group`` get one shared head permutation.
    """
    g = rng(seed)
    chosen: dict[str, SymmetryClass] = {}
    for space in graph.spaces():
        if isinstance(classes, SymmetryClass):
            cls = classes
        elif classes is not None and space.name in classes:
            cls = classes[space.name]
        else:
            cls = space.cls
        if strict and not graph.admits(space.name, cls):
            raise NotAdmittedError(
                f"space {space.name!r} admits {', '.join(map(repr, space.classes))}; {cls!r} is not among them "
                f"or their subclasses" + (f" (activation: {space.activation})" if space.activation else ""),
                space=space.name, cls=cls)
        chosen[space.name] = cls
    if isinstance(classes, Mapping):
        graph_spaces = {s.name for s in graph.spaces()}
        for name in classes:
            if name not in graph_spaces:
                graph.space(name)  # raises UnknownSpaceError naming it
    sizes = dict(sizes or {})
    for name in sizes:
        graph.space(name)

    elements = {s.name: chosen[s.name].random(s.size, m=sizes.get(s.name), seed=g) for s in graph.spaces()}
    for names in graph.head_groups().values():
        heads = [n for n in names if isinstance(elements[n], HeadElement)]
        for n in heads[1:]:
            elements[n] = elements[n].with_head_perm(elements[heads[0]].head_perm)
    return TransformSet(elements)
