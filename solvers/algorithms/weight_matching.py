"""Weight matching: coordinate descent over spaces on ``J(T) = Σ_p ‖θ_A[p] − (T·θ_B)[p]‖²``.

Each sweep visits the spaces (a head group counts as one) in a seeded random order; at each,
with every other transform fixed, the space's subproblem ``argmin_T Σ_e ‖A_e − T·B_e‖²`` is
solved by its class (:mod:`solvers.subproblems`) and kept only if it lowers ``J``, so ``J``
never increases. Where one tensor meets a unit on two axes (``W ← T W Tᵀ``: an RNN's hidden-to-hidden
matrix, a layer applied twice) the subproblem is solved with the unit's current transform on the
other axis (for permutations: the LAP on the gradient, a Frank–Wolfe step of the quadratic assignment
problem) and the step is kept only if the exact ``J`` of the tensors touching the unit decreases.
It stops after a sweep without an accepted improvement or at ``max_iter``.

``mode="rebasin"`` reproduces Git Re-Basin's published loop for permutations exactly: identity
start; each sweep a seeded random order (``numpy.random.default_rng(seed)``, one
``permutation`` per sweep); cost ``Σ_e W_A (W_B with all other transforms applied)ᵀ`` with
tensors reshaped to ``(n, −1)`` along the space's axis; every LAP solution is taken; stop after
a sweep in which no space improved ``⟨P, cost⟩`` by more than ``1e-12``; cap 100 sweeps.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from symmetries.classes import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling,
                                PositiveScaling, SignedPermutation, SignFlip, Trivial)
from symmetries.elements import DenseElement, Element, GatherElement, HeadElement
from symmetries.roles import Role
from symmetries.transforms import TransformSet

from solvers.errors import SolverInputError
from solvers import cross_cache, memory
from solvers.local import inner_product
from solvers.matcher import Matcher, search_units
from solvers.reuse import TensorObjective, VisitLog
from solvers.stability import StableAssignments
from solvers.scale_descent import polish_scales, staged_start
from solvers.registry import Solver, register
from solvers.solution import Solution
from solvers.threads import solve_threads, thread_budget
from solvers.subproblems import (dense_or, gain, has_subproblem, linear_classes, scale_grid_class, score_matrices,
                                 solve_block, solve_heads, solve_local, streamed_classes, subproblem,
                                 subproblem_classes)

__all__ = ["WeightMatching"]

#: Reuse between sweeps (:mod:`solvers.reuse`): ``J`` cached per tensor, visits that would repeat the
#: last one skipped. Private switch: tests compare against the plain loop with it off.
_REUSE = True
_NORM_KEEPING = subproblem.dispatch(Orthogonal)  # the built-in Procrustes / LAP solver: never reads current


def _coupled(problem, spaces: list[str]) -> tuple[str, ...]:
    """The tensors touching a unit if one of them meets the unit on two different axes (an RNN's
    ``W_hh``, a layer applied twice: ``W ← T W Tᵀ``), else ``()``. There the local problem is
    solved with the unit's own current transform on the other axis — a linearisation of a loss
    quadratic in ``T`` — so neither its loss nor :func:`~solvers.subproblems.gain` is the change of
    ``J``; the step is judged by the exact ``J`` over these tensors instead."""
    gb = problem.graph_b
    axes: dict[str, set[int]] = defaultdict(set)
    for space in spaces:
        for e in gb.edges_at(space):
            axes[e.parameter].add(e.axis % max(len(problem.shape(e.parameter)), 1))
    return tuple(axes) if any(len(a) > 1 for a in axes.values()) else ()


def _coupled_step(problem, spaces, classes, locals_, new, transforms, names, backend, threshold):
    """``(elements, exact decrease of J over names)`` for a coupled unit: the solved step if it lowers
    ``J`` by more than ``threshold``; else, for one space, shorter steps from the current element
    ``T₀`` — proximal for norm-keeping classes (``argmax ⟨T, M + λT₀⟩``, ``λ`` growing: a projected
    gradient step of ``J``, which lowers ``J`` once ``λ`` is large enough), along the segment
    ``T₀ + s(T − T₀)`` for ``Invertible`` and ``PositiveScaling``."""
    def value(els):
        return problem.objective(TransformSet({**transforms, **dict(zip(spaces, els))}), names)
    base = value([transforms[s] for s in spaces])
    g = base - value(new)
    if g > threshold or len(spaces) > 1 or isinstance(classes[0], HeadStructured):
        return new, g
    cls, loc, cur, cand = classes[0], locals_[0], transforms[spaces[0]], new[0]
    trials = []
    if linear_classes(cls):
        m, v = score_matrices(loc)
        if v is not None and isinstance(cls, Permutation):  # as solve_local: T∘T = T
            m, v = m + v, None
        t0 = cur.as_matrix().to(m)
        lam = float(torch.linalg.vector_norm(m)) / max(float(torch.linalg.vector_norm(t0)), 1e-300)
        trials = (solve_block(cls, m + lam * 4.0 ** k * t0, v, backend) for k in range(-1, 8))
    elif isinstance(cls, Invertible):
        t0, t1 = cur.as_matrix(), cand.as_matrix().to(cur.as_matrix())
        trials = (dense_or(t0 + 0.5 ** k * (t1 - t0), cur) for k in range(1, 9))
    elif isinstance(cls, PositiveScaling):
        c0, c1 = (torch.ones(loc.n, dtype=torch.float64) if e.out_scale is None else e.out_scale.double()
                  for e in (cur, cand))
        trials = (GatherElement.monomial(cur.index, c0 + 0.5 ** k * (c1 - c0)) for k in range(1, 9))
    for el in trials:  # lazily: stop at the first that lowers J
        if _finite(el):
            g = base - value([el])
            if g > threshold:
                return [el], g
    return new, -1.0


class WeightMatching(Solver):
    """Coordinate descent over spaces on ``Σ_p ‖θ_A − T·θ_B‖²``, each space solved by its class."""

    name = "weight_matching"
    streams = True  # accepts lazy problems (solvers.stream): norm-keeping classes from cross products alone
    description = ("coordinate descent on sum_p ||theta_A - T.theta_B||^2: LAP, signed LAP, Procrustes, "
                   "least squares, exact scalings, head assignment; mode='rebasin' = Git Re-Basin")

    @property
    def classes(self) -> tuple:
        """The class types with a registered subproblem (:func:`solvers.subproblem`) — read at call
        time, so a third-party class registered later is searched too."""
        return subproblem_classes()

    @classes.setter
    def classes(self, value) -> None:  # the registry may assign; the subproblem registry decides
        pass

    def supports(self, cls) -> bool:
        return isinstance(cls, Trivial) or has_subproblem(cls)

    def solve(self, problem, *, mode: str = "default", max_iter: int = 100, tol: float | None = None,
              backend: str = "auto", start: str | None = None, record: bool = True,
              _matchers: list | None = None) -> Solution:
        """``mode``: ``"default"`` or ``"rebasin"``; ``tol``: an update is kept if it lowers ``J`` by more
        than ``tol·J_start`` (default 1e-12 in float64, 1e-6 in float32; ``rebasin``: absolute 1e-12 on
        ``⟨P, cost⟩``); ``backend``: the LAP backend (:mod:`symmetries.assignment`); ``start``:
        ``"forward"`` (default: a first pass in graph order in which each space sees only the tensors
        whose other axes are settled; kept if it lowers ``J`` or widths change — with ``PermutationScaling``
        spaces, the whole permutation solve with ``Permutation`` there, on B balanced —
        :func:`~solvers.scale_descent.staged_start` — instead) or ``"identity"``
        (start the sweeps from ``init`` or the identity). ``history``: ``J`` at the start, after the
        first pass (if kept) and after every sweep (``record=False``: after the last sweep only — one
        evaluation of ``J`` per sweep saved, for a solve whose history nobody reads, like the staged start's).
        ``_matchers`` (internal: the staged start's): a list the solve appends its
        :class:`~solvers.matcher.Matcher` to, whose kept products the outer solve adopts."""
        if mode not in ("default", "rebasin"):
            raise ValueError(f"mode must be 'default' or 'rebasin', got {mode!r}")
        if int(max_iter) < 0:
            raise ValueError(f"max_iter must be ≥ 0, got {max_iter}")
        rebasin = mode == "rebasin"
        if rebasin:
            _check_rebasin(problem)
        matcher = Matcher(problem)
        units = search_units(problem)
        coupled = [_coupled(problem, spaces) for spaces in units]
        transforms: dict[str, Element] = {}
        for space in problem.spaces:
            m, n = problem.sizes[space]
            if problem.init is not None and space in problem.init:
                transforms[space] = problem.init[space]
            elif m == n:
                transforms[space] = problem.classes[space].identity(n)
        identities = {s: el for s, el in transforms.items() if problem.init is None or s not in problem.init}
        objective = TensorObjective(problem, identities) if _REUSE else (
            lambda t: problem.objective(TransformSet(t)))
        if not record and _REUSE:  # J is read twice or three times: visits do not hand it their tensors' terms
            objective.visit_terms = False
        log = VisitLog(problem, units)
        stable = StableAssignments(problem, matcher, units, log.reads, coupled) if _REUSE else None
        if stable is not None and not stable.active:  # no permutation unit reads a dense neighbour
            stable = None
        trim = memory.release_free_memory if 0 <= memory.TRIM_BYTES <= memory.problem_bytes(problem) else _nothing
        if start is None:
            start = "identity" if rebasin else "forward"
        if start not in ("identity", "forward"):
            raise ValueError(f"start must be 'identity' or 'forward', got {start!r}")
        if rebasin and start != "identity":
            raise SolverInputError("mode='rebasin' starts from the identity (Git Re-Basin); drop start=")
        missing = [s for s in problem.spaces if s not in transforms]
        if start == "identity" and missing:
            m, n = problem.sizes[missing[0]]
            raise SolverInputError(f"space {missing[0]!r} changes width ({n} → {m}) and has no identity map: "
                                   f"start='identity' needs init= there (or use start='forward')", space=missing[0])
        objective_before = objective(transforms) if len(transforms) == len(problem.spaces) else None
        if tol is None:
            tol = 1e-12 if (rebasin or problem.dtype == torch.float64) else 1e-6
        rng = np.random.default_rng(problem.seed)
        history = [] if objective_before is None else [objective_before]
        scaled = [u[0] for u, c in zip(units, coupled)
                  if not c and isinstance(problem.classes[u[0]], (PositiveScaling, PermutationScaling))]
        staged = start == "forward" and not rebasin and any(isinstance(problem.classes[s], PermutationScaling)
                                                             for s in scaled)
        polish = _MonomialDescent(problem, matcher, objective)
        seeded = None
        if staged:  # permutations first on balanced B (solvers.scale_descent), their scales next, then D P
            candidate, value, seeded = staged_start(self.solve, problem, transforms, scaled, matcher, mode=mode,
                                                    max_iter=max_iter, tol=tol, backend=backend, start=start)
        elif start == "forward":
            candidate = self._forward(problem, matcher, units, transforms, backend, log, coupled, objective, trim,
                                      stable)
            trim()
            value = objective(candidate)
        if start == "forward" and (objective_before is None or value < objective_before):
            transforms = candidate
            history.append(value)
            if seeded is not None:  # the candidate's views and tensor terms: the first polish starts from them
                polish.seed(transforms, *seeded)
        threshold = tol * max(history[0], 1e-300) if history else 0.0
        if scaled and not rebasin and history:
            polish(scaled, transforms, threshold)
        status, iterations, skipped, certified = "max_iter", 0, 0, 0
        for it in range(int(max_iter)):
            iterations = it + 1
            progress = False
            if it == cross_cache.WIDEN_AFTER:  # still moving: kept products pay on wider edges (solvers.cross_cache)
                matcher.widen_cache()
            for u in rng.permutation(len(units)):
                if _REUSE and log.repeats(u, transforms):  # same data, same current: the last visit again
                    skipped += 1
                    continue
                if stable is not None and stable.holds(u, transforms):  # the scores moved too little to matter
                    certified += 1
                    continue
                spaces = units[u]
                classes = [problem.classes[s] for s in spaces]
                before = [transforms[s] for s in spaces]
                trim()  # the last visit's blocks go back to the OS before this one's are built (solvers.memory)
                progress = self._visit(problem, matcher, spaces, classes, transforms, coupled[u], rebasin, tol,
                                       history, backend, objective, (stable, u)) or progress
                changed = any(transforms[s] is not el for s, el in zip(spaces, before))
                log.record(u, transforms, not changed or (not coupled[u] and _ignores_current(classes[0])))
            if progress and scaled and not rebasin:
                polish(scaled, transforms, threshold)
            trim()
            if record or not progress or iterations == int(max_iter):
                history.append(objective(transforms))
            if not progress:
                status = "converged"
                break
        if max_iter == 0:
            status = "converged"
        if _matchers is not None:
            _matchers.append(matcher)
        return Solution(TransformSet(transforms), objective_before, history[-1], iterations=iterations,
                        status=status, history=history,
                        message=f"{iterations} sweep(s), {len(units)} unit(s), mode={mode}, start={start}"
                                + (f", {skipped} visit(s) skipped (inputs unchanged)" if skipped else "")
                                + (f", {certified} visit(s) skipped (assignment certified by its margin)"
                                   if certified else ""))

    @staticmethod
    def _visit(problem, matcher, spaces, classes, transforms, coupled, rebasin, tol, history, backend,
               objective, certify=(None, None)) -> bool:
        """Solve one unit with every other transform fixed and keep the step if it lowers ``J`` (``rebasin``:
        always take it); returns whether it counts as progress. Index-form units hand ``objective`` the
        terms ``‖A_e − T·B_e‖²`` of their tensors from the rows just built (:func:`_note_terms`); ``certify``:
        ``(StableAssignments, unit)`` notes the visit's margin."""
        keep = [] if _takes_terms(objective) and not coupled and _index_form(classes[0]) else None
        locals_ = [matcher.local(s, transforms, stream=streamed_classes(c), norms=scale_grid_class(c), keep=keep)
                   for s, c in zip(spaces, classes)]
        progress = WeightMatching._step(problem, spaces, classes, locals_, transforms, coupled, rebasin, tol,
                                        history, backend)
        _note_margin(certify, spaces, locals_, transforms)
        del locals_  # the scores go before the terms are read
        _note_terms(objective, keep, transforms)
        return progress

    @staticmethod
    def _step(problem, spaces, classes, locals_, transforms, coupled, rebasin, tol, history, backend) -> bool:
        with thread_budget(solve_threads(locals_)):
            new = (solve_heads(classes, locals_, backend=backend)
                   if isinstance(classes[0], HeadStructured)
                   else [solve_local(classes[0], locals_[0], backend=backend, current=transforms[spaces[0]])])
        if rebasin:
            space, loc, el = spaces[0], locals_[0], new[0]
            score = loc.cross(Role.OUT, Role.IN)
            if loc.has(Role.VAR):
                score = score + loc.cross(Role.VAR)
            old_value, new_value = inner_product(transforms[space], score), inner_product(el, score)
            if not _same(el, transforms[space]):  # an equal permutation keeps its object (VisitLog)
                transforms[space] = el
            return new_value > old_value + tol
        if not all(_finite(el) for el in new):
            return False
        threshold = tol * max(history[0], 1e-300)  # relative to the start: round-off never counts
        if coupled:  # the local loss is not the one solved: judge by the exact change of J
            new, g = _coupled_step(problem, spaces, classes, locals_, new, transforms, coupled, backend, threshold)
        else:
            g = sum(gain(c, loc, transforms[s], el) for c, loc, s, el in zip(classes, locals_, spaces, new))
        if g > threshold:
            transforms.update(zip(spaces, new))
            return True
        return False

    @staticmethod
    def _forward(problem, matcher, units, transforms, backend, log, coupled, objective, trim=None,
                 stable=None) -> dict:
        """A first pass in graph order where each space sees only the tensors whose other axes are
        already settled (``init`` counts as settled); returns the complete candidate set. A unit that saw
        every tensor solved the subproblem a sweep would solve from these transforms: ``log`` notes it."""
        settled = {s: el for s, el in transforms.items() if problem.init is not None and s in problem.init}
        trim = trim or _nothing
        for u, spaces in enumerate(units):
            if all(s in settled for s in spaces):
                continue
            complete = all(matcher.usable(eb, settled) for s in spaces for _, eb in matcher.edges[s])
            classes = [problem.classes[s] for s in spaces]
            keep = [] if _takes_terms(objective) and not coupled[u] and _index_form(classes[0]) else None
            locals_ = new = None  # the last unit's scores go before this unit's are built
            trim()
            locals_ = [matcher.local(s, settled, settled_only=True, stream=streamed_classes(c),
                                     norms=scale_grid_class(c), keep=keep) for s, c in zip(spaces, classes)]
            if any(loc.empty for loc in locals_):
                if all(s in transforms for s in spaces):  # nothing to go on: keep the start
                    settled.update((s, transforms[s]) for s in spaces)
                    continue
                raise SolverInputError(f"space {spaces[0]!r} has no settled tensor to start from; pass init=",
                                       space=spaces[0])
            with thread_budget(solve_threads(locals_)):
                new = (solve_heads(classes, locals_, backend=backend) if isinstance(classes[0], HeadStructured)
                       else [solve_local(classes[0], locals_[0], backend=backend)])
            if not all(_finite(el) for el in new):
                new, complete = [transforms[s] for s in spaces], False
            settled.update(zip(spaces, new))
            if complete and not coupled[u] and _ignores_current(classes[0]):  # a sweep's visit would keep it
                log.record(u, settled, True)
                _note_margin((stable, u), spaces, locals_, settled)
            locals_ = None
            _note_terms(objective, keep, settled)
            keep = None
        return settled


class _MonomialDescent:
    """Between full sweeps: the positive scales alone, every gather (permutation) kept
    (:func:`~solvers.scale_descent.polish_scales`), ``J`` never increasing; the views of one call are handed
    to the next (tensors whose gathers did not move keep their sums), and the tensors' ``J_p`` under the
    polished scales go to ``objective`` (no second pass over them). The full sweep that follows (the exact
    ``D P`` subproblem of every space) moves the permutations — or certifies the fixed point."""

    def __init__(self, problem, matcher, objective):
        self.problem, self.matcher, self.objective = problem, matcher, objective
        self.views = None

    def seed(self, transforms, views, terms: dict) -> None:
        """Views built elsewhere under ``transforms`` (the staged start's) and their tensors' ``J_p``."""
        self.views = views
        self._prefill(transforms, terms)

    def _prefill(self, transforms, terms: dict) -> None:
        if hasattr(self.objective, "prefill"):
            for name, value in terms.items():
                self.objective.prefill(name, transforms, value)

    def __call__(self, spaces, transforms, threshold) -> None:
        out = polish_scales(self.problem, self.matcher, spaces, transforms, threshold, self.views)
        self.views = None if out is None else out[0]
        if out is not None:
            self._prefill(transforms, out[1])


def _nothing() -> None:
    pass


def _note_margin(certify, spaces, locals_, transforms) -> None:
    """Hand :class:`~solvers.stability.StableAssignments` the score of a permutation unit just solved."""
    stable, u = certify
    if stable is not None and u in stable.eligible:
        m, v = score_matrices(locals_[0])
        stable.note(u, spaces[0], m if v is None else m + v, transforms)


def _finite(el: Element) -> bool:
    """Whether an element's stored numbers are finite (dense maps: both ``T`` and its left inverse)."""
    if isinstance(el, HeadElement):
        return all(_finite(e) for e in el.inner)
    if isinstance(el, DenseElement):
        return bool(torch.isfinite(el.matrix).all() and torch.isfinite(el.left_inverse).all())
    if isinstance(el, GatherElement):
        return all(v is None or bool(torch.isfinite(v).all()) for v in (el.out_scale, el.in_scale))
    return True


def _ignores_current(cls) -> bool:
    """Whether the unit's solve never reads its current element (head groups; the built-in norm-keeping
    subproblem): then, with the same data, it returns the same element whatever the last visit kept."""
    return isinstance(cls, HeadStructured) or subproblem.dispatch(type(cls)) is _NORM_KEEPING


def _takes_terms(objective) -> bool:
    """Whether visits hand ``objective`` their tensors' terms (:func:`_note_terms`)."""
    return getattr(objective, "visit_terms", False)


def _index_form(cls) -> bool:
    """Whether the class's elements act by gathering rows (signs at most): their action costs a copy."""
    inner = cls.inner if isinstance(cls, HeadStructured) else cls
    return isinstance(inner, (Permutation, SignFlip, SignedPermutation))


def _note_terms(objective, keep, transforms) -> None:
    """Hand ``objective`` each kept tensor's term ``‖A_e − T·B_e‖²`` under ``transforms`` (B's rows already
    carry the other spaces' elements) — unless it holds that term already (the visit kept its element)."""
    for space, edge, a, b in keep or ():
        if objective.holds(edge.parameter, transforms):
            continue
        diff = a - transforms[space].act(b, edge.role)
        objective.prefill(edge.parameter, transforms, float(torch.linalg.vector_norm(diff, dtype=torch.float64) ** 2))
        del diff


def _same(a: Element, b: Element) -> bool:
    """Whether two permutations (index maps without scales) are equal."""
    return (isinstance(a, GatherElement) and isinstance(b, GatherElement) and a.shape == b.shape
            and a.out_scale is None and b.out_scale is None and a.in_scale is None and b.in_scale is None
            and torch.equal(a.index, b.index))


def _check_rebasin(problem) -> None:
    for space, cls in problem.classes.items():
        if not isinstance(cls, (Permutation, Trivial)):
            raise SolverInputError(f"mode='rebasin' searches permutations only; space {space!r} asks for {cls!r}",
                                   space=space)
    if problem.width_changing:
        raise SolverInputError("mode='rebasin' needs models of equal widths")
    if problem.init is not None:
        raise SolverInputError("mode='rebasin' starts from the identity (Git Re-Basin); drop init=")


register("weight_matching", WeightMatching)
