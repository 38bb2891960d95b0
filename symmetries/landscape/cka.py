"""Linear CKA (Kornblith et al. 2019) between two models' activations at each space.

``CKA(X, Y) = ‖Ỹᵀ X̃‖²_F / (‖X̃ᵀ X̃‖_F ‖Ỹᵀ Ỹ‖_F)`` with column-centred ``X̃, Ỹ`` (rows = examples).
Invariant to orthogonal maps and isotropic scaling of either side, so it compares
representations without aligning them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from symmetries._arrays import as_float64
from symmetries.landscape.activations import space_activations

__all__ = ["linear_cka", "cka_per_space"]


def linear_cka(x, y) -> float:
    """Linear CKA of activation matrices ``x (n, p)`` and ``y (n, q)`` with the same rows."""
    x, y = as_float64(x), as_float64(y)
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need two matrices with the same number of rows, got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    num = torch.linalg.matrix_norm(y.T @ x) ** 2
    den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(num / den) if float(den) > 0 else float("nan")


def cka_per_space(model: nn.Module, graph, params_a: Mapping, params_b: Mapping, data, *,
                  spaces: Sequence[str] | None = None, max_rows: int = 4096, batch_size: int = 1024,
                  device=None) -> dict[str, float]:
    """``space → linear CKA`` between the activations of ``model`` under ``θ_A`` and ``θ_B``."""
    kw = dict(spaces=spaces, max_rows=max_rows, batch_size=batch_size, device=device)
    acts_a = space_activations(model, graph, data, params_a, **kw)
    acts_b = space_activations(model, graph, data, params_b, **kw)
    return {s: linear_cka(acts_a[s], acts_b[s]) for s in acts_a}
