"""Semi-permutation fractions as one convex QP once the assignment is fixed (cvxpy).

With every wide unit ``j`` of a width-changing space assigned to a narrow unit ``σ(j)`` and its
support fixed (consuming tensors copy ``σ(j)``'s weights at units that are not silent; silent units
keep fraction 0), the producing rows are ``f_j C_j`` where ``C`` is B
aligned with all fractions set to 1, so

    J(f) = Σ_p Σ_j ‖A_p[j] − f_j C_p[j]‖² + const,   f ≥ 0,   Σ_{j: σ(j)=i} f_j = 1 for every i,

a convex QP in the fractions of all semi-permutation spaces jointly; its optimum is the best
``J`` for that assignment (a unit that copies keeps ``f_j ≥ FRACTION_FLOOR = 1e-6``: a
semi-permutation copies exactly where its fraction is positive). Units whose fraction is 0 are silent (``f(0) = 0`` for the linearly
decomposable activations where semi-permutations are exact), so the result is exact too.

:func:`fraction_bound` certifies fractions for a fixed assignment (the convexity certificate of
this QP); it is no lower bound over other assignments, so the solver reports ``lower_bound=None``.
"""
from __future__ import annotations

import inspect

import cvxpy as cp
import numpy as np
import scipy.sparse as sp
import torch

from symmetries.action import apply
from symmetries.blocks import expand_repeats
from symmetries.classes import SemiPermutation
from symmetries.elements import GatherElement
from symmetries.roles import Role
from symmetries.transforms import TransformSet

from solvers.errors import SolverInputError
from solvers.registry import Solver, get, register
from solvers.solution import Solution

__all__ = ["fit_fractions", "fraction_bound", "SemiPermutationQP"]

#: The smallest fraction of a unit that copies (in_scale ≠ 0): a semi-permutation has ``B = 1[P̃ > 0]``,
#: so such a unit needs a positive fraction, well above the membership tolerance (√eps) and Clarabel's
#: ~1e-8 accuracy. The QP's feasible set is restricted to it (``J`` changes by ~1e-6 at most per unit).
FRACTION_FLOOR = 1e-6


def _fraction_quadratic(problem, transforms):
    """``J(f) = const + Σ_s Σ_j (α_s,j f_j² − 2 β_s,j f_j)`` for the assignments in ``transforms``:
    ``(semi, base, alpha, beta, const)`` with ``base`` the split elements at fractions 1."""
    semi = [s for s, c in problem.classes.items() if isinstance(c, SemiPermutation)]
    base = dict(transforms)
    for s in semi:
        el = transforms.get(s)
        if not isinstance(el, GatherElement):
            raise SolverInputError(f"space {s!r}: fitting fractions needs a split (GatherElement), got {el!r}", space=s)
        copies = torch.ones(el.shape[0], dtype=torch.float64) if el.in_scale is None else el.in_scale.double()
        base[s] = GatherElement(el.index, el.n, torch.ones(el.shape[0], dtype=torch.float64), copies)
    aligned = apply(problem.graph_b, problem.params_b, TransformSet(base), check=False)
    alpha = {s: np.zeros(base[s].shape[0]) for s in semi}
    beta = {s: np.zeros(base[s].shape[0]) for s in semi}
    const = 0.0
    for name, a_t in problem.params_a.items():
        if not a_t.is_floating_point():
            continue
        a, c = a_t.detach().double().cpu().numpy(), aligned[name].detach().double().cpu().numpy()
        edges = [e for e in problem.graph.edges_of(name) if e.space in alpha and e.role in (Role.OUT, Role.VAR)]
        if not edges:
            const += float(np.sum((a - c) ** 2))
            continue
        if len(edges) > 1 or edges[0].role is Role.VAR or edges[0].slice is not None:
            raise SolverInputError(f"parameter {name!r}: fractions are fitted for one produced space per tensor on a "
                                   f"whole axis (no variances)", parameter=name)
        (a, _), (c, edges) = expand_repeats(a, edges), expand_repeats(c, edges)  # a repeat's copies: free
        ax = edges[0].axis % a.ndim
        am = np.moveaxis(a, ax, 0).reshape(a.shape[ax], -1)
        cm = np.moveaxis(c, ax, 0).reshape(c.shape[ax], -1)
        const += float(np.sum(am ** 2))
        alpha[edges[0].space] += np.sum(cm ** 2, 1)
        beta[edges[0].space] += np.sum(am * cm, 1)
    return semi, base, alpha, beta, const


def fit_fractions(problem, transforms, *, solver: str = "CLARABEL") -> tuple[TransformSet, float]:
    """Optimal fractions at every ``SemiPermutation`` space of ``problem`` for the assignments in
    ``transforms`` (split elements, whose support is kept). Returns the new transform set and the
    QP's optimal value of ``J`` (≤ ``J(transforms)``: their fractions are feasible)."""
    if not any(isinstance(c, SemiPermutation) for c in problem.classes.values()):
        return TransformSet(dict(transforms)), problem.objective(TransformSet(dict(transforms)))
    semi, base, alpha, beta, const = _fraction_quadratic(problem, transforms)
    f = {s: cp.Variable(base[s].shape[0], nonneg=True, name=s) for s in semi}
    obj, cons = 0, []
    for s in semi:
        idx = base[s].index.numpy()
        m, n = base[s].shape
        if np.bincount(idx, minlength=n).min() == 0:
            raise SolverInputError(f"space {s!r}: the assignment leaves a narrow unit without a wide unit", space=s)
        cons.append(sp.csr_matrix((np.ones(m), (idx, np.arange(m))), shape=(n, m)) @ f[s] == 1)
        silent = np.flatnonzero(base[s].in_scale.numpy() == 0)
        if silent.size:  # a unit that copies nothing stays silent (fraction 0): J stays quadratic in f
            cons.append(f[s][silent] == 0)
        live = np.flatnonzero(base[s].in_scale.numpy() != 0)
        if live.size:  # a unit that copies keeps a positive fraction: B = 1[P̃ > 0] (a semi-permutation)
            cons.append(f[s][live] >= FRACTION_FLOOR)
        obj += cp.sum(cp.multiply(alpha[s], cp.square(f[s]))) - 2 * beta[s] @ f[s]
    out = dict(transforms)
    prob = cp.Problem(cp.Minimize(obj + const), cons)
    prob.solve(solver=solver)
    if prob.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise SolverInputError(f"cvxpy solver {solver!r} returned status {prob.status!r} on the fraction QP")
    for s in semi:
        frac = np.clip(np.asarray(f[s].value, dtype=np.float64), 0.0, None)
        frac[base[s].in_scale.numpy() != 0] = np.maximum(frac[base[s].in_scale.numpy() != 0], FRACTION_FLOOR)
        idx = base[s].index.numpy()
        frac /= np.bincount(idx, weights=frac, minlength=base[s].shape[1])[idx]  # exact column sums
        out[s] = GatherElement(base[s].index, base[s].n, torch.from_numpy(frac), base[s].in_scale)
    return TransformSet(out), float(prob.value)


def fraction_bound(problem, transforms) -> float:
    """A certified lower bound on ``J`` over every choice of fractions *for the assignments and
    support of* ``transforms`` (the QP's feasible set): the convexity certificate
    ``J(f̂) + Σ_groups (min_{j ∈ group} ∂_j J − Σ_{j ∈ group} f̂_j ∂_j J)`` at ``transforms``' own
    fractions ``f̂`` (each group — the wide units of one narrow unit — is a simplex, so the linear
    minimum picks its smallest partial derivative; silent units stay at 0). Equal to the QP's
    optimum at its solution. It bounds nothing about other assignments."""
    semi, base, alpha, beta, const = _fraction_quadratic(problem, transforms)
    value, correction = const, 0.0
    for s in semi:
        el = transforms[s]
        frac = np.ones(el.shape[0]) if el.out_scale is None else el.out_scale.double().cpu().numpy()
        value += float(np.sum(alpha[s] * frac ** 2 - 2 * beta[s] * frac))
        grad = 2 * alpha[s] * frac - 2 * beta[s]
        idx = base[s].index.numpy()
        open_ = base[s].in_scale.numpy() != 0
        for i in range(base[s].shape[1]):
            members = np.flatnonzero((idx == i) & open_)
            if members.size:
                correction += float(grad[members].min())
        correction -= float(grad @ frac)
    return value + correction


class SemiPermutationQP(Solver):
    """Solver ``"semi_permutation_qp"``: assignments from the ``semi_permutation`` solver (or
    ``init``), then all fractions jointly by the convex QP; keeps whichever has the lower ``J``.

    ``lower_bound`` is ``None``: the QP certifies the fractions *for the chosen assignment*
    (``extra["fraction_bound"]``, a certified lower bound on ``J`` over all fractions with that
    assignment and support, and ``extra["fraction_gap"] = J − fraction_bound``), not the best
    ``J`` over all semi-permutations — other assignments may do better, and no convex relaxation
    of the assignment itself is formulated here."""

    name = "semi_permutation_qp"
    description = "semi-permutation assignment, then all split fractions jointly as one convex QP (cvxpy)"

    @property
    def classes(self):  # the classes of the solver it takes assignments from
        return get("semi_permutation").classes

    @classes.setter
    def classes(self, value):  # the registry may assign; the delegation stays
        pass

    def supports(self, cls) -> bool:
        return get("semi_permutation").supports(cls)

    def option_parameters(self):  # its own, then those it passes on to semi_permutation
        own = [p for p in inspect.signature(self.solve).parameters.values() if p.kind is p.KEYWORD_ONLY]
        return own + (get("semi_permutation").option_parameters() or [])

    def solve(self, problem, *, cvxpy_solver: str = "CLARABEL", **options) -> Solution:
        if problem.init is not None:
            start, iterations = problem.init, 0
        else:
            first = get("semi_permutation").solve(problem, **options)
            start, iterations = first.transforms, first.iterations
        fitted, _ = fit_fractions(problem, start, solver=cvxpy_solver)
        before, j_start, j_fit = problem.objective(None), problem.objective(start), problem.objective(fitted)
        best, value = (fitted, j_fit) if j_fit <= j_start else (start, j_start)
        semi = any(isinstance(c, SemiPermutation) for c in problem.classes.values())
        bound = fraction_bound(problem, best) if semi else None
        return Solution(best, objective_before=before, objective_after=value, iterations=iterations,
                        history=[h for h in (before, j_start, j_fit) if h is not None], solver=self.name,
                        extra=dict(assignment_objective=j_start, qp_objective=j_fit, fraction_bound=bound,
                                   fraction_gap=None if bound is None else value - bound), graph=problem.graph_b)


register("semi_permutation_qp", SemiPermutationQP)
