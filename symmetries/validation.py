"""Validation of a weight graph, alone and against a parameter dict.

Every failure is a typed error (``symmetries.errors``) that names the parameter, the
axis and the space at fault.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import numpy as np
import torch

from symmetries.classes import HeadStructured
from symmetries.errors import (MissingParameterError, OverlappingAxisError, ParameterTypeError, RoleClassError,
                               ShapeMismatchError, TieError, UncoveredParameterError, UnknownParameterError)
from symmetries.roles import Role

__all__ = ["validate", "check_structure", "check_params"]


def validate(graph, params: Mapping | None = None) -> None:
    check_structure(graph)
    if params is not None:
        check_params(graph, params)


def _where(e) -> str:
    sl = "" if e.slice is None else f"[{e.slice[0]}:{e.slice[1]}]"
    rep = "" if e.repeat is None else f" (repeat {e.repeat[0]} × block {e.repeat[1]})"
    return f"parameter {e.parameter!r} axis {e.axis}{sl}{rep}"


def check_structure(graph) -> None:
    """Checks that need no tensors: coverage, claims on axes, roles against classes, heads."""
    cache = graph._index()
    if cache.get("structure_ok"):
        return
    for p in graph.parameters():
        edges = graph.edges_of(p.name)
        if p.fixed and edges:
            raise UncoveredParameterError(
                f"parameter {p.name!r} is declared fixed but {_where(edges[0])} indexes space {edges[0].space!r}",
                parameter=p.name, axis=edges[0].axis, space=edges[0].space)
        if not p.fixed and not edges:
            raise UncoveredParameterError(
                f"parameter {p.name!r} is not covered by any space and not declared fixed "
                f"(add an edge, or declare it with fixed=True)", parameter=p.name)
        for e in edges:
            _check_repeat(e, graph.space(e.space).size)
            if p.shape is not None:
                _check_axis(e, p.shape, graph.space(e.space).size)
        _check_claims(graph, edges, p.shape)

    for s in graph.spaces():
        for c in s.classes:
            if isinstance(c, HeadStructured) and s.size % c.num_heads:
                raise ShapeMismatchError(f"space {s.name!r} of size {s.size} admits {c!r} but its size is not a "
                                         f"multiple of {c.num_heads} heads", space=s.name)
        for e in graph.edges_at(s.name):
            if e.role is Role.VAR:
                bad = [c for c in s.classes if not c.monomial]
                if bad:
                    raise RoleClassError(f"{_where(e)} has role 'var' in space {s.name!r}, which is only exact for "
                                         f"monomial maps, but the space admits {bad[0]!r}",
                                         parameter=e.parameter, axis=e.axis, space=s.name)
    for group, names in graph.head_groups().items():
        heads = set()
        for name in names:
            for c in graph.space(name).classes:
                if not isinstance(c, HeadStructured):
                    raise TieError(f"space {name!r} is in head group {group!r} but admits {c!r}, which has no "
                                   f"head permutation to share", space=name)
                heads.add(c.num_heads)
        if len(heads) > 1:
            raise TieError(f"spaces of head group {group!r} ({', '.join(names)}) disagree on the number of "
                           f"heads: {sorted(heads)}", space=names[0])
    cache["structure_ok"] = True


def _check_axis(e, shape, size: int) -> None:
    if not -len(shape) <= e.axis < len(shape):
        raise ShapeMismatchError(f"{_where(e)} does not exist: the tensor has shape {tuple(shape)}",
                                 parameter=e.parameter, axis=e.axis, space=e.space)
    length = shape[e.axis]
    start, stop = e.span(length)
    if stop > length:
        raise ShapeMismatchError(f"{_where(e)} runs past the axis of size {length}",
                                 parameter=e.parameter, axis=e.axis, space=e.space)
    if stop - start != size * e.count:
        copies = "" if e.repeat is None else f" × {e.count} copies = {size * e.count}"
        raise ShapeMismatchError(f"{_where(e)} has size {stop - start} but space {e.space!r} has size {size}{copies}",
                                 parameter=e.parameter, axis=e.axis, space=e.space)


def _check_repeat(e, size: int) -> None:
    """A repeat is a pair of positive integers whose block divides the space's size (also for a graph
    edited through ``.nx``)."""
    if e.repeat is None:
        return
    ok = (isinstance(e.repeat, tuple) and len(e.repeat) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in e.repeat))
    if not ok or size % e.repeat[1]:
        raise ShapeMismatchError(f"parameter {e.parameter!r} axis {e.axis}: repeat {e.repeat!r} must be a pair (count, "
                                 f"block) of positive integers with block dividing the size {size} of space "
                                 f"{e.space!r}", parameter=e.parameter, axis=e.axis, space=e.space)


def _check_claims(graph, edges, shape) -> None:
    """No index of an axis is claimed twice, except a tied axis (``out`` and ``in`` of one space).
    With the tensor's ``shape`` known, negative axes are read as the axes they name."""
    by_axis = defaultdict(list)
    for e in edges:
        by_axis[e.axis % len(shape) if shape is not None else e.axis].append(e)
    for axis, group in by_axis.items():
        size = shape[axis] if shape is not None else None
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                sa = a.slice or (0, size if size is not None else graph.space(a.space).size * a.count)
                sb = b.slice or (0, size if size is not None else graph.space(b.space).size * b.count)
                if sa[0] >= sb[1] or sb[0] >= sa[1]:
                    continue
                tied = (a.space == b.space and sa == sb and a.repeat == b.repeat
                        and {a.role, b.role} == {Role.OUT, Role.IN})
                if not tied:
                    raise OverlappingAxisError(
                        f"{_where(b)} is claimed twice: by space {a.space!r} ({a.role}) and by space "
                        f"{b.space!r} ({b.role})", parameter=a.parameter, axis=axis, space=b.space)
                bad = [c for c in graph.space(a.space).classes if not c.orthogonal]
                if bad:
                    raise RoleClassError(
                        f"{_where(a)} both produces and consumes space {a.space!r} (tied weights), which is "
                        f"only exact for classes with T⁻ᵀ = T, but the space admits {bad[0]!r}",
                        parameter=a.parameter, axis=axis, space=a.space)


def check_params(graph, params: Mapping) -> None:
    """Keys, kinds and sizes of ``params`` against the graph: a mapping name → torch tensor or numpy
    array (anything else, ``None`` included, is a :class:`ParameterTypeError` naming the entry)."""
    if not isinstance(params, Mapping):
        raise ParameterTypeError(f"parameters must be a mapping name → tensor (a state_dict works), got "
                                 f"{type(params).__name__}")
    for k, v in params.items():
        if not isinstance(v, (torch.Tensor, np.ndarray)):
            raise ParameterTypeError(f"parameter {k!r} is a {type(v).__name__}, not a torch tensor or numpy array",
                                     parameter=k if isinstance(k, str) else None)
    names = {p.name for p in graph.parameters()}
    unknown = [k for k in params if k not in names]
    if unknown:
        raise UnknownParameterError(
            f"parameter {unknown[0]!r} is not in graph {graph.name!r}"
            + (f" ({len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""), parameter=unknown[0])
    missing = [n for n in names if n not in params]
    if missing:
        raise MissingParameterError(
            f"parameter {missing[0]!r} of graph {graph.name!r} is missing"
            + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""), parameter=missing[0])
    for p in graph.parameters():
        shape = tuple(params[p.name].shape)
        if p.shape is not None and shape != p.shape:
            raise ShapeMismatchError(f"parameter {p.name!r} has shape {shape}, the graph declares {p.shape}",
                                     parameter=p.name)
        edges = graph.edges_of(p.name)
        for e in edges:
            _check_axis(e, shape, graph.space(e.space).size)
        if p.shape is None:  # claims were checked on the declared axes only; now the shape is known
            _check_claims(graph, edges, shape)

