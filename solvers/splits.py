"""The semi-permutation subproblem: split a narrow model B (width ``n``) into a wide A (width ``m ≥ n``).

A split ``P̃`` sends wide unit ``j`` to narrow unit ``σ(j)`` with fraction ``f_j ≥ 0`` (``σ`` onto,
``Σ_{σ(j)=i} f_j = 1``): producing tensors ``a_o[j] ≈ f_j b_o[σ(j)]``, variance tensors
``a_v[j] ≈ f_j² b_v[σ(j)]``, consuming tensors ``a_in[j] ≈ b_in[σ(j)]`` (copies) — or ``0`` when
``f_j = 0`` (a dead wide unit: ``B = 1[P̃ > 0]``). With the pair loss

    ℓ_j(i, f) = ‖a_o[j] − f b_o[i]‖² + ‖a_v[j] − f² b_v[i]‖² + ‖a_in[j] − 1[f > 0] b_in[i]‖²,

one update of a space looks for ``(σ, f)`` minimising ``L = Σ_j ℓ_j(σ(j), f_j)``:

* ``m = n``: a semi-permutation is a permutation (every fraction is 1), and the update is the exact
  minimiser: one LAP on ``ℓ_j(i, 1)``.
* ``m > n``: the joint problem is combinatorial; the update is a heuristic in two steps, the second
  exact. (1) **assignment** — one LAP on ``[C₁ | c_free ⋯]``: ``n`` mandatory columns, one per
  narrow unit, priced at fraction 1 (``C₁[j, i] = ℓ_j(i, 1)``, exact for a unit that stays alone),
  and ``m − n`` free columns priced at each row's cheapest extra role — joining its best narrow
  unit at the best free fraction ``f = clip(⟨a_o, b_o⟩/‖b_o‖², 0, 1)``, or dead; the same LAP with
  every column priced at the best free fraction (the earlier rule) is solved too, and the better
  of the two results is returned. (2) **fractions** — for each narrow unit ``i`` and its group
  ``G = σ⁻¹(i)``, the exact minimiser of ``Σ_{j∈G} ℓ_j(i, f_j)`` over the simplex: for every live
  support ``S ⊆ G`` the fractions are the Euclidean projection of ``(⟨a_o[j], b_o⟩/‖b_o‖²)_{j∈S}``
  onto the simplex, and the best support is kept (all ``2^|G| − 1`` supports for groups of at most
  ``MAX_ENUMERATED`` units; larger groups try ``G`` and the support of its projection only). The
  refit is exact without variance edges; with them the fractions ignore the ``f²``-terms (whose
  loss is quartic) but the support is still chosen on the exact loss.

The caller (weight matching) keeps the update only if the exact local loss decreases. It is the
subproblem registered for ``SemiPermutation`` (:func:`solvers.subproblem`); the solver
``semi_permutation`` is weight matching with it at every width-changing space.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import torch

from symmetries.assignment import assignment_permutation, solve_assignment
from symmetries.elements import GatherElement
from symmetries.roles import Role

from solvers.local import Local

__all__ = ["split_update", "project_simplex", "MAX_ENUMERATED"]

#: Groups up to this size get every live support enumerated in the fraction refit (exact).
MAX_ENUMERATED = 10


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto ``{f ≥ 0, Σ f = 1}`` (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


class _Terms:
    """The numbers ``ℓ_j(i, f)`` is made of (float64 numpy): cross products and squared norms."""

    def __init__(self, local: Local):
        def arr(x):
            return x.double().cpu().numpy()
        self.m, self.n = local.m, local.n
        self.alpha, self.zeta, self.cin = (arr(local.cross(r)) for r in (Role.OUT, Role.VAR, Role.IN))
        self.a_o, self.a_v, self.a_in = (arr(local.row_norms(r, "a")) for r in (Role.OUT, Role.VAR, Role.IN))
        self.b_o, self.b_v, self.b_in = (arr(local.row_norms(r, "b")) for r in (Role.OUT, Role.VAR, Role.IN))
        self.ratio = np.where(self.b_o > 0, self.alpha / np.where(self.b_o > 0, self.b_o, 1.0), 0.0)

    def loss(self, rows, cols, f, live=None) -> np.ndarray:
        """``ℓ_j(i, f)`` elementwise over broadcast index arrays ``rows``, ``cols`` and fractions ``f``
        (``live``: whether the unit copies B's consuming weights; default ``f > 0``)."""
        f = np.asarray(f, dtype=np.float64)
        live = f > 0 if live is None else live
        al, ze, ci = self.alpha[rows, cols], self.zeta[rows, cols], self.cin[rows, cols]
        return (self.a_o[rows] - 2 * f * al + f * f * self.b_o[cols]
                + self.a_v[rows] - 2 * f * f * ze + f ** 4 * self.b_v[cols]
                + self.a_in[rows] - np.where(live, 2 * ci - self.b_in[cols], 0.0))


def _group_fractions(t: _Terms, group: np.ndarray, i: int) -> np.ndarray:
    """The fractions of the wide units ``group`` copying narrow unit ``i`` (see the module docstring)."""
    def fractions(support):
        f = np.zeros(group.size)
        if t.b_o[i] > 0:
            f[support] = project_simplex(t.ratio[group[support], i])
        else:  # no producing signal: any split of the support is as good
            f[support] = 1.0 / len(support)
        return f

    k = group.size
    if k <= MAX_ENUMERATED:
        supports = [list(c) for r in range(1, k + 1) for c in combinations(range(k), r)]
    else:
        full = fractions(list(range(k)))
        supports = [list(range(k)), list(np.flatnonzero(full > 0))]
    candidates = [fractions(support) for support in supports]
    values = [float(t.loss(group, i, f).sum()) for f in candidates]
    return candidates[int(np.argmin(values))]


def _split(t: _Terms, source: np.ndarray) -> tuple[GatherElement, float]:
    """The split with assignment ``source`` and exactly refitted fractions, and its local loss."""
    fractions = np.ones(t.m)
    counts = np.bincount(source, minlength=t.n)
    for i in np.flatnonzero(counts > 1):
        group = np.flatnonzero(source == i)
        fractions[group] = _group_fractions(t, group, i)
    value = float(t.loss(np.arange(t.m), source, fractions).sum())
    return GatherElement.split(torch.as_tensor(source), torch.as_tensor(fractions), t.n), value


def _assign(cost: np.ndarray, extra: np.ndarray, extra_source: np.ndarray, backend: str) -> np.ndarray:
    """``σ`` from one LAP on ``[cost | extra ⋯]``: mandatory columns give their narrow unit; rows
    matched to a free column go to ``extra_source``."""
    m, n = cost.shape
    rows, cols = solve_assignment(np.concatenate([cost, np.repeat(extra[:, None], m - n, axis=1)], axis=1),
                                  maximize=False, backend=backend)
    source = extra_source.copy()
    mandatory = cols < n
    source[rows[mandatory]] = cols[mandatory]
    return source


def split_update(local: Local, *, backend: str = "auto") -> GatherElement:
    """The split ``P̃`` (``m × n``) of the module docstring: exact for ``m = n``; for ``m > n`` the
    better of two assignments, each with exactly refitted fractions."""
    t = _Terms(local)
    rows, cols = np.arange(t.m)[:, None], np.arange(t.n)[None, :]
    whole = t.loss(rows, cols, 1.0)  # a unit alone: fraction 1
    if t.m == t.n:
        source = assignment_permutation(whole, maximize=False, backend=backend)
        return GatherElement(torch.as_tensor(source), t.n)
    free = t.loss(rows, cols, np.clip(t.ratio, 0.0, 1.0), live=True)  # an extra unit at its best fraction
    dead = t.loss(np.arange(t.m), 0, 0.0)
    best_free = free.argmin(1)
    extra = np.minimum(free.min(1), dead)
    candidates = [_split(t, _assign(whole, extra, best_free, backend)),
                  _split(t, _assign(free, free.min(1), best_free, backend))]  # every column at a free fraction
    return min(candidates, key=lambda c: c[1])[0]

