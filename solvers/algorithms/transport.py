"""Optimal transport between neuron clouds (POT): soft alignment and OT fusion.

Spaces are visited in graph order (Singh & Jaggi's layer-wise scheme). At space ``s`` every
neuron is a point: its rows in all tensors meeting ``s`` whose other axes are already aligned
(``a_j`` for A, ``b_i`` for B, concatenated over edges). With uniform masses ``μ = 1/m``,
``ν = 1/n`` and ground cost ``C[j, i] = ‖a_j − b_i‖²`` the coupling is

    Γ = argmin_{Γ ∈ U(μ, ν)} ⟨Γ, C⟩ (``ot.emd``)   or   ⟨Γ, C⟩ − ε H(Γ) (``ot.sinkhorn``, ε = reg · max C).

For equal widths and uniform masses the exact coupling is a permutation / n (Birkhoff), so
``Solution.transforms`` holds the permutation read off ``Γ`` by LAP (an element the space admits,
identical to the exact OT solution for ``emd``). The soft map ``T̂ = diag(1/μ) Γ`` (the barycentric
projection: aligned neuron ``j`` of B is ``Σ_i T̂[j, i] b_i``), applied to producing and consuming
tensors alike (``DenseElement(T̂, T̂ᵀ)``), is returned in ``extra["soft_transforms"]`` with the
couplings; :func:`fuse` averages A with the softly aligned B (OT fusion). Soft maps are not symmetries:
a fused model is a new model, not a reparameterisation.
"""
from __future__ import annotations

import warnings

import numpy as np
import ot
import torch

from symmetries.action import apply
from symmetries.assignment import assignment_permutation
from symmetries.classes import HeadStructured, Orthogonal, Permutation, Trivial
from symmetries.elements import DenseElement, GatherElement
from symmetries.roles import Role
from symmetries.transforms import TransformSet

from solvers.errors import SolverInputError, UnsupportedClassError
from solvers.registry import Solver, register
from solvers.solution import Solution
from solvers.matcher import Matcher, search_units

__all__ = ["OptimalTransport", "fuse"]


def fuse(graph, params_a, params_b, transforms, weight: float = 0.5) -> dict:
    """OT fusion: ``(1 − weight)·θ_A + weight·(T̂·θ_B)`` (floating tensors; others from A)."""
    aligned = apply(graph, params_b, transforms, check=False)
    return {k: ((1 - weight) * torch.as_tensor(v) + weight * torch.as_tensor(aligned[k]))
            if torch.as_tensor(v).is_floating_point() else v for k, v in params_a.items()}


class OptimalTransport(Solver):
    """Exact (``ot.emd``) or entropic (``ot.sinkhorn``) transport between neuron clouds, space by space."""

    name = "optimal_transport"
    description = ("POT transport between neuron clouds per space (emd or sinkhorn): permutation read off the "
                   "coupling + soft barycentric maps and couplings for OT fusion; not for orthogonal spaces (a "
                   "coupling is a permutation/n, never a rotation) nor attention heads (one head permutation "
                   "must tie the qk and vo spaces), so not for transformers")
    classes = (Trivial, Permutation)

    #: Why a class is refused (the maths, not a missing feature of the code).
    REFUSALS = {
        Orthogonal: "transport couples neurons as points: with uniform masses and equal widths the optimal coupling "
                    "is a permutation / n (Birkhoff), so the barycentric map, and Procrustes on it, is that "
                    "permutation and never a rotation; search Orthogonal with weight_matching, activation_matching, "
                    "relaxation or learned_matching",
        HeadStructured: "space-by-space transport cannot tie one head permutation across the qk and vo spaces of an "
                        "attention, and a coupling of all units mixes heads; search heads with weight_matching, "
                        "activation_matching, relaxation or learned_matching"}

    def check(self, problem) -> None:
        for space, cls in problem.classes.items():
            for kind, why in self.REFUSALS.items():
                if isinstance(cls, kind):
                    raise UnsupportedClassError(f"solver {self.name!r} cannot search space {space!r} in {cls!r}: "
                                                f"{why}", solver=self.name, space=space, cls=cls)
        super().check(problem)

    def solve(self, problem, *, transport: str = "emd", reg: float = 0.01, num_iter: int = 1000,
              marginal_tol: float = 1e-6, backend: str = "auto") -> Solution:
        """``transport``: ``"emd"`` or ``"sinkhorn"``; ``reg`` (> 0): entropic weight relative to
        ``max C``; ``num_iter``: Sinkhorn iterations; ``marginal_tol``: the largest relative marginal
        error ``max(m‖Γ1 − μ‖_∞, n‖Γᵀ1 − ν‖_∞)`` of a coupling counted as converged.

        ``status``: ``"converged"`` when every coupling meets its marginals; ``"max_iter"`` when one
        does not (Sinkhorn stopped at ``num_iter``; its permutation is still returned); ``"failed"``
        when one is not finite or carries no mass (Sinkhorn's kernel underflows for a small ``reg``),
        the spaces after it left as the identity — the message names the space."""
        if transport not in ("emd", "sinkhorn"):
            raise SolverInputError(f"transport must be 'emd' or 'sinkhorn', got {transport!r}")
        if transport == "sinkhorn" and not (np.isfinite(reg) and reg > 0):
            raise SolverInputError(f"reg must be a positive number for transport='sinkhorn', got {reg!r} "
                             f"(reg → 0 is exact transport: use transport='emd')")
        matcher = Matcher(problem)
        hard, soft, couplings, costs = {}, {}, {}, {}
        status, notes = "converged", []
        for unit in search_units(problem):
            space = unit[0]
            loc = matcher.local(space, soft, settled_only=True)
            m, n = problem.sizes[space]
            if loc.empty:
                loc = matcher.local(space, soft)
            cross = loc.cross(Role.OUT, Role.IN, Role.VAR).double().cpu()
            na = sum(loc.row_norms(r, "a").double().cpu() for r in (Role.OUT, Role.IN, Role.VAR))
            nb = sum(loc.row_norms(r, "b").double().cpu() for r in (Role.OUT, Role.IN, Role.VAR))
            cost = (na[:, None] + nb[None, :] - 2 * cross).clamp_min(0).numpy()
            mu, nu = np.full(m, 1.0 / m), np.full(n, 1.0 / n)
            with warnings.catch_warnings(record=True) as caught:  # judged below, on the coupling itself
                warnings.simplefilter("always")
                if transport == "emd":
                    gamma = ot.emd(mu, nu, cost)
                else:
                    gamma = ot.sinkhorn(mu, nu, cost / max(cost.max(), 1e-300), reg, numItermax=num_iter)
            said = "; ".join(sorted({str(w.message).splitlines()[0] for w in caught}))
            said = f" (POT: {said})" if said else ""
            finite = bool(np.isfinite(gamma).all())
            if not finite or not gamma.sum() > 0:
                status = "failed"
                hint = f"use a larger reg (now {reg:g}) or transport='emd'" if transport == "sinkhorn" else \
                    "check the weights for extreme values"
                notes.append(f"space {space!r}: the {transport} coupling is {'zero' if finite else 'not finite'}"
                             f"{said}; {hint}")
                break
            error = max(float(np.abs(gamma.sum(1) - mu).max()) * m, float(np.abs(gamma.sum(0) - nu).max()) * n)
            if error > marginal_tol:
                status = "max_iter" if status == "converged" else status
                notes.append(f"space {space!r}: the {transport} coupling misses its marginals by {error:.2g} "
                             f"(relative){said}; raise num_iter (now {num_iter}) or reg, or use transport='emd'")
            t_soft = torch.as_tensor(gamma / mu[:, None], dtype=problem.dtype)
            soft[space] = DenseElement(t_soft, t_soft.T.contiguous())
            hard[space] = GatherElement(assignment_permutation(gamma, backend=backend), n)
            couplings[space] = torch.as_tensor(gamma)
            costs[space] = float((gamma * cost).sum())
        t = TransformSet(hard)
        soft_t = TransformSet(soft)
        before, after = problem.objective(None), problem.objective(t)
        message = "; ".join(notes + [f"{transport} on {len(hard)} space(s); transport costs {costs}"])
        return Solution(t, before, after, iterations=1, status=status, history=[before, after], message=message,
                        extra={"couplings": couplings, "soft_transforms": soft_t, "transport_cost": costs,
                               "soft_objective": problem.objective(soft_t)})


register("optimal_transport", OptimalTransport)
