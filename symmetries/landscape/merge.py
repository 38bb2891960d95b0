"""MergeMany (Git Re-Basin, Algorithm 3): merge several models into one basin.

Repeat until no transform changes: for each model ``i`` (random order from a seed), align
the *original* ``θ_i`` to the mean of the others' aligned parameters,
``T_i = argmin_T ‖mean_{j≠i} T_j θ_j − T θ_i‖``, with a solver; the merge is the mean of
the aligned models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from symmetries.action import apply
from symmetries.transforms import TransformSet, identity_transforms
from symmetries.landscape.distance import l2_distance
from symmetries.landscape.interpolation import check_compatible

__all__ = ["merge_many", "Merge", "mean_params"]

Solve = Callable[[object, Mapping, Mapping], TransformSet]


def mean_params(params: Sequence[Mapping]) -> dict:
    """Tensor-wise mean of parameter sets (non-floating tensors from the first)."""
    if not params:
        raise ValueError("need at least one parameter set")
    for p in params[1:]:
        check_compatible(params[0], p, names=("model 0", "another model"))
    return {k: (torch.stack([torch.as_tensor(p[k]) for p in params]).mean(0)
                if torch.as_tensor(v).is_floating_point() else v) for k, v in params[0].items()}


@dataclass(frozen=True)
class Merge:
    """The merged parameters, each model aligned, its transform, and the rounds it took."""
    params: dict
    aligned: list
    transforms: list
    rounds: int
    converged: bool
    spread: list  # mean distance of the aligned models to their mean, after each round


def _solver(method: str, arch, data, seed: int, options: dict) -> Solve:
    """``solvers.solve(method, arch, target, params, data=…, seed=…)`` as a :data:`Solve`."""
    import solvers

    batches = None if data is None else solvers.as_batches(data, seed=seed)

    def solve(graph, a, b):
        return solvers.solve(method, arch, a, b, data=batches, seed=seed, **options).transforms
    return solve


def _same(s: TransformSet, t: TransformSet) -> bool:
    return set(s) == set(t) and all(s[k].allclose(t[k], atol=1e-9) for k in s)


def merge_many(arch, models: Sequence[Mapping], *, method: str = "weight_matching", max_rounds: int = 20,
               seed: int = 0, data=None, solve: Solve | None = None, **options) -> Merge:
    """Align ``models`` into one basin and average them (MergeMany).

    ``arch`` is an ``architectures.Architecture`` or its ``WeightGraph``. By default each step runs
    solver ``method`` through ``solvers.solve`` (with ``seed``, ``data`` for data-driven solvers such
    as activation matching — these need the Architecture — and, unless ``classes=`` is given, the
    standard class the solver searches at each space, :func:`symmetries.resolve_classes`);
    other ``options`` go to the solver. ``solve(graph, target, params) → TransformSet`` replaces it.
    """
    graph = getattr(arch, "graph", arch)
    if len(models) < 2:
        raise ValueError(f"MergeMany needs at least two models, got {len(models)}")
    for p in models:
        graph.validate(p)
    solve = solve or _solver(method, arch, data, seed, options)
    rng = np.random.default_rng(seed)
    k = len(models)
    transforms = [identity_transforms(graph) for _ in range(k)]
    aligned = [dict(p) for p in models]
    spread, changed, rounds = [], True, 0
    while changed and rounds < max_rounds:
        changed, rounds = False, rounds + 1
        for i in rng.permutation(k):
            target = mean_params([aligned[j] for j in range(k) if j != i])
            t = solve(graph, target, models[i])
            if not _same(t, transforms[i]):
                changed = True
            transforms[i], aligned[i] = t, apply(graph, models[i], t)
        merged = mean_params(aligned)
        spread.append(float(np.mean([l2_distance(merged, a) for a in aligned])))
    return Merge(mean_params(aligned), aligned, transforms, rounds, not changed, spread)
