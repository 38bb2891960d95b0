"""The weight graph: parameter nodes, space nodes and the axes that join them.

A ``WeightGraph`` wraps a ``networkx.MultiDiGraph`` (``graph.nx``). Parameter nodes
hold one state-dict tensor (``kind="parameter"``, ``shape``, ``fixed``); space nodes
hold a hidden vector space (``kind="space"``, ``size``, ``classes`` it admits,
optional ``activation`` and ``head_group``). An edge parameter → space says which
``axis`` (and optional ``slice`` of it) indexes the space, its ``role``
(``out``: ``W ← T W``; ``in``: ``W ← W T⁻¹``; ``var``: squares, for running variances) and an
optional block structure ``repeat = (count, block)``: the span holds the space's units repeated,
viewed as ``(size/block, count, block)``, the space acting identically on each of the ``count``
copies (a flatten of channels × positions, a tile, grouped-query heads; :mod:`symmetries.blocks`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import networkx as nx

from symmetries.classes import SymmetryClass
from symmetries.errors import GraphError, UnknownParameterError, UnknownSpaceError
from symmetries.roles import Role

from symmetries._args import integer, items

__all__ = ["WeightGraph", "Parameter", "Space", "Edge"]


@dataclass(frozen=True)
class Parameter:
    """One tensor of the state dict. ``shape`` is ``None`` when taken from the tensor itself."""
    name: str
    shape: tuple[int, ...] | None
    fixed: bool = False


@dataclass(frozen=True)
class Space:
    """A hidden vector space and the classes it admits (the first is the default group)."""
    name: str
    size: int
    classes: tuple[SymmetryClass, ...]
    activation: str | None = None
    head_group: str | None = None

    @property
    def cls(self) -> SymmetryClass:
        return self.classes[0]


@dataclass(frozen=True)
class Edge:
    """``parameter``'s ``axis`` (restricted to ``slice`` = ``(start, stop)``) indexes ``space`` in ``role``;
    with ``repeat = (count, block)`` the span has ``count·size`` entries laid out ``(size/block, count,
    block)`` and the space acts on the outer and inner factors alike for each of the ``count`` copies."""
    parameter: str
    space: str
    axis: int
    role: Role
    slice: tuple[int, int] | None = None
    repeat: tuple[int, int] | None = None

    def span(self, axis_size: int) -> tuple[int, int]:
        return self.slice if self.slice is not None else (0, axis_size)

    @property
    def count(self) -> int:
        """How many copies of the space the span holds (1 without ``repeat``)."""
        return 1 if self.repeat is None else self.repeat[0]


#: Bumped by every change to a tracked graph's nodes, edges or their attributes (any graph: a
#: change anywhere only costs the other graphs one rebuild of their index).
_EDITS = [0]


class _TrackedDict(dict):
    """A dict that counts its changes in ``_EDITS`` (networkx never notifies, and users edit
    ``graph.nx.nodes[n][key]`` and ``graph.nx.edges[e][key]`` in place)."""

    __slots__ = ()

    def __setitem__(self, key, value):
        _EDITS[0] += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        _EDITS[0] += 1
        super().__delitem__(key)

    def clear(self):
        _EDITS[0] += 1
        super().clear()

    def pop(self, *args):
        _EDITS[0] += 1
        return super().pop(*args)

    def popitem(self):
        _EDITS[0] += 1
        return super().popitem()

    def setdefault(self, key, default=None):
        _EDITS[0] += 1
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        _EDITS[0] += 1
        super().update(*args, **kwargs)

    def __ior__(self, other):
        _EDITS[0] += 1
        return super().__ior__(other)


class TrackedMultiDiGraph(nx.MultiDiGraph):
    """The ``networkx.MultiDiGraph`` behind ``WeightGraph.nx``: every dict holding its nodes,
    edges and their attributes counts changes, so the graph's index is rebuilt after any edit."""

    node_dict_factory = node_attr_dict_factory = _TrackedDict
    adjlist_outer_dict_factory = adjlist_inner_dict_factory = _TrackedDict
    edge_key_dict_factory = edge_attr_dict_factory = _TrackedDict


class WeightGraph:
    """An architecture as a graph of weight groups. Build it with ``add_parameter``,
    ``add_space`` and ``connect``; check it with ``validate``; query it with networkx via ``.nx``.

    Edits made directly on ``.nx`` (removing an edge, ``g.nx.nodes[s]["classes"] = …``) are seen
    by every query and by ``validate``: the index the queries answer from is rebuilt after any change."""

    def __init__(self, name: str | None = None):
        self.nx = TrackedMultiDiGraph(name=name or "")

    @property
    def nx(self) -> nx.MultiDiGraph:
        """The networkx graph (query, draw or edit it with networkx)."""
        return self._nx

    @nx.setter
    def nx(self, graph: nx.MultiDiGraph) -> None:
        if not isinstance(graph, nx.MultiDiGraph):
            raise GraphError(f"WeightGraph.nx must be a networkx.MultiDiGraph, got {type(graph).__name__}")
        self._nx = graph
        self._cache: dict | None = None

    # -- building ------------------------------------------------------------------------
    def add_parameter(self, name: str, shape: Sequence[int] | None = None, *, fixed: bool = False) -> "WeightGraph":
        """Declare a tensor; ``fixed=True`` says no symmetry acts on it. ``shape`` (``None``: taken
        from the tensor) lists non-negative integers; anything else is a ``GraphError``."""
        self._new_node(name)
        if shape is not None:
            bad = lambda msg: GraphError(f"parameter {name!r}: {msg}", parameter=name)  # noqa: E731
            shape = tuple(integer(f"shape[{i}]", n, 0, error=bad)
                          for i, n in enumerate(items("shape", shape, error=bad)))
        self.nx.add_node(name, kind="parameter", shape=shape, fixed=bool(fixed))
        return self

    def add_space(self, name: str, size: int, classes: SymmetryClass | Iterable[SymmetryClass], *,
                  activation: str | None = None, head_group: str | None = None) -> "WeightGraph":
        """Declare a hidden space of ``size`` units admitting ``classes`` (maximal ones; the first is
        the group drawn by default). Spaces sharing a ``head_group`` share their head permutation.
        ``size`` must be a positive integer (else a ``GraphError`` naming the space)."""
        self._new_node(name)
        size = integer("size", size, error=lambda msg: GraphError(f"space {name!r}: {msg}", space=name))
        classes = _as_classes(classes, name)
        for key, value in (("activation", activation), ("head_group", head_group)):
            if value is not None and not isinstance(value, str):
                raise GraphError(f"space {name!r}: {key} must be a string or None, got {value!r}", space=name)
        self.nx.add_node(name, kind="space", size=size, classes=classes, activation=activation,
                         head_group=head_group)
        return self

    def connect(self, parameter: str, space: str, *, axis: int, role: Role | str,
                slice: tuple[int, int] | None = None, repeat: tuple[int, int] | None = None) -> "WeightGraph":
        """Say that ``parameter``'s ``axis`` (or ``slice`` of it) indexes ``space`` in ``role``.

        ``axis`` is an integer (negative counts from the end); ``slice`` a pair of integers
        ``0 ≤ start < stop``; ``role`` ``"out"``, ``"in"`` or ``"var"``; ``repeat`` a pair
        ``(count, block)`` of positive integers, ``block`` dividing the space's size: the span then
        has ``count × size`` entries laid out ``(size/block, count, block)`` — a flatten of ``C``
        channels × ``S`` positions (channel-major) is ``(S, 1)``, ``x.repeat(k)`` is ``(k, size)``,
        grouped-query heads (``G`` groups of ``R`` query heads of width ``d``) are ``(R, d)``.
        Anything else is a ``GraphError`` naming the parameter and the space (a float axis is never
        truncated)."""
        if not isinstance(parameter, str) or self.nx.nodes.get(parameter, {}).get("kind") != "parameter":
            raise UnknownParameterError(f"cannot connect unknown parameter {parameter!r}",
                                        parameter=parameter if isinstance(parameter, str) else None)
        if not isinstance(space, str) or self.nx.nodes.get(space, {}).get("kind") != "space":
            raise UnknownSpaceError(f"cannot connect {parameter!r} to unknown space {space!r}",
                                    parameter=parameter, space=space if isinstance(space, str) else None)
        bad = lambda msg: GraphError(f"connect {parameter!r} → {space!r}: {msg}",  # noqa: E731
                                     parameter=parameter, space=space)
        axis = integer("axis", axis, None, error=bad)
        if slice is not None:
            start, stop = (integer(f"slice[{i}]", v, 0, error=bad)
                           for i, v in enumerate(_pair("slice", slice, bad)))
            if not start < stop:
                raise GraphError(f"slice {slice!r} of {parameter!r} axis {axis} must satisfy 0 ≤ start < stop",
                                 parameter=parameter, axis=axis, space=space)
            slice = (start, stop)
        if repeat is not None:
            count, block = (integer(f"repeat[{i}]", v, 1, error=bad)
                            for i, v in enumerate(_pair("repeat", repeat, bad, "(count, block)")))
            size = self.nx.nodes[space]["size"]
            if size % block:
                raise GraphError(f"connect {parameter!r} axis {axis} → {space!r}: repeat block {block} does not "
                                 f"divide the space's size {size}", parameter=parameter, axis=axis, space=space)
            repeat = None if count == 1 else (count, block)  # one copy: a plain edge
        try:
            role = Role.parse(role)
        except (ValueError, TypeError) as exc:
            raise bad(str(exc)) from None
        self.nx.add_edge(parameter, space, axis=axis, role=role, slice=slice, repeat=repeat)
        self._cache = None
        return self

    def set_classes(self, space: str, classes: SymmetryClass | Iterable[SymmetryClass]) -> "WeightGraph":
        """Re-declare what ``space`` admits (returns the graph, modified in place)."""
        self.space(space)
        self.nx.nodes[space]["classes"] = _as_classes(classes, space)
        self._cache = None
        return self

    def with_classes(self, overrides: dict[str, SymmetryClass | Iterable[SymmetryClass]]) -> "WeightGraph":
        """A copy of the graph with some spaces re-declared."""
        g = self.copy()
        for space, classes in overrides.items():
            g.set_classes(space, classes)
        return g

    def copy(self) -> "WeightGraph":
        g = WeightGraph(self.name)
        g.nx = self.nx.copy()
        return g

    def _new_node(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"node names must be non-empty strings, got {name!r}")
        if name in self.nx:
            kind = self.nx.nodes[name]["kind"]
            raise GraphError(f"{name!r} is already declared as a {kind}",
                             parameter=name if kind == "parameter" else None,
                             space=name if kind == "space" else None)
        self._cache = None

    # -- queries ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.nx.graph.get("name", "")

    def _index(self) -> dict:
        """Parameters, spaces and edges by name, rebuilt whenever the networkx graph changed (a
        graph assigned to ``.nx`` that does not track its changes is re-read on every query)."""
        cache = self._cache
        if cache is None or cache["edits"] != _EDITS[0] or not isinstance(self._nx, TrackedMultiDiGraph):
            self._cache = None
        if self._cache is None:
            params, spaces, by_param, by_space = {}, {}, {}, {}
            for node, data in self.nx.nodes(data=True):
                if data["kind"] == "parameter":
                    params[node] = Parameter(node, data["shape"], data["fixed"])
                    by_param[node] = []
                else:
                    spaces[node] = Space(node, data["size"], data["classes"], data["activation"],
                                         data["head_group"])
                    by_space[node] = []
            for p, s, data in self.nx.edges(data=True):
                e = Edge(p, s, data["axis"], data["role"], data["slice"], data.get("repeat"))
                by_param[p].append(e)
                by_space[s].append(e)
            self._cache = dict(params=params, spaces=spaces, by_param=by_param, by_space=by_space, edits=_EDITS[0])
        return self._cache

    def parameters(self) -> list[Parameter]:
        return list(self._index()["params"].values())

    def spaces(self) -> list[Space]:
        return list(self._index()["spaces"].values())

    def edges(self) -> list[Edge]:
        return [e for es in self._index()["by_param"].values() for e in es]

    def parameter(self, name: str) -> Parameter:
        try:
            return self._index()["params"][name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise UnknownParameterError(f"graph {self.name!r} has no parameter {name!r}", parameter=name) from None

    def space(self, name: str) -> Space:
        try:
            return self._index()["spaces"][name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._index()["spaces"])) or "none"
            raise UnknownSpaceError(f"graph {self.name!r} has no space {name!r} (spaces: {known})",
                                    space=name) from None

    def edges_of(self, parameter: str) -> list[Edge]:
        """Edges leaving ``parameter`` (the axes symmetries act on)."""
        return list(self._index()["by_param"][self.parameter(parameter).name])

    def edges_at(self, space: str) -> list[Edge]:
        """Edges entering ``space`` (every tensor axis it indexes)."""
        return list(self._index()["by_space"][self.space(space).name])

    def head_groups(self) -> dict[str, list[str]]:
        """Spaces that share one head permutation, by group name."""
        groups: dict[str, list[str]] = {}
        for s in self.spaces():
            if s.head_group is not None:
                groups.setdefault(s.head_group, []).append(s.name)
        return groups

    def admits(self, space: str, cls: SymmetryClass) -> bool:
        """Whether ``cls`` is contained in a class that ``space`` admits (the class lattice)."""
        return any(cls <= c for c in self.space(space).classes)

    def validate(self, params=None) -> "WeightGraph":
        """Check the graph (and, if given, a parameter dict against it); raise a typed error naming
        the parameter, axis and space at fault. Returns the graph."""
        from symmetries.validation import validate
        validate(self, params)
        return self

    def __contains__(self, name: str) -> bool:
        return isinstance(name, str) and name in self.nx

    def __repr__(self) -> str:
        idx = self._index()
        return (f"WeightGraph({self.name!r}: {len(idx['params'])} parameters, {len(idx['spaces'])} spaces, "
                f"{self.nx.number_of_edges()} edges)")


def _pair(name: str, value, error, what: str = "(start, stop)") -> list:
    out = items(name, value, error=error)
    if len(out) != 2:
        raise error(f"{name} must be a pair {what}, got {value!r}")
    return out


def _as_classes(classes, space: str) -> tuple[SymmetryClass, ...]:
    if isinstance(classes, SymmetryClass):
        classes = (classes,)
    given = classes
    classes = tuple(classes) if isinstance(classes, Iterable) and not isinstance(classes, (str, bytes)) else ()
    if not classes or not all(isinstance(c, SymmetryClass) for c in classes):
        raise GraphError(f"space {space!r} needs one or more SymmetryClass instances, got {given!r}", space=space)
    return classes
