"""The approximate dimension of the matched weight clouds, space by space (Ferbach et al. 2024).

Each unit of a space is a point: the concatenation of every weight that unit owns along the
space's axis, over all tensors that meet the space (a row of ``W1``, its bias, a column of
``W2``, …). A space of ``n`` units is a cloud of ``n`` points. Ferbach et al. prove linear mode
connectivity after permutation from the convergence of such empirical measures in Wasserstein
distance, whose rate ``≈ n^{-1/d}`` is set by the dimension ``d`` of the support of the weight
distribution: the lower ``d`` (or the wider the layer), the closer two independently drawn clouds
can be matched. We estimate ``d`` by PCA — the number of principal directions holding a fraction
``energy`` of the cloud's centred sum of squares,

    d_ε(X) = min { k : Σ_{i≤k} σ_i² ≥ ε · Σ_i σ_i² },   σ the singular values of X − mean(X),

and report it for A, for aligned B and for the two matched clouds together, with ``n``, the rate
``n^{-1/d}`` and the relative matched distance ``‖X_A − X_B‖ / ‖X_A‖`` after alignment.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import torch

from symmetries.blocks import unit_rows
from symmetries.errors import GraphError
from symmetries.graph import WeightGraph

__all__ = ["MatchedDimension", "neuron_cloud", "approximate_dimension", "matched_dimension"]


@dataclass(frozen=True)
class MatchedDimension:
    """One space: ``n`` units; ``dim_a``, ``dim_b``, ``dim_joint`` the approximate dimensions of A's
    cloud, aligned B's and both matched clouds side by side (``[X_A, X_B]``, ``n × 2k``); ``rate`` is
    ``n^{-1/dim_joint}``; ``matched_distance`` is ``‖X_A − X_B‖_F / ‖X_A‖_F``."""
    space: str
    n: int
    features: int
    dim_a: int
    dim_b: int
    dim_joint: int
    rate: float
    matched_distance: float

    def as_dict(self) -> dict:
        return asdict(self)


def neuron_cloud(graph: WeightGraph, params: Mapping, space: str) -> torch.Tensor:
    """``n × k`` float64: row ``j`` holds every weight of unit ``j`` of ``space`` (each tensor that meets
    the space, its axis moved first and the rest — a repeated edge's copies too — flattened,
    concatenated; a tied axis counted once)."""
    n = graph.space(space).size
    rows, seen = [], set()
    for e in graph.edges_at(space):
        t = torch.as_tensor(params[e.parameter])
        if not t.is_floating_point():
            raise GraphError(f"parameter {e.parameter!r} meets space {space!r} but is a {t.dtype} tensor",
                             parameter=e.parameter, space=space)
        axis = e.axis % t.dim()
        start, stop = e.span(t.shape[axis])
        key = (e.parameter, axis, start, stop)
        if key in seen:
            continue
        seen.add(key)
        rows.append(unit_rows(t.detach(), e, n, axis).to(torch.float64, copy=True).cpu())
    if not rows:
        raise GraphError(f"no tensor meets space {space!r}: it has no weight cloud", space=space)
    return torch.cat(rows, dim=1)


def approximate_dimension(cloud: torch.Tensor, energy: float = 0.95) -> int:
    """``d_ε``: the number of principal directions of the centred ``cloud`` (rows = points) holding a
    fraction ``energy`` of its sum of squares (0 for a cloud that is a single point)."""
    if not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy must lie in (0, 1], got {energy!r}")
    x = cloud.to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    s2 = torch.linalg.svdvals(x) ** 2
    total = float(s2.sum())
    if total <= 0.0:
        return 0
    cumulative = torch.cumsum(s2, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor([float(energy) - 1e-12], dtype=torch.float64))[0]) + 1


def matched_dimension(graph: WeightGraph, params_a: Mapping, params_b: Mapping, *, energy: float = 0.95,
                      spaces=None) -> dict[str, MatchedDimension]:
    """Per space, the approximate dimensions of A's and (already aligned) B's weight clouds and of the
    matched pair, the Wasserstein rate ``n^{-1/d}`` and the matched distance (see the module docstring).
    ``params_b`` must be B after alignment (``symmetries.apply(graph, B, T)``): unit ``j`` of A is
    matched with unit ``j`` of B."""
    graph.validate(params_a)
    graph.validate(params_b)  # B aligned to A's widths: a narrower B is a ShapeMismatchError naming the space
    out = {}
    for name in spaces if spaces is not None else [s.name for s in graph.spaces()]:
        xa, xb = neuron_cloud(graph, params_a, name), neuron_cloud(graph, params_b, name)
        if xa.shape != xb.shape:
            raise GraphError(f"space {name!r}: A's cloud is {tuple(xa.shape)}, B's {tuple(xb.shape)}; align B to "
                             f"A's widths first", space=name)
        d_joint = approximate_dimension(torch.cat([xa, xb], dim=1), energy)
        n = xa.shape[0]
        norm_a = float(torch.linalg.norm(xa))
        out[name] = MatchedDimension(
            space=name, n=n, features=xa.shape[1], dim_a=approximate_dimension(xa, energy),
            dim_b=approximate_dimension(xb, energy), dim_joint=d_joint,
            rate=float(n ** (-1.0 / d_joint)) if d_joint else 0.0,
            matched_distance=float(torch.linalg.norm(xa - xb)) / norm_a if norm_a else 0.0)
    return out
