"""Positive scales of ``T = D P`` with every gather (permutation) kept: the scale subproblem of weight
matching over ``PositiveScaling`` / ``PermutationScaling``, and its staged start.

* :class:`~solvers.scale_views.ScaleViews` — ``J`` as a function of the scales, from per-tensor sums
  (mat-vecs; :mod:`solvers.scale_views`).
* :func:`polish_scales` — the scales alone by two-level coordinate descent: each space's ``n`` scalar
  problems (exact, :mod:`solvers.scaling`), alternated with the exact best multiplier per space (a
  Newton solve in as many variables as spaces). Plain coordinate descent moves the layers' mean
  scales along a chain of spaces like Gauss–Seidel on a 1-D Laplacian — slowly: on a 25-space
  SqueezeNet-like net ~50 sweeps per polish and over 100 to balance; the multipliers take that mode
  in one small solve (~33 sweeps in all, balancing included).
* :func:`balanced_scales` — B's least-norm scales ``argmin_D Σ_e ‖D·B_e‖²`` (each unit's producing and
  consuming norms equal: ``c = (δ/β)^¼`` per unit), by the same two-level descent.
* :func:`staged_start` — permutations first, on B balanced: the exact pair loss of the ``D P``
  subproblem is ``min_c f = κ(2 − 2A − 2G) + O((A − G)²)`` (:mod:`solvers.scaling`), i.e.
  ``2κ − 2⟨a, b_s⟩`` with ``b_s`` B's unit scaled by ``s = (δ/β)^¼`` — to first order in the cross
  terms the ``D P`` assignment is the permutation assignment against balanced B (``s = 1`` there,
  whatever the neighbours' permutations). One permutation solve thus lands at or next to a fixed
  point of the exact ``D P`` sweeps; ``T = P D_bal`` then has its scales polished.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from symmetries.action import apply
from symmetries.classes import Permutation, PermutationScaling
from symmetries.elements import GatherElement
from symmetries.transforms import TransformSet

from solvers.scale_views import ScaleViews
from solvers.scaling import best_scale, scale_loss
from solvers.subproblems import rescale

__all__ = ["ScaleViews", "polish_scales", "balanced_scales", "staged_start"]

MAX_SWEEPS = 500
BALANCE_RTOL = 1e-6  # balancing stops when no scale moves by more than this (relative)
START_BALANCE_RTOL = 1e-3  # the staged start's balancing: a start, the D P sweeps decide (1e-6 gives the same sweeps)
NEWTON_STEPS = 30
#: Skip solves whose inputs are those of their last one (:func:`polish_scales`). Private switch: tests compare
#: against the plain loop with it off.
_SKIP_UNCHANGED = True


def multipliers(views: ScaleViews, scales: dict, spaces: list[str], threshold: float, cross: bool = True) -> float:
    """Multiply every space's scales by the ``λ_s`` minimising ``J`` (:meth:`ScaleViews.blocks`; without
    ``cross``: ``Σ‖D·B‖²``) — damped Newton in ``v = log λ`` (the Hessian's eigenvalues taken in absolute
    value, a backtracking line search on the exact value) — when that lowers it by more than
    ``threshold``; returns the decrease (``0.0`` if nothing was changed). ``scales``: numpy, in place."""
    blocks = views.blocks(scales, cross)
    index = {s: i for i, s in enumerate(spaces)}
    e = np.array([b[0] for b in blocks])
    f = np.array([b[1] for b in blocks])
    k = np.zeros((len(blocks), len(spaces)))
    for row, (_, _, ks) in enumerate(blocks):
        for sp, v in ks.items():
            k[row, index[sp]] = v

    def value(v):
        m = np.exp(k @ v)
        out = float((-2 * e * m + f * m * m).sum())
        return out if np.isfinite(out) else np.inf
    v = np.zeros(len(spaces))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        start = current = value(v)
        for _ in range(NEWTON_STEPS):
            m = np.exp(k @ v)
            grad = k.T @ (-2 * e * m + 2 * f * m * m)
            lam, vec = np.linalg.eigh(k.T @ ((-2 * e * m + 4 * f * m * m)[:, None] * k))
            lam = np.maximum(np.abs(lam), 1e-12 * max(float(np.abs(lam).max()), 1e-300))
            step = -vec @ ((vec.T @ grad) / lam)
            t, slope = 1.0, float(grad @ step)
            while t > 1e-10 and value(v + t * step) > current + 1e-4 * t * slope:
                t *= 0.5
            new = value(v + t * step)
            if not (new < current and np.isfinite(step).all()):
                break
            v, current = v + t * step, new
            if float(np.abs(t * step).max()) < 1e-12:
                break
    gain = start - current
    if gain > threshold and np.isfinite(v).all():
        for sp, i in index.items():
            scales[sp] = scales[sp] * np.exp(v[i])
        return gain
    return 0.0


def polish_scales(problem, matcher, spaces, transforms, threshold, previous: ScaleViews | None = None
                  ) -> tuple[ScaleViews, dict[str, float]] | None:
    """The positive scales alone, each space's gather kept, until a pass lowers ``J`` by no step of more
    than ``threshold``: the best multiplier per space (:func:`multipliers`), then each space's exact
    per-unit scales (``n`` scalar problems, :class:`ScaleViews` mat-vecs) colour class by colour class,
    forward and backward; ``J`` never increases. Returns the views (``previous`` for the next call: tensors
    whose gathers did not move keep their sums) and ``J_p`` of each tensor they cover under the final
    scales; ``None`` where they do not apply (then per-space views, :func:`~solvers.subproblems.rescale`)."""
    spaces = [s for s in spaces if isinstance(transforms[s], GatherElement) and transforms[s].bijective]
    views = ScaleViews.build(problem, spaces, transforms, previous) if spaces else None
    if views is None:
        _polish_per_space(matcher, spaces, transforms, threshold)
        return None
    scales = {s: transforms[s].scales()[0].numpy().copy() for s in spaces}
    colours, changed = views.colours(spaces), set()
    # a solve whose inputs (its own scales and its neighbours') are those of its last one would return that
    # one's answer again — kept already, or refused — so it is skipped; likewise the multipliers
    near = {s: sorted(n) for s, n in views.neighbours(spaces).items()}
    version = dict.fromkeys(spaces, 0)  # bumped whenever a space's scales change
    seen: dict = {}  # per space the versions its last solve read

    def inputs(space):
        return (version[space], *(version[x] for x in near[space]))
    quiet = None  # the versions at the last multipliers call that moved nothing
    for k in range(MAX_SWEEPS):
        accepted = False
        if tuple(version.values()) != quiet or not _SKIP_UNCHANGED:
            accepted = multipliers(views, scales, spaces, threshold) > 0
            if accepted:
                changed.update(spaces)
                version = {s: v + 1 for s, v in version.items()}
            else:
                quiet = tuple(version.values())
        for group in (colours if k % 2 == 0 else colours[::-1]):
            todo = [space for space in group if seen.get(space) != inputs(space) or not _SKIP_UNCHANGED]
            for space, c, g in _solve_colour(views, todo, scales) if todo else ():
                if np.isfinite(c).all() and g > threshold:
                    scales[space] = c
                    changed.add(space)
                    version[space] += 1
                    accepted = True
                seen[space] = inputs(space)
        if not accepted:
            break
    for s in changed:
        transforms[s] = GatherElement.monomial(transforms[s].index, torch.from_numpy(scales[s]))
    return views, views.tensor_objectives(scales)


def _solve_colour(views: ScaleViews, group: list[str], scales: dict):
    """``(space, exact per-unit scales, decrease of J)`` for every space of one colour class: their scale
    terms under the current ``scales``, solved in one :func:`~solvers.scaling.best_scale` call."""
    terms = [views.terms(space, scales) for space in group]
    joined = {k: np.concatenate([t[k] for t in terms]) for k in terms[0]}
    c, f = best_scale(**joined)
    old = scale_loss(np.concatenate([scales[sp] for sp in group]), **joined)
    stops = np.cumsum([len(scales[sp]) for sp in group])[:-1]
    for space, cs, fs, olds in zip(group, np.split(c, stops), np.split(f, stops), np.split(old, stops)):
        yield space, cs, float(olds.sum() - fs.sum())


def _polish_per_space(matcher, spaces, transforms, threshold) -> None:
    last = None
    for k in range(MAX_SWEEPS):
        accepted = False
        for space in (spaces if k % 2 == 0 else spaces[::-1]):
            if space == last:
                continue
            new, g = rescale(matcher.local(space, transforms), transforms[space])
            last = space
            if g > threshold and all(v is None or bool(torch.isfinite(v).all()) for v in (new.out_scale, new.in_scale)):
                transforms[space] = new
                accepted = True
        if not accepted:
            return


def balanced_scales(problem, spaces: list[str], transforms: dict, rtol: float = BALANCE_RTOL
                    ) -> dict[str, torch.Tensor] | None:
    """Per space in ``spaces`` the scales ``c`` (B's units, identity gathers; the other spaces' transforms
    from ``transforms``) minimising ``Σ_e ‖D·B_e‖²`` — per unit ``c = (δ/β)^¼`` (with ``var`` edges the
    minimiser of ``βc² + δ/c² + εc⁴``), per space the best multiplier — by the two-level descent of
    :func:`polish_scales` (a convex problem in ``log c``); units without producing or consuming weights
    keep ``1``; stops when no scale moves by more than ``rtol`` (relative) in a pass. ``None`` where
    :class:`ScaleViews` does not apply (a tied axis)."""
    out = _balance(problem, spaces, transforms, rtol)
    return None if out is None else out[0]


def _balance(problem, spaces: list[str], transforms: dict, rtol: float
             ) -> tuple[dict[str, torch.Tensor], ScaleViews] | None:
    """:func:`balanced_scales` and the norm-only views it used (their ``Σ B∘B`` serve the next build)."""
    sizes = {s: problem.sizes[s][1] for s in spaces}
    views = ScaleViews.build(problem, spaces, {**transforms, **{s: GatherElement.identity(n) for s, n in sizes.items()}},
                             cross=False)
    if views is None:
        return None
    scales = {s: np.ones(n) for s, n in sizes.items()}
    colours = views.colours(spaces)
    for k in range(MAX_SWEEPS):
        before = {s: c.copy() for s, c in scales.items()}
        multipliers(views, scales, spaces, 0.0, cross=False)
        for group in (colours if k % 2 == 0 else colours[::-1]):
            terms = [views.terms(space, scales, cross=False) for space in group]  # one class: independent
            for space, t in zip(group, terms):
                scales[space] = _least_norm_scales(t["beta"], t["delta"], t["eps"])
        if max(float(np.abs(scales[s] / before[s] - 1).max()) for s in spaces) <= rtol:
            break
    return {s: torch.from_numpy(c) for s, c in scales.items()}, views


def _least_norm_scales(beta: np.ndarray, delta: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Per unit the ``c`` minimising ``βc² + δ/c² + εc⁴`` (``(δ/β)^¼`` without ``var`` edges); ``1`` for units
    without producing or consuming weights."""
    ok = (beta + eps > 0) & (delta > 0) & np.isfinite(beta + delta + eps)
    c = np.ones_like(beta)
    if not eps.any():
        c[ok] = np.sqrt(np.sqrt(delta[ok] / beta[ok]))
    elif ok.any():
        c[ok], _ = best_scale(0.0, beta[ok], 0.0, delta[ok], 0.0, eps[ok])
    return c


def staged_start(solve, problem, transforms: dict, scaled: list[str], matcher=None, **options):
    """``(candidate transforms, their J, (views, J_p per tensor) or None)``: the problem solved with ``Permutation`` at its
    ``PermutationScaling`` spaces (``solve``: the weight-matching solver's ``solve``, ``options`` its
    options) on B balanced at the scaled spaces (module doc) and in float32 (a start: the float64 ``D P``
    sweeps that follow decide), the scales put back as ``T = D P D_bal``; on B as it is where balancing
    does not apply (``init`` given, widths changing, a tied axis). ``J`` of the candidate comes from its
    :class:`ScaleViews` (which the first polish then reuses) and the objective of the tensors they miss.
    ``matcher``: the outer solve's, which adopts the permutation stage's kept products where the two
    problems share their dtype (:meth:`~solvers.matcher.Matcher.adopt`: VGG's 4096 × 25 088 classifier
    product, 11 s on one thread, is not built twice)."""
    classes = {s: Permutation() if isinstance(c, PermutationScaling) else c for s, c in problem.classes.items()}
    square = all(problem.sizes[s][0] == problem.sizes[s][1] for s in scaled)
    balanced = (_balance(problem, scaled, transforms, START_BALANCE_RTOL) if problem.init is None and not problem.lazy and square
                and all(s in transforms for s in scaled) else None)
    if balanced is not None:
        scales, norm_views = balanced
        tb = TransformSet({s: GatherElement.monomial(torch.arange(len(c)), c) for s, c in scales.items()})
        low = torch.float32 if problem.dtype == torch.float64 else problem.dtype
        if low != problem.dtype:  # gains below float32 round-off are not progress
            options = {**options, "tol": max(options.get("tol") or 0.0, 1e-6)}
        params_b = apply(problem.graph_b, problem.params_b, tb, check=False)
        inner: list = []
        first = solve(dataclasses.replace(problem, classes=classes, dtype=low, params_a=_cast(problem.params_a, low),
                                          params_b=_cast(params_b, low)), **options, record=False, _matchers=inner)
        if matcher is not None and inner:
            matcher.adopt(inner.pop(), scales)
        candidate = dict(first.transforms)
        if all(isinstance(candidate[s], GatherElement) and candidate[s].bijective for s in scales):
            for s, c in scales.items():  # (D P · D_bal B)[j] = d[j] c[π(j)] B[π(j)]
                el = candidate[s]
                candidate[s] = GatherElement.monomial(el.index, c[el.index] * el.scales()[0])
            views = ScaleViews.build(problem, list(scales), candidate, norm_views)  # B∘B sums from the balancing
            if views is None:
                return candidate, problem.objective(TransformSet(candidate)), None
            terms = views.tensor_objectives({s: candidate[s].scales()[0].numpy() for s in scales})
            rest = [name for name in problem.params_a if name not in terms]
            value = sum(terms.values()) + (problem.objective(TransformSet(candidate), rest) if rest else 0.0)
            return candidate, value, (views, terms)
    first = solve(dataclasses.replace(problem, classes=classes), **options)
    return dict(first.transforms), first.objective_after, None


def _cast(params: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in params.items()}
