"""The convex misfit of a weight-matching problem and its certified lower bound.

With one matrix ``X_s`` per searched space (``X_s = I`` at fixed and ``Trivial`` spaces),

    f(X) = Σ_p ‖A_p X_in(p) − X_out(p) B_p‖²_F        (A = θ_A[p], B = θ_B[p], as matrices)

is jointly convex (the residual is linear in ``X``). For a permutation or orthogonal ``X``
``‖A X_in − X_out B‖ = ‖A − X_out B X_inᵀ‖``, so ``f(T) = J(T) = Σ_p ‖θ_A[p] − (T·θ_B)[p]‖²``
exactly: minimising ``f`` over a convex superset ``C`` of the class (Birkhoff polytope ⊇
permutations, spectral-norm ball ⊇ orthogonal maps) gives a lower bound on ``min_T J(T)``.

The bound is certified independently of the convex solver's accuracy: for any point ``X̂``,
convexity gives ``f(X) ≥ f(X̂) + ⟨∇f(X̂), X − X̂⟩``, so

    L(X̂) = f(X̂) + Σ_s min_{S ∈ C_s} ⟨G_s, S − X̂_s⟩,   G = ∇f(X̂),

is a lower bound on ``min_C f`` (hence on ``min_T J``) for *every* ``X̂`` — feasible or not — and
equals ``min_C f`` at the relaxed optimum (the Frank–Wolfe gap vanishes there). The inner
minima are exact: a linear assignment over the Birkhoff polytope (its vertices are the
permutations), ``−‖G‖_*`` (nuclear norm) over the spectral-norm ball.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from symmetries.assignment import solve_assignment
from symmetries.blocks import expand_repeats
from symmetries.classes import HeadStructured, Orthogonal, Permutation, Trivial
from symmetries.roles import Role

from solvers.errors import SolverInputError, UnsupportedClassError

__all__ = ["Term", "Misfit", "RelaxedOptimum", "build_misfit", "RELAXABLE"]

#: Relative allowance for float64 round-off in the certificate (≈ 4500 ulp of the terms it sums).
ROUNDOFF = 1e-12

#: The classes with a convex relaxation here, and the convex superset each is relaxed to.
RELAXABLE = {Permutation: "Birkhoff polytope (doubly stochastic matrices)",
             Orthogonal: "spectral-norm ball (σ_max(X) ≤ 1)",
             HeadStructured: "HeadStructured(k, Permutation()): the Birkhoff polytope of all k·d units; "
                             "HeadStructured(k, Orthogonal()): the spectral-norm ball of size k·d (the head "
                             "structure and the head permutation shared by a head group are dropped: a superset, "
                             "so the bound stays valid, only looser)"}


def relaxed_kind(cls):
    """The class whose convex superset relaxes ``cls`` (``Permutation()`` or ``Orthogonal()``), or ``None``.
    A head-structured map with a permutation (orthogonal) inner class is a permutation (orthogonal
    map) of all its units, so it is relaxed as one; an invertible inner class has no bounded convex
    superset on which ``f = J`` (``J`` involves ``A⁻ᵀ``), so it is not relaxed."""
    if isinstance(cls, HeadStructured):
        cls = cls.inner
    return {Permutation: Permutation(), Orthogonal: Orthogonal()}.get(type(cls))


@dataclass
class RelaxedOptimum:
    """``x[s]``: the relaxed matrices; ``value``: the convex solver's optimal value (cvxpy) or
    ``f(x)`` at the returned feasible point (APG) — not a certificate; ``bound``: the certified
    ``L(x)`` (APG: the best over the iterates checked); times in seconds."""
    x: dict[str, np.ndarray]
    value: float
    bound: float
    status: str
    setup_time: float
    solve_time: float
    solver: str
    variables: int
    constraints: int
    iterations: int = 0


@dataclass(frozen=True)
class Term:
    """One parameter's residual. ``kind`` is ``"both"`` (``a``, ``b``: ``k × m × n``, residual
    ``A_k X_in − X_out B_k``), ``"out"`` (``m × r``, ``A − X_out B``) or ``"in"`` (``r × n``,
    ``A X_in − B``)."""
    parameter: str
    kind: str
    out: str | None
    inn: str | None
    a: np.ndarray
    b: np.ndarray


@dataclass
class Misfit:
    """``f(X) = constant + Σ_terms ‖residual‖²``; ``spaces[s] = (n, class)``."""
    terms: list[Term]
    constant: float
    spaces: dict[str, tuple[int, object]]
    untouched: list[str] = field(default_factory=list)
    #: ``space → class searched`` (rounding projects onto it; ``spaces`` holds the relaxed kind) and the graph
    searched: dict[str, object] = field(default_factory=dict)
    graph: object = None

    # -- value and gradient -----------------------------------------------------------
    def residual(self, term: Term, x: dict[str, np.ndarray]) -> np.ndarray:
        if term.kind == "both":
            return term.a @ x[term.inn] - x[term.out] @ term.b
        if term.kind == "out":
            return term.a - x[term.out] @ term.b
        return term.a @ x[term.inn] - term.b

    def value(self, x: dict[str, np.ndarray]) -> float:
        """``f(X)`` in float64."""
        return float(self.constant + sum(float(np.sum(self.residual(t, x) ** 2)) for t in self.terms))

    def gradient(self, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``∇f(X)``: ``2 Σ Aᵀ R`` at ``X_in``, ``−2 Σ R Bᵀ`` at ``X_out``."""
        g = {s: np.zeros((n, n)) for s, (n, _) in self.spaces.items()}
        for t in self.terms:
            r = self.residual(t, x)
            if t.kind == "both":
                g[t.inn] += 2 * np.einsum("kmi,kmn->in", t.a, r)
                g[t.out] -= 2 * np.einsum("kmn,kjn->mj", r, t.b)
            elif t.kind == "out":
                g[t.out] -= 2 * r @ t.b.T
            else:
                g[t.inn] += 2 * t.a.T @ r
        return g

    # -- the certificate --------------------------------------------------------------
    def linear_min(self, space: str, g: np.ndarray) -> float:
        """``min_{S ∈ C_s} ⟨G, S⟩`` over the space's convex superset, exactly."""
        _, cls = self.spaces[space]
        if isinstance(cls, Permutation):
            rows, cols = solve_assignment(g, maximize=False)
            return float(g[rows, cols].sum())
        return -float(np.linalg.svd(g, compute_uv=False).sum())

    def lower_bound(self, x: dict[str, np.ndarray]) -> float:
        """``L(X̂) = f(X̂) + Σ_s min_{S ∈ C_s} ⟨G_s, S − X̂_s⟩ ≤ min_C f ≤ min_T J(T)`` for any ``X̂``,
        lowered by :data:`ROUNDOFF` times the magnitudes summed, so float64 round-off in ``f``, ``G``
        and the inner products cannot lift it above the true bound."""
        grad = self.gradient(x)
        value = self.value(x)
        mins = {s: self.linear_min(s, g) for s, g in grad.items()}
        inner = {s: float(np.sum(g * x[s])) for s, g in grad.items()}
        magnitude = abs(value) + sum(abs(mins[s]) + abs(inner[s]) for s in grad)
        return value + sum(mins[s] - inner[s] for s in grad) - ROUNDOFF * magnitude


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def build_misfit(problem) -> Misfit:
    """The misfit of a :class:`~solvers.Problem` whose searched spaces are square ``Permutation``,
    ``Orthogonal`` or ``HeadStructured(k, Permutation | Orthogonal)`` spaces, each tensor (or each
    slice of packed Q/K/V) touching searched spaces on at most two axes, one space per axis. For
    these classes ``T⁻ᵀ = T``, so a role ``in`` acts on an axis exactly as ``out`` does and a term
    ``‖A − T₁ B T₂ᵀ‖ = ‖A T₂ − T₁ B‖`` is convex whatever the roles. Anything else raises a typed
    error naming the space or parameter."""
    spaces = {}
    for s, cls in problem.classes.items():
        if isinstance(cls, Trivial):
            continue
        if relaxed_kind(cls) is None:
            why = (": an invertible per-head map has no bounded convex superset on which the relaxed misfit "
                   "equals J (J involves A^-T)" if isinstance(cls, HeadStructured) else "")
            raise UnsupportedClassError(f"solver 'relaxation' cannot search space {s!r} in {cls!r}{why}; relaxable "
                                        f"classes: Permutation, Orthogonal, HeadStructured(k, Permutation()), "
                                        f"HeadStructured(k, Orthogonal())", solver="relaxation", space=s, cls=cls)
        m, n = problem.sizes[s]
        if m != n:
            raise SolverInputError(f"space {s!r} changes width ({n} → {m}); the relaxation needs square maps",
                                   space=s)
        spaces[s] = (n, relaxed_kind(cls))
    terms, constant, untouched = [], 0.0, []
    for name, a_t in problem.params_a.items():
        if not a_t.is_floating_point():
            continue
        a, b = _np(a_t), _np(problem.params_b[name])
        edges = [e for e in problem.graph.edges_of(name) if e.space in spaces]
        if not edges:
            constant += float(np.sum((a - b) ** 2))
            untouched.append(name)
            continue
        sliced = {e.axis % a.ndim for e in edges if e.slice is not None}
        if len(sliced) > 1:
            raise SolverInputError(f"parameter {name!r} is sliced on axes {sorted(sliced)}; the relaxation handles "
                                   f"slices on one axis", parameter=name)
        if not sliced:
            constant += _add_terms(terms, name, a, b, edges, spaces)
            continue
        ax = sliced.pop()
        cuts = sorted({0, a.shape[ax]} | {c for e in edges if e.slice is not None for c in e.slice})
        for lo, hi in zip(cuts[:-1], cuts[1:]):  # each piece of packed Q/K/V is a tensor of its own
            piece = [e for e in edges if e.axis % a.ndim != ax or (e.slice is not None and e.slice[0] <= lo
                                                                    and hi <= e.slice[1])]
            constant += _add_terms(terms, f"{name}[{lo}:{hi}]", np.take(a, range(lo, hi), axis=ax),
                                   np.take(b, range(lo, hi), axis=ax), piece, spaces)
    return Misfit(terms, constant, spaces, untouched, searched={s: problem.classes[s] for s in spaces},
                  graph=problem.graph)


def _add_terms(terms: list, name: str, a: np.ndarray, b: np.ndarray, edges: list, spaces: dict) -> float:
    """Append the term of one tensor (``edges``: the searched spaces on its axes, whole axes); return
    the constant it adds (``‖A − B‖²`` when no searched space touches it)."""
    if not edges:
        return float(np.sum((a - b) ** 2))
    if any(e.repeat is not None for e in edges):  # a repeat's copies: one more free axis
        (a, _), (b, edges) = expand_repeats(a, edges), expand_repeats(b, edges)
    for e in edges:
        if e.role is Role.VAR and not isinstance(spaces[e.space][1], Permutation):
            raise SolverInputError(f"parameter {name!r}: a variance of space {e.space!r} under "
                                   f"{spaces[e.space][1]!r}", parameter=name)
    by_axis: dict[int, list] = {}
    for e in edges:
        by_axis.setdefault(e.axis % a.ndim, []).append(e)
    if len(by_axis) > 2 or any(len(v) > 1 for v in by_axis.values()) or len({e.space for e in edges}) < len(by_axis):
        raise SolverInputError(f"parameter {name!r} touches searched spaces "
                               f"{sorted((e.space, e.axis, str(e.role)) for e in edges)}; the relaxation "
                               f"needs at most two axes, each in one other space", parameter=name)
    axes = sorted(by_axis, key=lambda k: (by_axis[k][0].role is Role.IN, k))  # the ``out`` axis first
    if len(axes) == 2:
        ao, ai = axes
        m, n = a.shape[ao], a.shape[ai]

        def mat(t):
            return np.moveaxis(t, (ao, ai), (0, 1)).reshape(m, n, -1).transpose(2, 0, 1).copy()
        terms.append(Term(name, "both", by_axis[ao][0].space, by_axis[ai][0].space, mat(a), mat(b)))
    elif by_axis[axes[0]][0].role is not Role.IN:
        ao = axes[0]
        terms.append(Term(name, "out", by_axis[ao][0].space, None, np.moveaxis(a, ao, 0).reshape(a.shape[ao], -1),
                          np.moveaxis(b, ao, 0).reshape(b.shape[ao], -1)))
    else:
        ai = axes[0]
        terms.append(Term(name, "in", None, by_axis[ai][0].space, np.moveaxis(a, ai, -1).reshape(-1, a.shape[ai]),
                          np.moveaxis(b, ai, -1).reshape(-1, b.shape[ai])))
    return 0.0
