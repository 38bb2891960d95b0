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

from symmetries.classes import HeadStructured, Invertible, Permutation, PermutationScaling, PositiveScaling, Trivial
from symmetries.elements import DenseElement, Element, GatherElement, HeadElement
from symmetries.roles import Role
from symmetries.transforms import TransformSet

from solvers.errors import SolverInputError
from solvers.local import Matcher, inner_product, search_units
from solvers.scale_descent import polish_scales, staged_start
from solvers.registry import Solver, register
from solvers.solution import Solution
from solvers.subproblems import (dense_or, gain, has_subproblem, linear_classes,
                                 score_matrices, solve_block, solve_heads, solve_local, subproblem_classes)

__all__ = ["WeightMatching"]


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
              backend: str = "auto", start: str | None = None) -> Solution:
        """``mode``: ``"default"`` or ``"rebasin"``; ``tol``: an update is kept if it lowers ``J`` by more
        than ``tol·J_start`` (default 1e-12 in float64, 1e-6 in float32; ``rebasin``: absolute 1e-12 on
        ``⟨P, cost⟩``); ``backend``: the LAP backend (:mod:`symmetries.assignment`); ``start``:
        ``"forward"`` (default: a first pass in graph order in which each space sees only the tensors
        whose other axes are settled; kept if it lowers ``J`` or widths change — with ``PermutationScaling``
        spaces, the whole permutation solve with ``Permutation`` there, on B balanced —
        :func:`~solvers.scale_descent.staged_start` — instead) or ``"identity"``
        (start the sweeps from ``init`` or the identity). ``history``: ``J`` at the start, after the
        first pass (if kept) and after every sweep."""
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
        objective_before = problem.objective(TransformSet(transforms)) \
            if len(transforms) == len(problem.spaces) else None
        if tol is None:
            tol = 1e-12 if (rebasin or problem.dtype == torch.float64) else 1e-6
        rng = np.random.default_rng(problem.seed)
        history = [] if objective_before is None else [objective_before]
        scaled = [u[0] for u, c in zip(units, coupled)
                  if not c and isinstance(problem.classes[u[0]], (PositiveScaling, PermutationScaling))]
        staged = start == "forward" and not rebasin and any(isinstance(problem.classes[s], PermutationScaling)
                                                             for s in scaled)
        if staged:  # permutations first on balanced B (solvers.scale_descent), their scales next, then D P
            candidate, value = staged_start(self.solve, problem, transforms, scaled, mode=mode, max_iter=max_iter,
                                            tol=tol, backend=backend, start=start)
        elif start == "forward":
            candidate = self._forward(problem, matcher, units, transforms, backend)
            value = problem.objective(TransformSet(candidate))
        if start == "forward" and (objective_before is None or value < objective_before):
            transforms = candidate
            history.append(value)
        threshold = tol * max(history[0], 1e-300) if history else 0.0
        if scaled and not rebasin and history:
            _monomial_descent(problem, matcher, scaled, transforms, threshold, backend)
        status, iterations = "max_iter", 0
        for it in range(int(max_iter)):
            iterations = it + 1
            progress = False
            for u in rng.permutation(len(units)):
                spaces = units[u]
                classes = [problem.classes[s] for s in spaces]
                locals_ = new = None  # the last unit's scores go before this unit's are built
                locals_ = [matcher.local(s, transforms, stream=linear_classes(c)) for s, c in zip(spaces, classes)]
                new = (solve_heads(classes, locals_, backend=backend)
                       if isinstance(classes[0], HeadStructured)
                       else [solve_local(classes[0], locals_[0], backend=backend, current=transforms[spaces[0]])])
                if rebasin:
                    space, loc, el = spaces[0], locals_[0], new[0]
                    score = loc.cross(Role.OUT, Role.IN)
                    if loc.has(Role.VAR):
                        score = score + loc.cross(Role.VAR)
                    old_value, new_value = inner_product(transforms[space], score), inner_product(el, score)
                    progress = progress or new_value > old_value + tol
                    transforms[space] = el
                    continue
                if not all(_finite(el) for el in new):
                    continue
                if coupled[u]:  # the local loss is not the one solved: judge by the exact change of J
                    new, g = _coupled_step(problem, spaces, classes, locals_, new, transforms, coupled[u],
                                           backend, tol * max(history[0], 1e-300))
                else:
                    g = sum(gain(c, loc, transforms[s], el) for c, loc, s, el in zip(classes, locals_, spaces, new))
                if g > tol * max(history[0], 1e-300):  # relative to the start: round-off never counts
                    progress = True
                    transforms.update(zip(spaces, new))
            locals_ = new = None
            if progress and scaled and not rebasin:
                _monomial_descent(problem, matcher, scaled, transforms, threshold, backend)
            history.append(problem.objective(TransformSet(transforms)))
            if not progress:
                status = "converged"
                break
        if max_iter == 0:
            status = "converged"
        return Solution(TransformSet(transforms), objective_before, history[-1], iterations=iterations,
                        status=status, history=history,
                        message=f"{iterations} sweep(s), {len(units)} unit(s), mode={mode}, start={start}")

    @staticmethod
    def _forward(problem, matcher, units, transforms, backend) -> dict:
        """A first pass in graph order where each space sees only the tensors whose other axes are
        already settled (``init`` counts as settled); returns the complete candidate set."""
        settled = {s: el for s, el in transforms.items() if problem.init is not None and s in problem.init}
        for spaces in units:
            if all(s in settled for s in spaces):
                continue
            locals_ = new = None  # the last unit's scores go before this unit's are built
            locals_ = [matcher.local(s, settled, settled_only=True, stream=linear_classes(problem.classes[s]))
                       for s in spaces]
            if any(loc.empty for loc in locals_):
                if all(s in transforms for s in spaces):  # nothing to go on: keep the start
                    settled.update((s, transforms[s]) for s in spaces)
                    continue
                raise SolverInputError(f"space {spaces[0]!r} has no settled tensor to start from; pass init=",
                                       space=spaces[0])
            classes = [problem.classes[s] for s in spaces]
            new = (solve_heads(classes, locals_, backend=backend) if isinstance(classes[0], HeadStructured)
                   else [solve_local(classes[0], locals_[0], backend=backend)])
            if not all(_finite(el) for el in new):
                new = [transforms[s] for s in spaces]
            settled.update(zip(spaces, new))
        return settled


def _monomial_descent(problem, matcher, spaces, transforms, threshold, backend) -> None:
    """Between full sweeps: the positive scales alone, every gather (permutation) kept
    (:func:`~solvers.scale_descent.polish_scales`), ``J`` never increasing. The full sweep that follows
    (the exact ``D P`` subproblem of every space) moves the permutations — or certifies the fixed point."""
    polish_scales(problem, matcher, spaces, transforms, threshold)


def _finite(el: Element) -> bool:
    """Whether an element's stored numbers are finite (dense maps: both ``T`` and its left inverse)."""
    if isinstance(el, HeadElement):
        return all(_finite(e) for e in el.inner)
    if isinstance(el, DenseElement):
        return bool(torch.isfinite(el.matrix).all() and torch.isfinite(el.left_inverse).all())
    if isinstance(el, GatherElement):
        return all(v is None or bool(torch.isfinite(v).all()) for v in (el.out_scale, el.in_scale))
    return True


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
