"""Equivalence of weight graphs: equal up to the names of spaces and head groups.

Two graphs are equivalent when they have the same parameters (names, shapes, ``fixed``), and a
bijection of spaces (and of head groups) keeps sizes, classes (in order), activations, head-group
membership and every edge (parameter, axis, role, slice, repeat) — a networkx isomorphism of the labelled
graphs in which parameter nodes keep their names.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import networkx as nx

from symmetries.graph import WeightGraph

__all__ = ["graphs_equivalent", "assert_graphs_equivalent", "graph_difference"]


def _labelled(g: WeightGraph) -> nx.MultiDiGraph:
    h = nx.MultiDiGraph()
    for p in g.parameters():
        h.add_node(("p", p.name), label=("parameter", p.name, p.shape, p.fixed))
    for s in g.spaces():
        h.add_node(("s", s.name), label=("space", s.size, s.classes, s.activation, s.head_group is not None))
    for group, names in g.head_groups().items():
        h.add_node(("h", group), label=("head group",))
        for n in names:
            h.add_edge(("s", n), ("h", group), label=("member",))
    for e in g.edges():
        h.add_edge(("p", e.parameter), ("s", e.space), label=(e.axis, str(e.role), e.slice, e.repeat))
    return h


def _edge_match(a: dict, b: dict) -> bool:
    return Counter(d["label"] for d in a.values()) == Counter(d["label"] for d in b.values())


def graphs_equivalent(g1: WeightGraph, g2: WeightGraph) -> bool:
    """Whether ``g1`` and ``g2`` are the same graph up to renaming spaces and head groups."""
    if {(p.name, p.shape, p.fixed) for p in g1.parameters()} != {(p.name, p.shape, p.fixed) for p in g2.parameters()}:
        return False
    h1, h2 = _labelled(g1), _labelled(g2)
    return nx.is_isomorphic(h1, h2, node_match=lambda a, b: a["label"] == b["label"], edge_match=_edge_match)


def assert_graphs_equivalent(g1: WeightGraph, g2: WeightGraph) -> None:
    """Raise ``AssertionError`` explaining the first difference when the graphs are not equivalent."""
    if not graphs_equivalent(g1, g2):
        diff = graph_difference(g1, g2) or "no renaming of spaces and head groups maps one graph onto the other"
        raise AssertionError(f"graphs {g1.name!r} and {g2.name!r} differ: {diff}")


def _signature(g: WeightGraph, space: str) -> tuple:
    return tuple(sorted((e.parameter, e.axis, str(e.role), e.slice or (), e.repeat or ()) for e in g.edges_at(space)))


def _fmt_space(g: WeightGraph, name: str) -> str:
    s = g.space(name)
    edges = ", ".join(f"{p}[{a}{':' + str(sl) if sl else ''}{' repeat ' + str(rep) if rep else ''}]:{r}"
                      for p, a, r, sl, rep in _signature(g, name))
    return (f"space {name!r} (size {s.size}, classes {s.classes}, activation {s.activation!r}, "
            f"head group {s.head_group!r}; edges {edges or 'none'})")


def graph_difference(g1: WeightGraph, g2: WeightGraph) -> str | None:
    """The first difference found, in words, or ``None`` when none is found.

    Spaces are matched by the set of parameter axes that index them (parameter names are fixed),
    so a message names the space on both sides."""
    p1, p2 = {p.name: p for p in g1.parameters()}, {p.name: p for p in g2.parameters()}
    for name in p1:
        if name not in p2:
            return f"parameter {name!r} is only in the first graph"
    for name in p2:
        if name not in p1:
            return f"parameter {name!r} is only in the second graph"
    for name, a in p1.items():
        b = p2[name]
        if a.shape != b.shape:
            return f"parameter {name!r} has shape {a.shape} in the first graph and {b.shape} in the second"
        if a.fixed != b.fixed:
            return f"parameter {name!r} is {'fixed' if a.fixed else 'not fixed'} in the first graph only"
    by_sig2 = defaultdict(list)
    for s in g2.spaces():
        by_sig2[_signature(g2, s.name)].append(s.name)
    matched: dict[str, str] = {}
    for s in g1.spaces():
        sig = _signature(g1, s.name)
        candidates = by_sig2.get(sig, [])
        if not candidates:
            near = [t.name for t in g2.spaces() if {x[0] for x in _signature(g2, t.name)} & {x[0] for x in sig}]
            hint = f"; nearest in the second graph: {_fmt_space(g2, near[0])}" if near else ""
            return f"{_fmt_space(g1, s.name)} has no counterpart with the same edges in the second graph{hint}"
        t = g2.space(candidates.pop(0))
        matched[s.name] = t.name
        for attr in ("size", "classes", "activation"):
            if getattr(s, attr) != getattr(t, attr):
                return (f"space {s.name!r} (first) and {t.name!r} (second) index the same axes but differ in "
                        f"{attr}: {getattr(s, attr)!r} vs {getattr(t, attr)!r}")
        if (s.head_group is None) != (t.head_group is None):
            return f"space {s.name!r} (first) and {t.name!r} (second) differ in having a head group"
    left = [n for names in by_sig2.values() for n in names]
    if left:
        return f"{_fmt_space(g2, left[0])} is only in the second graph"
    groups: dict[str, str] = {}
    for a, b in matched.items():
        ga, gb = g1.space(a).head_group, g2.space(b).head_group
        if ga is not None and groups.setdefault(ga, gb) != gb:
            return f"head group {ga!r} of the first graph maps to several head groups of the second"
    if len(set(groups.values())) != len(groups):
        return "two head groups of the first graph map to one head group of the second"
    return None
