"""What coordinate descent over spaces can reuse from one sweep to the next, keyed by the identity of
elements (an element is never modified in place: a changed transform is a new object).

* :class:`TensorObjective` — ``J(T) = Σ_p J_p(T)``, ``J_p = ‖θ_A[p] − (T·θ_B)[p]‖²``
  (:meth:`~solvers.Problem.objective` over one tensor), each ``J_p`` recomputed only when the element of
  a space touching ``p`` is another object than at its last evaluation; elements the caller knows to be
  the identity are not applied (``I·B = B`` exactly).
* :class:`VisitLog` — per unit (a space or a head group), the elements its subproblem data read (every
  space on a tensor touching the unit, its own included) after its last visit. A visit whose inputs
  are those same objects solves the same subproblem from the same current element: it would repeat
  the last visit exactly, so it can be skipped.
"""
from __future__ import annotations

from typing import Mapping

from symmetries.elements import Element
from symmetries.transforms import TransformSet

__all__ = ["TensorObjective", "VisitLog"]


class TensorObjective:
    """``J(T)`` tensor by tensor with a cache per tensor (:meth:`__call__`); ``identities[s]`` is an
    element known to be the identity at ``s`` (skipped when applying). Equal to
    :meth:`Problem.objective` to round-off (the same per-tensor sums, added in another grouping)."""

    def __init__(self, problem, identities: Mapping[str, Element] | None = None):
        self.problem = problem
        self.identities = dict(identities or {})
        gb = problem.graph_b
        self.reads = {name: tuple(dict.fromkeys(e.space for e in gb.edges_of(name))) for name in problem.params_a}
        self._cache: dict[str, tuple[tuple, float]] = {}
        #: whether weight-matching visits hand their tensors' terms here (:meth:`prefill`): off for a solve that
        #: reads ``J`` only at its start and end, where computing them per visit costs more than it saves
        self.visit_terms = True

    def __call__(self, transforms: Mapping[str, Element]) -> float:
        total = 0.0
        for name, spaces in self.reads.items():
            key = tuple(self._acting(s, transforms) for s in spaces)
            hit = self._cache.get(name)
            if not _same_key(hit, key):
                used = TransformSet({s: el for s, el in zip(spaces, key) if el is not None})
                hit = (key, self.problem.objective(used, (name,)))
                self._cache[name] = hit
            total += hit[1]
        return total

    def holds(self, name: str, transforms: Mapping[str, Element]) -> bool:
        """Whether tensor ``name``'s ``J_p`` under ``transforms`` is cached already."""
        if name not in self.reads:
            return False
        return _same_key(self._cache.get(name), tuple(self._acting(s, transforms) for s in self.reads[name]))

    def prefill(self, name: str, transforms: Mapping[str, Element], value: float) -> None:
        """Note ``value`` as tensor ``name``'s ``J_p`` under ``transforms`` (computed by the caller from the
        same elements, e.g. from a visit's rows: ``‖A_e − T·B_e‖²``)."""
        if name in self.reads:
            self._cache[name] = (tuple(self._acting(s, transforms) for s in self.reads[name]), value)

    def _acting(self, space: str, transforms: Mapping[str, Element]) -> Element | None:
        el = transforms.get(space)
        return None if el is None or el is self.identities.get(space) else el


def _same_key(hit: tuple | None, key: tuple) -> bool:
    """Whether a cached ``(elements, J_p)`` was computed from exactly the element objects of ``key``."""
    return hit is not None and len(hit[0]) == len(key) and all(x is y for x, y in zip(hit[0], key))


class VisitLog:
    """Which units would repeat their last visit. ``reads[u]``: the spaces whose elements unit ``u``'s data
    and solve read. :meth:`record` after a visit; :meth:`repeats` before the next one."""

    def __init__(self, problem, units: list[list[str]]):
        gb = problem.graph_b
        searched = set(problem.spaces)
        self.reads = []
        for spaces in units:
            names = dict.fromkeys(e.parameter for s in spaces for e in gb.edges_at(s))
            near = dict.fromkeys(e.space for n in names for e in gb.edges_of(n) if e.space in searched)
            self.reads.append(tuple(dict.fromkeys([*spaces, *near])))
        self._after: list[tuple | None] = [None] * len(units)

    def record(self, u: int, transforms: Mapping[str, Element], repeatable: bool) -> None:
        """Note unit ``u``'s inputs after a visit; ``repeatable`` — whether a visit from these inputs gives
        the same step (false when it changed an element its next solve reads through ``current`` or a
        tensor meeting it twice)."""
        self._after[u] = tuple(transforms.get(s) for s in self.reads[u]) if repeatable else None

    def repeats(self, u: int, transforms: Mapping[str, Element]) -> bool:
        """Whether every element unit ``u`` reads is the object it was after the unit's last recorded visit."""
        after = self._after[u]
        return after is not None and all(transforms.get(s) is el for s, el in zip(self.reads[u], after))
