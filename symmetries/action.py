"""Applying a transform set to a whole parameter set: ``θ ↦ T · θ``.

For every edge parameter → space of the graph whose space has an element ``T``, the
tensor's axis (or slice of it) is transformed in the edge's role. A tied axis (``out``
and ``in`` of one space) is transformed once, which is exact because ``T⁻ᵀ = T`` there.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import torch

from symmetries._arrays import restore, to_tensor
from symmetries.blocks import merge_copies, merged_block, repeat_index, repeat_units, split_copies
from symmetries.elements import Element, GatherElement, HeadElement
from symmetries.errors import ArgumentTypeError, ElementNotAdmittedError, ElementShapeError, TieError
from symmetries.graph import WeightGraph
from symmetries.roles import Role
from symmetries.transforms import TransformSet

__all__ = ["apply", "apply_axis", "admitted"]


def apply(graph: WeightGraph, params: Mapping, transforms: Mapping[str, Element], *, check: bool = True) -> dict:
    """Return a new parameter dict ``T · θ`` (the input is never modified).

    ``params`` maps the graph's parameter names to torch tensors or numpy arrays (a
    ``state_dict()`` works); tensors no space touches are returned as they are (shared,
    not copied). With ``check=True`` the graph, the parameter shapes and the transforms are checked:
    each element must belong to a class its space admits (:func:`admitted`), else
    :class:`~symmetries.errors.ElementNotAdmittedError` names the space. ``check=False`` skips every
    check (the fast path solvers use on their own, already checked, elements).
    """
    if not isinstance(transforms, TransformSet):
        transforms = TransformSet(_elements(transforms))
    if check:
        graph.validate(params)
        _check_transforms(graph, transforms)
    out = {}
    for name, x in params.items():
        edges = [e for e in graph.edges_of(name) if e.space in transforms]
        if not edges:
            out[name] = x
            continue
        t, was_numpy = to_tensor(x)
        by_axis = defaultdict(list)
        for e in edges:
            by_axis[e.axis % t.dim()].append(e)
        for axis, group in by_axis.items():
            t = apply_axis(t, axis, group, transforms)
        out[name] = restore(t, was_numpy)
    return out


def _elements(transforms) -> Mapping:
    """``transforms`` if it maps space names to elements, else :class:`ArgumentTypeError` naming the entry."""
    if not isinstance(transforms, Mapping):
        raise ArgumentTypeError(f"transforms must be a mapping space → Element (a TransformSet), got "
                                f"{type(transforms).__name__}", argument="transforms")
    for space, el in transforms.items():
        if not isinstance(el, Element):
            raise ArgumentTypeError(f"transform for space {space!r} must be an Element, got {type(el).__name__}",
                                    argument=f"transforms[{space!r}]")
    return transforms


def apply_axis(t: torch.Tensor, axis: int, edges, transforms) -> torch.Tensor:
    """Transform axis ``axis`` of ``t`` by every edge in ``edges`` (all on that axis).

    Each edge's span is transformed by ``transforms[edge.space]`` in the edge's role (a repeated
    edge: each copy alike, :mod:`symmetries.blocks`); parts of the axis no edge covers are kept. A
    tied axis (edges ``out`` and ``in`` with one span) is transformed once, in role ``out``. This is
    the per-axis step of :func:`apply`.
    """
    size = t.shape[axis]
    fast = _gather_fast_path(t, axis, edges, transforms)
    if fast is not None:
        return fast
    spans = {}
    for e in edges:  # a tied axis appears twice with one span: keep one edge, role out
        span = e.span(size)
        if span not in spans or e.role is Role.OUT:
            spans[span] = e
    if len(spans) == 1 and next(iter(spans)) == (0, size):
        return _apply_edge(t, axis, spans[(0, size)], transforms)
    pieces, pos = [], 0
    for (start, stop), e in sorted(spans.items()):
        if start > pos:
            pieces.append(t.narrow(axis, pos, start - pos))
        pieces.append(_apply_edge(t.narrow(axis, start, stop - start), axis, e, transforms))
        pos = stop
    if pos < size:
        pieces.append(t.narrow(axis, pos, size - pos))
    return torch.cat(pieces, dim=axis)


def _apply_edge(t: torch.Tensor, axis: int, e, transforms) -> torch.Tensor:
    """``t`` (the edge's span along ``axis``) transformed by the edge's element in its role; a repeated
    edge acts on its ``count`` copies alike (split into ``(count, n)``, transformed, merged back)."""
    el = transforms[e.space]
    if e.repeat is None:
        return el.apply(t, axis, e.role)
    count = e.repeat[0]
    if t.shape[axis] != count * el.shape[1]:
        raise ElementShapeError(f"transform for space {e.space!r} maps size {el.shape[1]} but the repeated axis "
                                f"{axis} of {e.parameter!r} has {t.shape[axis]} entries, not {count} copies")
    block = merged_block(e, *el.shape[::-1])
    return merge_copies(el.apply(split_copies(t, axis, *e.repeat), axis + 1, e.role), axis, block)


def admitted(space, el: Element) -> bool:
    """Whether ``el`` is an element of a class ``space`` admits (:meth:`SymmetryClass.contains_element`,
    tolerance scaled to the element's dtype). A map that shrinks the space (``m < n``) is admitted as
    the merge map of an embedding the space admits: its inverse must be one."""
    if el.shape[0] < el.shape[1]:
        inverse = el.inverse()
        return any(c.rectangular and c.contains_element(inverse) for c in space.classes)
    return any(c.contains_element(el) for c in space.classes)


def _gather_fast_path(t: torch.Tensor, axis: int, edges, transforms) -> torch.Tensor | None:
    """One full-axis index map (a permutation, monomial or head permutation in gather form): a single
    ``index_select`` along the axis and a broadcast scale — no moved copies. ``None`` if not applicable."""
    size = t.shape[axis]
    if not all(e.span(size) == (0, size) for e in edges):
        return None
    e = next((e for e in edges if e.role is Role.OUT), edges[0])
    el = transforms[e.space]
    if isinstance(el, HeadElement):
        el = el.gather_form() or el
    if not isinstance(el, GatherElement):
        return None
    index = el.index
    scale = {Role.OUT: el.out_scale, Role.IN: el.in_scale,
             Role.VAR: None if el.out_scale is None else el.out_scale ** 2}[e.role]
    if e.repeat is not None:  # one gather over every copy
        if any(f.repeat != e.repeat for f in edges) or size != e.repeat[0] * el.shape[1]:
            return None
        block = merged_block(e, *el.shape[::-1])
        index = repeat_index(index.cpu(), e.repeat[0], e.repeat[1], block)
        if scale is not None:
            scale = scale[repeat_units(el.shape[0], e.repeat[0], block).to(scale.device)]
    if scale is not None and e.repeat is None and el.is_diagonal():  # a scaling: the product is the new tensor
        y = t
    else:
        y = t.index_select(axis, index.to(t.device))
    if scale is not None:
        shape = [1] * t.dim()
        shape[axis] = -1
        y = y * scale.to(device=t.device, dtype=t.dtype).reshape(shape)
    return y


def _check_transforms(graph, transforms: TransformSet) -> None:
    for space, el in transforms.items():
        s = graph.space(space)  # raises UnknownSpaceError
        if el.shape[1] != s.size:
            raise ElementShapeError(f"transform for space {space!r} maps size {el.shape[1]} but the space has "
                                    f"size {s.size}")
        if not admitted(s, el):
            raise ElementNotAdmittedError(
                f"transform for space {space!r} ({el!r}) is not an element of any class the space admits "
                f"({', '.join(map(repr, s.classes))}): applying it would change the network's function "
                f"(check=False skips this check)", space=space, cls=s.classes, element=el)
    for group, names in graph.head_groups().items():
        perms = {}
        for n in names:
            el = transforms.get(n)
            if isinstance(el, HeadElement):
                perms[n] = el.head_perm.tolist()
            elif el is not None:
                raise TieError(f"space {n!r} of head group {group!r} needs a head-structured transform, got "
                               f"{el!r}", space=n)
            else:
                perms[n] = None
        given = {tuple(p) for p in perms.values() if p is not None}
        identity = tuple(range(len(next(iter(given))))) if given else ()
        if len(given) > 1 or (given and None in perms.values() and given != {identity}):
            raise TieError(f"spaces of head group {group!r} ({', '.join(names)}) must share one head permutation; "
                           f"got {perms}", space=names[0])
