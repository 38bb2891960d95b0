"""Hypothesis strategies for classes, elements, transform sets and small architectures.

Importable without pytest. Strategies compose: ``elements(classes())`` draws a class and
then an element of it; ``transform_sets(graph)`` draws one element per space from the
classes the space admits. Elements are drawn from integer seeds, so failures shrink to a
small size and a small seed that a person can replay with ``cls.random(n, seed=…)``.
"""
from __future__ import annotations

from typing import Sequence

from hypothesis import strategies as st

from .classes import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling,
                      PositiveScaling, SemiPermutation, SignedPermutation, SignFlip, SymmetryClass, Trivial)
from .elements import Element
from .transforms import TransformSet, random_transforms

__all__ = ["GROUPS", "symmetry_classes", "elements", "transform_sets", "seeds", "mlp_architectures"]

#: The concrete group classes (semi-permutations are a monoid, drawn separately).
GROUPS: tuple[SymmetryClass, ...] = (Trivial(), Permutation(), SignFlip(), SignedPermutation(),
                                     PositiveScaling(), PermutationScaling(), Orthogonal(), Invertible())

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def _head_classes(draw, inner: Sequence[SymmetryClass]) -> HeadStructured:
    return HeadStructured(draw(st.integers(1, 4)), draw(st.sampled_from(list(inner))))


def symmetry_classes(*, groups_only: bool = True, heads: bool = True) -> st.SearchStrategy[SymmetryClass]:
    """Any class of the library: the concrete groups, optionally ``SemiPermutation`` and
    ``HeadStructured(H, inner)`` with a group inner class."""
    base = list(GROUPS) + ([] if groups_only else [SemiPermutation()])
    options = [st.sampled_from(base)]
    if heads:
        options.append(_head_classes(list(GROUPS)))
    return st.one_of(*options)


@st.composite
def elements(draw, cls: SymmetryClass | st.SearchStrategy[SymmetryClass], *, size: int | None = None,
             min_size: int = 1, max_size: int = 8, widen: int = 0, cond: float = 10.0) -> Element:
    """An element of ``cls`` (a class or a strategy of classes) on a space of ``size`` units.

    ``widen > 0`` lets rectangular classes map to up to ``widen`` more units. ``cond`` bounds the
    condition number of invertible maps (and the spread of scalings) so float32 checks stay
    meaningful.
    """
    if isinstance(cls, st.SearchStrategy):
        cls = draw(cls)
    heads = cls.num_heads if isinstance(cls, HeadStructured) else 1
    if size is None:
        size = heads * draw(st.integers(min_size, max_size))
    m = size
    if widen and cls.rectangular:
        m = size + heads * draw(st.integers(0, widen))
    return _draw(cls, size, m, draw(seeds), cond)


def _draw(cls: SymmetryClass, n: int, m: int, seed: int, cond: float) -> Element:
    inner = cls.inner if isinstance(cls, HeadStructured) else cls
    if isinstance(inner, Invertible):
        opts = {"cond": cond}
    elif isinstance(inner, (PositiveScaling, PermutationScaling)):
        opts = {"spread": cond ** 0.5}
    else:
        opts = {}
    return cls.random(n, m=m if m != n else None, seed=seed, **opts)


@st.composite
def transform_sets(draw, graph, classes: dict[str, SymmetryClass] | SymmetryClass | None = None, *,
                   strict: bool = True) -> TransformSet:
    """A transform set for ``graph``: per space, a class it admits (or the one given), drawn
    from a seed; head groups share their head permutation."""
    if classes is None:
        classes = {s.name: draw(st.sampled_from([c for c in s.classes if c.is_group] or [s.cls]))
                   for s in graph.spaces()}
    return random_transforms(graph, draw(seeds), classes=classes, strict=strict)


@st.composite
def mlp_architectures(draw, *, activations: Sequence[str] | None = None, max_depth: int = 3,
                      max_width: int = 12):
    """A small ``architectures.mlp`` of drawn depth, widths and activation."""
    from architectures import ACTIVATIONS, mlp
    act = draw(st.sampled_from(list(activations or ACTIVATIONS)))
    depth = draw(st.integers(1, max_depth))
    widths = draw(st.lists(st.integers(1, max_width), min_size=depth + 2, max_size=depth + 2))
    return mlp(widths, activation=act, bias=draw(st.booleans()))
