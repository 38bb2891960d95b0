"""Aligning two mean-field Gaussian posteriors: weight matching on the W₂ graph.

``W₂²(q_A, T q_B) = ‖μ_A − T μ_B‖² + ‖σ_A − |T| σ_B‖²`` (diagonal Gaussians). For the maps that
keep the mean-field family — permutations, sign flips, signed permutations — ``|T| = T∘T``
entrywise, which is how role ``var`` acts. So ``W₂²`` is weight matching's ``J`` on a graph that
holds every mean ``μ[p]`` with its own edges and every standard deviation ``σ[p]`` (key
``p + STD_SUFFIX``) on the same axes in role ``var``; each space's subproblem is then the class's
exact oracle (LAP on ``C_μ + C_σ``; signed LAP on ``|C_μ| + C_σ``). Registered as
``posterior_matching``: ``solve("posterior_matching", graph, μ_A, μ_B, stds=(σ_A, σ_B))``.
Orthogonal or invertible maps make the covariance dense and are refused.
"""
from __future__ import annotations

from typing import Mapping

import torch

from symmetries.classes import HeadStructured, Permutation, SignedPermutation, SignFlip, Trivial
from symmetries.graph import WeightGraph
from symmetries.roles import Role

from solvers.algorithms.weight_matching import WeightMatching
from solvers.errors import SolverInputError
from solvers.problem import Problem, make_problem
from solvers.registry import Solver, register
from solvers.solution import Solution

__all__ = ["PosteriorMatching", "MEAN_FIELD_CLASSES", "STD_SUFFIX", "w2_graph", "w2_params"]

#: Classes whose elements map a mean-field Gaussian to a mean-field Gaussian.
MEAN_FIELD_CLASSES = (Trivial, Permutation, SignFlip, SignedPermutation)
#: Suffix of the standard-deviation tensors in the W₂ graph.
STD_SUFFIX = "::std"


def w2_graph(graph: WeightGraph, classes: Mapping) -> WeightGraph:
    """``graph`` with every parameter doubled: ``p`` (the mean, its own edges) and ``p::std`` (the same
    axes, slices and repeats in role ``var``, a tied axis once); each space admits only ``classes[space]``."""
    g = WeightGraph(f"W2[{graph.name}]")
    for s in graph.spaces():
        g.add_space(s.name, s.size, classes[s.name], activation=s.activation)
    for p in graph.parameters():
        g.add_parameter(p.name, p.shape, fixed=p.fixed)
        g.add_parameter(p.name + STD_SUFFIX, p.shape, fixed=p.fixed)
    for p in graph.parameters():
        seen = set()
        for e in graph.edges_of(p.name):
            g.connect(p.name, e.space, axis=e.axis, role=e.role, slice=e.slice, repeat=e.repeat)
            if (e.axis, e.slice) not in seen:
                seen.add((e.axis, e.slice))
                g.connect(p.name + STD_SUFFIX, e.space, axis=e.axis, role=Role.VAR, slice=e.slice, repeat=e.repeat)
    return g


def w2_params(means: Mapping[str, torch.Tensor], stds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Means under their names and standard deviations under ``name + STD_SUFFIX``."""
    return {**means, **{k + STD_SUFFIX: v for k, v in stds.items()}}


def _check_stds(stds, problem: Problem) -> tuple[dict, dict]:
    if not (isinstance(stds, (tuple, list)) and len(stds) == 2 and all(isinstance(s, Mapping) for s in stds)):
        raise SolverInputError("posterior_matching needs stds=(stds_a, stds_b): two mappings name → standard "
                               "deviation tensor, with the means' names and shapes")
    out = []
    for side, std, means in (("A", stds[0], problem.params_a), ("B", stds[1], problem.params_b)):
        if set(std) != set(means):
            missing = sorted(set(means) - set(std)) or sorted(set(std) - set(means))
            raise SolverInputError(f"stds of {side} must have the means' names; mismatch at {missing[0]!r}",
                                   parameter=missing[0])
        conv = {}
        for name, t in std.items():
            t = torch.as_tensor(t).to(device=problem.device, dtype=problem.dtype)
            if tuple(t.shape) != tuple(means[name].shape):
                raise SolverInputError(f"std {name!r} of {side} has shape {tuple(t.shape)}, its mean "
                                       f"{tuple(means[name].shape)}", parameter=name)
            if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
                raise SolverInputError(f"std {name!r} of {side} must be finite and non-negative", parameter=name)
            conv[name] = t
        out.append(conv)
    return out[0], out[1]


class PosteriorMatching(Solver):
    """The monomial ``T`` (one per space) minimising ``W₂²(q_A, T q_B)`` by weight matching on the W₂
    graph (see the module docstring)."""

    name = "posterior_matching"
    description = "mean-field Gaussian posteriors: W2^2 over means and stds, weight matching on the W2 graph"
    classes = MEAN_FIELD_CLASSES

    def solve(self, problem: Problem, *, stds, max_iter: int = 100, backend: str = "auto",
              start: str | None = None) -> Solution:
        """``stds=(σ_A, σ_B)``: the standard deviations (means are the problem's parameters);
        ``max_iter``, ``backend``, ``start``: weight matching's."""
        for space, cls in problem.classes.items():
            if isinstance(cls, HeadStructured) or problem.graph.space(space).head_group is not None:
                raise SolverInputError(f"space {space!r}: posterior alignment of attention heads is not supported",
                                       space=space, cls=cls)
        if problem.width_changing:
            raise SolverInputError("posterior_matching aligns posteriors of equal widths")
        std_a, std_b = _check_stds(stds, problem)
        graph = w2_graph(problem.graph, problem.classes)
        inner = make_problem(graph, w2_params(problem.params_a, std_a), w2_params(problem.params_b, std_b),
                             classes=problem.classes, init=problem.init, seed=problem.seed, device=problem.device,
                             dtype=problem.dtype)
        sol = WeightMatching().solve(inner, max_iter=max_iter, backend=backend, start=start)
        sol.objective = "W2^2 = sum_p ||mu_A[p] - (T mu_B)[p]||^2 + ||sigma_A[p] - (|T| sigma_B)[p]||^2"
        sol.graph = problem.graph_b
        sol.extra["w2_graph"] = graph
        return sol


register("posterior_matching", PosteriorMatching)
