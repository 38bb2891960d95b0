"""Semi-permutations: align a narrow model B (width ``n``) into a wide model A (width ``m ≥ n``).

A split ``P̃`` sends wide unit ``j`` to narrow unit ``σ(j)`` with fraction ``f_j`` (``Σ_{σ(j)=i} f_j
= 1``, every narrow unit used): producing tensors ``A_o[j] ≈ f_j B_o[σ(j)]``, consuming tensors
``A_in[j] ≈ B_in[σ(j)]`` (copies). One update of a space minimises the local loss in two exact steps:

1. **assignment** — with each pair's best unconstrained fraction ``f = max(0, ⟨a, b⟩/‖b‖²)`` the pair
   cost is ``c(j, i) = ‖a_o‖² − max(⟨a_o, b_o⟩, 0)²/‖b_o‖² + ‖a_in − b_in‖²``; the surjection ``σ``
   minimising ``Σ_j c(j, σ(j))`` is one LAP on ``[C | min_i C ⋯]`` (``n`` mandatory columns, one per
   narrow unit, plus ``m − n`` free columns priced at each row's best narrow unit);
2. **fractions** — for each narrow unit, ``f_G = argmin_{f ∈ Δ} Σ_{j∈G} ‖a_o[j] − f_j b_o‖²`` is the
   Euclidean projection of ``(⟨a_o[j], b_o⟩/‖b_o‖²)_j`` onto the simplex.

The solver ``semi_permutation`` is weight matching with this update at every width-changing space
(see :mod:`solvers.weight_matching`); its result applies to B with B's graph (``graph_b``).
"""
from __future__ import annotations

import numpy as np
import torch

from symmetries.assignment import solve_assignment
from symmetries.elements import GatherElement
from symmetries.roles import Role

from .local import Local

__all__ = ["split_update", "project_simplex"]


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto ``{f ≥ 0, Σ f = 1}`` (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def split_update(local: Local, *, backend: str = "auto") -> GatherElement:
    """The split ``P̃`` (``m × n``) from the two exact steps of the module docstring."""
    m, n = local.m, local.n
    alpha = local.cross(Role.OUT).double().cpu().numpy()
    beta = local.row_norms(Role.OUT, "b").double().cpu().numpy()
    a_out = local.row_norms(Role.OUT, "a").double().cpu().numpy()
    cin = local.cross(Role.IN).double().cpu().numpy()
    a_in = local.row_norms(Role.IN, "a").double().cpu().numpy()
    b_in = local.row_norms(Role.IN, "b").double().cpu().numpy()
    safe = np.where(beta > 0, beta, 1.0)
    cost = a_out[:, None] - np.where(beta > 0, np.maximum(alpha, 0) ** 2 / safe, 0.0)
    cost = cost + a_in[:, None] - 2 * cin + b_in[None, :]
    free = cost.min(1, keepdims=True)
    rows, cols = solve_assignment(np.concatenate([cost, np.repeat(free, m - n, axis=1)], axis=1),
                                  maximize=False, backend=backend)
    source = cost.argmin(1)
    mandatory = cols < n
    source[rows[mandatory]] = cols[mandatory]
    fractions = np.ones(m)
    ratio = alpha[np.arange(m), source] / safe[source]
    counts = np.bincount(source, minlength=n)
    for i in np.flatnonzero(counts > 1):
        group = np.flatnonzero(source == i)
        fractions[group] = project_simplex(ratio[group]) if beta[i] > 0 else 1.0 / group.size
    return GatherElement.split(torch.as_tensor(source), torch.as_tensor(fractions), n)


def _register() -> None:
    from .registry import register
    from .weight_matching import WeightMatching

    class SemiPermutationSolver(WeightMatching):
        """Weight matching that widens a narrow model (pass ``graph_b``); width-changing spaces
        default to their rectangular class (``SemiPermutation`` for ReLU units)."""
        description = ("align a narrow model into a wide one: split maps (LAP cover + simplex fractions) "
                       "where widths differ, weight matching elsewhere")

    register("semi_permutation", SemiPermutationSolver)


_register()
