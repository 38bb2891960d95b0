"""Permutation visits whose answer cannot have changed: a certificate from the last visit's score margins.

A permutation unit solves ``argmax_π ⟨π, M⟩``, ``M = Σ_e A_e B̃_eᵀ``. When every row's best column is
``π(j)`` and beats the row's second best by at least ``μ`` (the *margin*; then ``π`` is the assignment's
unique optimum), any change ``Δ`` of the scores with ``|Δ_ji| < μ/2`` keeps each row's best column, so
``π`` stays the optimum. Between two visits of a unit its scores move only through the other spaces'
elements on its tensors. For a dense norm-keeping neighbour (an ``Orthogonal`` residual stream) that moved
from ``S`` to ``S'`` (acting as ``R``, ``R'`` in the edge's role), B's row ``i`` of edge ``e`` moves by
at most ``‖b_i‖·‖R' − R‖₂`` (the other maps keep row norms), so

    ``|Δ_ji| ≤ Σ_e max_j ‖a_j‖ · max_i ‖b_i‖ · ‖R'_e − R_e‖_F``

(and each score carries at most ``k ε ‖a‖ ‖b‖`` of round-off). A unit whose bound stays below half its
margin is not visited: the visit would return the permutation it holds. On two planted GPT-2-shaped
models this skips every MLP's second visit (the residual moves little after the forward pass); on
unrelated models the margins are small and every visit runs (the margin costs one ``topk`` per visit).
Not for lazy problems (the row norms would read the tensors once more from disk).
"""
from __future__ import annotations

import math

import torch

from symmetries.classes import HeadStructured, Orthogonal, Permutation
from symmetries.elements import DenseElement, GatherElement
from symmetries.roles import Role

from solvers.matcher import Matcher
from solvers.subproblems import linear_classes, subproblem

__all__ = ["StableAssignments"]

SAFETY = 1.01  # the bound is scaled by this (B's row norms are kept by orthogonal maps only to round-off)


class StableAssignments:
    """Per permutation unit: the margin of its last visit and the elements it read then (:meth:`note`);
    :meth:`holds` — whether a visit now would certainly return the same permutation."""

    def __init__(self, problem, matcher: Matcher, units: list[list[str]], reads: list[tuple[str, ...]],
                 coupled: list):
        self.problem, self.matcher = problem, matcher
        self.reads = reads
        dense = {s for s, c in problem.classes.items() if isinstance(c, Orthogonal)}
        self.eligible = {u for u, spaces in enumerate(units)
                         if not problem.lazy and len(spaces) == 1 and not coupled[u]
                         and _plain_permutation(problem.classes[spaces[0]])
                         and problem.sizes[spaces[0]][0] == problem.sizes[spaces[0]][1]
                         and any(s in dense for s in reads[u])
                         and all(linear_classes(problem.classes[s]) for s in reads[u] if s in problem.classes)}
        self._last: dict[int, tuple[float, dict]] = {}  # unit → (margin, elements read at that visit)
        self._edges: dict[int, list] = {}  # unit → per edge (max ‖a_j‖ · max ‖b_i‖, k, {axis: (space, role)})

    @property
    def active(self) -> bool:
        return bool(self.eligible)

    def note(self, u: int, space: str, score: torch.Tensor, transforms: dict) -> None:
        """After a visit of unit ``u``: the margin of ``transforms[space]`` (its permutation) on ``score``."""
        if u not in self.eligible:
            return
        el = transforms[space]
        if not (isinstance(el, GatherElement) and el.out_scale is None and el.in_scale is None) or score.shape[1] < 2:
            self._last.pop(u, None)
            return
        s = score.detach()
        rows = torch.arange(s.shape[0], device=s.device)
        best = s[rows, el.index.to(s.device)]
        top = torch.topk(s, 2, dim=1).values
        second = torch.where(top[:, 0] == best, top[:, 1], top[:, 0])  # the best other column
        margin = float((best - second).min()) if bool((best >= top[:, 0]).all()) else -math.inf
        self._last[u] = (margin, {x: transforms.get(x) for x in self.reads[u]})

    def holds(self, u: int, transforms: dict) -> bool:
        """Whether unit ``u``'s permutation is certified to be its visit's answer under ``transforms``."""
        last = self._last.get(u)
        if last is None or not last[0] > 0:
            return False
        bound = self.change_bound(u, transforms)
        return bound is not None and 2 * SAFETY * bound < last[0]

    def change_bound(self, u: int, transforms: dict) -> float | None:
        """An upper bound on ``max |M_now − M_then|`` over unit ``u``'s scores since its last noted visit
        (round-off included), or ``None`` where none is at hand: nothing moved (the visit log decides), a
        moved element not dense, two moved axes on one tensor, a variance edge."""
        last = self._last.get(u)
        if last is None:
            return None
        before = last[1]
        moved = {x for x in self.reads[u] if transforms.get(x) is not before[x]}
        if not moved:
            return None
        eps = torch.finfo(self.problem.dtype).eps
        bound = 0.0
        for factor, k, others in self._edge_factors(u):
            changed = [(x, role) for x, role in others.values() if x in moved]
            if len(changed) > 1:
                return None
            for x, role in changed:
                old, new = before[x], transforms.get(x)
                if not (isinstance(old, DenseElement) and isinstance(new, DenseElement)) or role is Role.VAR:
                    return None
                bound += factor * float(torch.linalg.matrix_norm(_acting(new, role) - _acting(old, role)))
            bound += 2 * k * eps * factor  # round-off of the old and the new score
        return bound

    def _edge_factors(self, u: int) -> list:
        if u not in self._edges:
            space = self._space(u)
            out = []
            gb = self.problem.graph_b
            for i, (ea, eb) in enumerate(self.matcher.edges[space]):
                a = self.matcher.a_row(space, i)
                b = self.matcher.b_rows(space, eb, {}, self.problem.sizes[space][1])
                factor = float(torch.linalg.vector_norm(a, dim=1).max()) * float(torch.linalg.vector_norm(b, dim=1).max())
                dim = len(self.problem.shape(eb.parameter))
                others = {f.axis % dim: (f.space, f.role) for f in gb.edges_of(eb.parameter)
                          if f.axis % dim != eb.axis % dim and f.space in self.reads[u]}
                out.append((factor, a.shape[1], others))
            self._edges[u] = out
        return self._edges[u]

    def _space(self, u: int) -> str:
        return self.reads[u][0]


def _plain_permutation(cls) -> bool:
    """A ``Permutation`` space solved by the built-in LAP (``argmax ⟨π, M⟩``)."""
    return (isinstance(cls, Permutation) and not isinstance(cls, HeadStructured)
            and subproblem.dispatch(type(cls)) is subproblem.dispatch(Permutation))


def _acting(el: DenseElement, role: Role) -> torch.Tensor:
    """The matrix ``el`` applies along an axis in ``role`` (``out``: ``T``; ``in``: ``Qᵀ``)."""
    return el.matrix if role is Role.OUT else el.left_inverse.T
