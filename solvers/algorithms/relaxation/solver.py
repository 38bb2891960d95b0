"""Convex relaxations of weight matching, with certified lower bounds.

    min_{X_s ∈ C_s}  f(X) = Σ_p ‖A_p X_in(p) − X_out(p) B_p‖²_F

jointly over every searched space, with ``C_s`` the Birkhoff polytope (``X ≥ 0``, ``X1 = 1``,
``Xᵀ1 = 1``) for ``Permutation`` spaces and the spectral-norm ball (``σ_max(X) ≤ 1``) for
``Orthogonal`` ones. Since ``f = J`` on the classes (:mod:`solvers.algorithms.relaxation.misfit`), the
relaxed optimum is a lower bound on ``min_T J(T)``, the best weight-matching distance
``Σ_p ‖θ_A[p] − (T·θ_B)[p]‖²`` over the searched classes; the bound reported is the
convexity certificate ``L(X̂)``, valid for whatever ``X̂`` the convex solver returns (so an
inexact answer is corrected, not trusted). The relaxed matrices are rounded with each
class's oracle (``argmax_{T} ⟨T, X̂⟩``) and polished by weight matching; the gap is
``J(rounded and polished) − bound``.

Two routes to ``X̂``:

- ``"apg"`` (default, :mod:`solvers.algorithms.relaxation.apg`): accelerated projected gradient (FISTA with
  adaptive restart) on ``f`` itself, exploiting its structure: the gradient is a few ``n × n``
  matrix products (:class:`QuadraticMisfit`), the projection onto the Birkhoff polytope is exact (semismooth
  Newton on its ``2n`` dual variables, warm-started), onto the spectral-norm ball a clipped SVD.
  It stops when the certificate is within ``tol`` of ``f(X̂)``, which brackets the relaxed
  optimum: ``L(X̂) ≤ min_C f ≤ f(X̂)``. Per iteration ``O(n³)``; no ``n² × n²`` system is formed.
- ``"cvxpy"``: the same problem modelled in cvxpy and solved by ``cvxpy_solver`` (Clarabel,
  interior point; or SCS). Each two-sided residual is an auxiliary variable
  ``R = A X_in − X_out B`` tied by a linear equality, so the objective is ``Σ ‖R‖²``, and a
  one-sided residual ``A − X B`` with a wide ``B`` (an input layer) is compressed exactly to
  ``‖X F‖² − 2⟨A Bᵀ, X⟩ + ‖A‖²`` with ``F Fᵀ = B Bᵀ`` (``F``: at most ``n`` columns). Every
  interior-point iteration factors a KKT system whose dense front grows like ``n²``, so the cost
  grows like ``n⁶``.
"""
from __future__ import annotations

import dataclasses
import time

import cvxpy as cp
import numpy as np
import torch

from symmetries.classes import HeadStructured, Orthogonal, Permutation
from symmetries.transforms import TransformSet

from solvers.errors import SolverInputError, UnknownSolverError
from solvers.registry import Solver, check_options, get, register, registered
from solvers.algorithms.relaxation.apg import (MIN_ITERATIONS, QuadraticMisfit, estimate_apg, project_birkhoff,
                                               project_spectral_ball, relax_apg)
from solvers.algorithms.relaxation.misfit import Misfit, RelaxedOptimum, build_misfit
from solvers.solution import Solution

__all__ = ["RelaxedOptimum", "QuadraticMisfit", "formulate", "relax", "relax_apg", "project_birkhoff",
           "project_spectral_ball", "round_relaxed", "sample_rounding", "RelaxationSolver"]


def _factor(b: np.ndarray, rows: bool) -> np.ndarray:
    """``F`` with ``F Fᵀ = B Bᵀ`` (``rows``) or ``Fᵀ F = Bᵀ B``, zero singular values dropped."""
    u, s, vh = np.linalg.svd(b, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-13
    return (u[:, keep] * s[keep]) if rows else (s[keep, None] * vh[keep])


def formulate(misfit: Misfit, formulation: str = "aux") -> tuple[cp.Problem, dict[str, cp.Variable]]:
    """The cvxpy problem ``min_{X ∈ C} f(X)``. ``formulation="aux"`` (default): auxiliary residual
    variables and compressed one-sided terms; ``"direct"``: ``Σ sum_squares(A X − X B)`` as
    written (for comparison; same optimum)."""
    if formulation not in ("aux", "direct"):
        raise SolverInputError(f"formulation must be 'aux' or 'direct', got {formulation!r}")
    x, cons = {}, []
    for s, (n, cls) in misfit.spaces.items():
        if isinstance(cls, Permutation):
            x[s] = cp.Variable((n, n), nonneg=True, name=s)
            cons += [cp.sum(x[s], axis=1) == 1, cp.sum(x[s], axis=0) == 1]
        else:
            x[s] = cp.Variable((n, n), name=s)
            cons.append(cp.sigma_max(x[s]) <= 1)
    obj = misfit.constant
    for t in misfit.terms:
        if formulation == "direct":
            if t.kind == "both":
                obj += sum(cp.sum_squares(ak @ x[t.inn] - x[t.out] @ bk) for ak, bk in zip(t.a, t.b))
            elif t.kind == "out":
                obj += cp.sum_squares(t.a - x[t.out] @ t.b)
            else:
                obj += cp.sum_squares(t.a @ x[t.inn] - t.b)
            continue
        if t.kind == "both":
            for ak, bk in zip(t.a, t.b):
                r = cp.Variable(ak.shape)
                cons.append(r == ak @ x[t.inn] - x[t.out] @ bk)
                obj += cp.sum_squares(r)
        elif t.kind == "out":  # ‖A − X B‖² = ‖A‖² − 2⟨A Bᵀ, X⟩ + ‖X F‖²
            f = _factor(t.b, rows=True)
            obj += float(np.sum(t.a ** 2)) - 2 * cp.sum(cp.multiply(t.a @ t.b.T, x[t.out]))
            if f.size:
                y = cp.Variable(f.shape)
                cons.append(y == x[t.out] @ f)
                obj += cp.sum_squares(y)
        else:  # ‖A X − B‖² = ‖G X‖² − 2⟨Aᵀ B, X⟩ + ‖B‖²
            g = _factor(t.a, rows=False)
            obj += float(np.sum(t.b ** 2)) - 2 * cp.sum(cp.multiply(t.a.T @ t.b, x[t.inn]))
            if g.size:
                y = cp.Variable(g.shape)
                cons.append(y == g @ x[t.inn])
                obj += cp.sum_squares(y)
    return cp.Problem(cp.Minimize(obj), cons), x


def relax(misfit: Misfit, *, solver: str = "APG", formulation: str = "aux", **solver_options) -> RelaxedOptimum:
    """Solve the relaxation: ``solver="APG"`` (default; :func:`relax_apg`, ``solver_options`` its
    keywords) or a cvxpy solver name (``"CLARABEL"``: interior point, optimal to ~1e-8; ``"SCS"``
    works too; ``formulation`` and ``solver_options`` go to cvxpy). The bound is the certificate
    ``L(X̂)`` either way."""
    if solver.upper() == "APG":
        return relax_apg(misfit, **solver_options)
    start = time.perf_counter()
    prob, x = formulate(misfit, formulation)
    if not x:
        return RelaxedOptimum({}, misfit.constant, misfit.constant, "optimal", 0.0, 0.0, solver, 0, 0)
    try:
        prob.solve(solver=solver, **solver_options)
    except cp.error.SolverError as exc:
        raise SolverInputError(f"cvxpy solver {solver!r} failed on the relaxation: {exc}") from exc
    total = time.perf_counter() - start
    if prob.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or any(v.value is None for v in x.values()):
        raise SolverInputError(f"cvxpy solver {solver!r} returned status {prob.status!r} on the relaxation")
    xs = {s: np.asarray(v.value, dtype=np.float64) for s, v in x.items()}
    solve_time = float(prob.solver_stats.solve_time or 0.0) if prob.solver_stats else 0.0
    return RelaxedOptimum(xs, float(prob.value), misfit.lower_bound(xs), prob.status, total - solve_time,
                          solve_time, solver, sum(v.size for v in prob.variables()),
                          sum(c.size for c in prob.constraints))


def round_relaxed(misfit: Misfit, x: dict[str, np.ndarray], backend: str = "auto") -> TransformSet:
    """Each relaxed ``X̂_s`` rounded by its class's oracle ``argmax_{T ∈ class} ⟨T, X̂_s⟩`` — the
    spaces of a head group jointly (one head permutation, the inner oracle per head)."""
    from solvers.algorithms.learned import project_latents

    latents = {s: torch.from_numpy(np.ascontiguousarray(x[s])) for s in misfit.spaces}
    if misfit.searched and misfit.graph is not None:
        return project_latents(misfit.graph, latents, misfit.searched, backend)
    return TransformSet({s: cls.project(latents[s], backend=backend) for s, (_, cls) in misfit.spaces.items()})


def sample_rounding(misfit: Misfit, x: dict[str, np.ndarray], rng: np.random.Generator,
                    backend: str = "auto") -> TransformSet:
    """A randomised rounding of ``X̂`` (perturb and MAP): ``argmax_P ⟨P, log X̂ + Gumbel noise⟩`` at
    permutation spaces (a permutation drawn near the doubly stochastic ``X̂``, inside its support),
    the polar factor of ``X̂ + N(0, σ²)`` (``σ`` the RMS of ``X̂``'s entries) at orthogonal ones."""
    tilted = {}
    for s, (n, cls) in misfit.spaces.items():
        if isinstance(cls, Permutation):
            tilted[s] = np.log(np.maximum(x[s], 0.0) + 1e-9) + rng.gumbel(size=x[s].shape)
        else:
            sigma = float(np.sqrt(np.mean(x[s] ** 2))) or 1.0 / np.sqrt(n)
            tilted[s] = x[s] + sigma * rng.standard_normal(x[s].shape)
    return round_relaxed(misfit, tilted, backend)


def _polish(problem, transforms: TransformSet, options: dict):
    try:
        wm = get("weight_matching")
    except UnknownSolverError:
        return None, "weight matching is not registered: no polish"
    sol = wm.solve(dataclasses.replace(problem, init=transforms), **options)
    return sol, ""


#: Clarabel's measured time at width 64 (docs/relaxations.md) and its growth exponent (≈ n⁵ to n⁶).
CLARABEL_SECONDS_AT_64, CLARABEL_EXPONENT = 67.0, 5.3


class RelaxationSolver(Solver):
    """Solver ``"relaxation"``: Birkhoff / spectral-norm relaxation with a certified lower bound,
    oracle rounding and weight-matching polish.

    Options: ``engine`` (``"auto"``: ``"apg"``, or ``"cvxpy"`` when ``cvxpy_solver`` is given),
    ``cvxpy_solver`` (``"CLARABEL"`` when ``engine="cvxpy"``), ``formulation`` (cvxpy: ``"aux"``),
    ``solver_options`` (keywords of :func:`relax_apg`, or cvxpy's), ``polish`` (``True``),
    ``polish_options`` (passed to weight matching), ``backend`` (assignment backend),
    ``rounding_samples`` (``8``), ``time_limit`` (seconds for the whole solve, set-up included:
    the relaxation stops there with a valid, looser bound and the remaining rounding candidates are
    skipped; ``status="time_limit"``), ``budget`` (``300`` s: without a ``time_limit``, a problem
    that cannot run even :data:`MIN_ITERATIONS` iterations in it — :func:`estimate_apg`, timed on the
    problem — is refused up front with ``SolverInputError`` giving the estimate and the width that
    would fit; any other problem runs with the budget as its time limit; ``None`` runs anything
    without a limit). Candidates, each polished by weight matching, the lowest ``J`` kept: the oracle
    rounding of ``X̂``, weight matching's own start (``init`` or the identity), and
    ``rounding_samples`` randomised roundings (:func:`sample_rounding`, seeded by ``seed``);
    ``extra["candidates"]`` has their ``J``, ``extra["chosen"]`` the winner. ``lower_bound``
    bounds ``min_T J(T)`` over the searched classes; ``gap = objective_after − lower_bound``;
    ``status``: ``"optimal"`` (proven global optimum up to ``gap``) when
    ``gap ≤ tol · max(J(identity), objective_after)``, ``tol = 1e-6``; else ``"time_limit"`` or
    ``"max_iter"`` when the relaxation stopped on that limit, else ``"converged"``. ``extra["relaxed_value"]``
    is ``f`` at the returned relaxed point (APG: an upper bound on the relaxation's optimum, so
    ``relaxed_value − lower_bound`` bounds how far the bound is from the best this relaxation gives).
    """

    name = "relaxation"
    description = ("convex relaxation (Birkhoff / spectral-norm ball): certified lower bound, rounded and polished; "
                   "heads: HeadStructured(k, Permutation | Orthogonal), relaxed over all units (Invertible has no "
                   "convex relaxation with f = J); refuses up front a problem estimated over budget (300 s)")
    classes = (Permutation, Orthogonal, HeadStructured)

    head_inner = (Permutation, Orthogonal)
    head_refusal = ("an invertible per-head map has no bounded convex superset on which the relaxed misfit equals J "
                    "(J involves A^-T), so no certified bound")

    def solve(self, problem, *, engine: str = "auto", cvxpy_solver: str | None = None, formulation: str = "aux",
              polish: bool = True, polish_options: dict | None = None, backend: str = "auto",
              solver_options: dict | None = None, tol: float = 1e-6, rounding_samples: int = 8,
              time_limit: float | None = None, budget: float | None = 300.0) -> Solution:
        start = time.perf_counter()
        deadline = None if time_limit is None else start + float(time_limit)
        if polish and polish_options and "weight_matching" in registered():
            check_options(get("weight_matching"), polish_options)  # a misspelt polish option: refused now
        if engine not in ("auto", "apg", "cvxpy"):
            raise SolverInputError(f"engine must be 'auto', 'apg' or 'cvxpy', got {engine!r}")
        if engine == "auto":
            engine = "apg" if cvxpy_solver is None else "cvxpy"
        if engine == "apg" and cvxpy_solver is not None:
            raise SolverInputError("cvxpy_solver is an option of engine='cvxpy'")
        options = dict(solver_options or {})
        misfit = build_misfit(problem)
        solver = "APG" if engine == "apg" else (cvxpy_solver or "CLARABEL")
        estimate = None
        if engine == "apg":
            options["quad"] = QuadraticMisfit(misfit)
            if deadline is not None:
                options["deadline"] = deadline
            elif budget is not None and options.get("time_limit") is None:
                # refuse only what cannot even start within the budget (the floor of the estimate: the
                # iteration count is an order of magnitude, often 100x pessimistic); otherwise the budget
                # is the time limit: a run that reaches it stops with a valid, looser bound, status time_limit
                estimate = estimate_apg(misfit, options["quad"], options.get("max_iter", 20000))
                self._refuse_over_budget(misfit, dict(estimate, seconds=estimate["seconds_floor"],
                                                      iterations=MIN_ITERATIONS), budget)
                deadline = start + float(budget)
                options["deadline"] = deadline
        elif budget is not None and time_limit is None and misfit.spaces:
            n = max(n for n, _ in misfit.spaces.values())
            seconds = CLARABEL_SECONDS_AT_64 * (n / 64) ** CLARABEL_EXPONENT
            self._refuse_over_budget(misfit, dict(seconds=seconds, iterations=None, seconds_per_iteration=None),
                                     budget, exponent=CLARABEL_EXPONENT)
        opt = relax(misfit, solver=solver, formulation=formulation, **options)
        before = problem.objective(None)
        rounded = round_relaxed(misfit, opt.x, backend)
        rounded_obj = problem.objective(rounded)
        best, best_obj, message, iterations, chosen = rounded, rounded_obj, "", 0, "rounded"
        history = [before, rounded_obj]
        candidates = {"rounded": rounded}
        if misfit.spaces:
            candidates["weight_matching"] = problem.init  # its own start: never worse than weight matching
            rng = np.random.default_rng(problem.seed)
            for k in range(int(rounding_samples)):
                candidates[f"sample {k}"] = sample_rounding(misfit, opt.x, rng, backend)
        scores, skipped = {}, []
        for name, start_t in candidates.items():
            late = deadline is not None and time.perf_counter() > deadline
            kept = name == "weight_matching"  # always run: the result is never worse than weight matching's
            if late and scores and not kept:
                skipped.append(name)
                continue
            if polish and misfit.spaces and (not late or kept):
                sol, message = _polish(problem, start_t, dict(polish_options or {}))
                if sol is None:
                    break
                iterations += sol.iterations
                t, value = sol.transforms, problem.objective(sol.transforms)
            elif start_t is not None:
                t, value = start_t, problem.objective(start_t)
            else:
                continue
            scores[name] = value
            if value < best_obj:
                best, best_obj, chosen = t, value, name
        history.append(best_obj)
        bound = opt.bound
        gap = best_obj - bound
        if gap <= tol * max(abs(before), abs(best_obj)):
            status = "optimal"
        elif opt.status == "time_limit" or skipped:
            status = "time_limit"
        elif opt.status == "max_iter":
            status = "max_iter"
        else:
            status = "converged"
        notes = [message] if message else []
        if opt.status in ("time_limit", "max_iter"):
            notes.append(f"the relaxation stopped on its {opt.status.replace('_', ' ')} after {opt.iterations} "
                         f"iterations: the bound is valid but looser than the relaxation's optimum "
                         f"(relaxed_value - lower_bound = {opt.value - bound:.3g})")
        if skipped:
            notes.append(f"time limit: rounding candidates {', '.join(skipped)} skipped"
                         + ("" if "rounded" in scores and iterations else ", the oracle rounding not polished"))
        extra = dict(relaxed=opt.x, relaxed_value=opt.value, certificate=bound, rounded_objective=rounded_obj,
                     candidates=scores, chosen=chosen, skipped_candidates=skipped, estimate=estimate,
                     relaxation_status=opt.status, relaxation_solver=opt.solver, relaxation_iterations=opt.iterations,
                     cvxpy_status=opt.status if engine == "cvxpy" else None,
                     cvxpy_solver=opt.solver if engine == "cvxpy" else None, setup_time=opt.setup_time,
                     solve_time=opt.solve_time, variables=opt.variables, constraints=opt.constraints,
                     relaxed_sets={s: type(c).__name__ for s, (_, c) in misfit.spaces.items()})
        return Solution(best, objective_before=before, objective_after=best_obj, lower_bound=bound,
                        iterations=iterations, wall_time=time.perf_counter() - start, status=status,
                        message="; ".join(notes), history=history, solver=self.name, extra=extra,
                        graph=problem.graph_b)

    @staticmethod
    def _refuse_over_budget(misfit: Misfit, estimate: dict, budget: float, exponent: float = 4.0) -> None:
        """Refuse before any iteration a problem whose estimated time exceeds ``budget``, giving the
        estimate and the largest width that would fit (cost ∝ nᵉˣᵖᵒⁿᵉⁿᵗ: ``n⁴`` for APG)."""
        seconds = estimate["seconds"]
        if seconds <= budget:
            return
        n = max(n for n, _ in misfit.spaces.values())
        fit = int(n * (budget / seconds) ** (1.0 / exponent))
        widths = ", ".join(f"{s} {k} ({misfit.searched.get(s, c)!r})" for s, (k, c) in misfit.spaces.items())
        how = (f"{estimate['iterations']} iterations x {estimate['seconds_per_iteration']:.3g} s measured on this "
               f"problem" if estimate.get("iterations") else "Clarabel's measured growth")
        raise SolverInputError(f"solver 'relaxation': this problem is estimated to take {seconds:.0f} s ({how}), over "
                               f"the budget of {budget:g} s; widths: {widths}. Problems whose widest searched space "
                               f"is about {fit} or less fit the budget. Pass time_limit=<seconds> for a valid, "
                               f"looser bound in that time, search fewer spaces (classes={{space: Trivial()}}), "
                               f"or budget=None to run it anyway")


register("relaxation", RelaxationSolver)
