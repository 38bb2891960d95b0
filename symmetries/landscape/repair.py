"""REPAIR (Jordan et al., ICLR 2023) for models without BatchNorm.

At every space (in forward order) the interpolated model's channels are rescaled to the
interpolated endpoint statistics, ``μ_t = (1−α)μ_A + αμ_B``, ``σ_t = (1−α)σ_A + ασ_B``:
``y ← s (y − μ) + μ_t`` with ``s = σ_t / σ``, folded into the producing layer as
``W[j] ← s_j W[j]``, ``b_j ← s_j (b_j − μ_j) + μ_t,j``. Statistics are measured on data.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from symmetries.errors import GraphError
from symmetries.landscape.activations import channel_stats, producers
from symmetries.landscape.interpolation import check_compatible, interpolate

__all__ = ["repair", "repair_adjust"]


def repair(model: nn.Module, graph, params_a: Mapping, params_b: Mapping, alpha: float, data, *,
           spaces: Sequence[str] | None = None, eps: float = 1e-9, batch_size: int = 1024, device=None,
           endpoint_stats: tuple[dict, dict] | None = None) -> dict[str, torch.Tensor]:
    """The REPAIRed interpolation ``θ(α)`` (a new state dict; inputs untouched).

    ``params_b`` should already be aligned to ``params_a``. ``spaces`` defaults to every space of
    the graph; each must be produced by one ``nn.Linear``/``nn.ConvNd`` with a bias. A channel that
    is constant on the data (``σ ≤ eps · max σ``, e.g. a dead ReLU) is only shifted to ``μ_t``.
    """
    check_compatible(params_a, params_b)
    prods = producers(model, graph, spaces)
    for space, p in prods.items():
        if p.bias is None:
            raise GraphError(f"REPAIR folds a shift into the bias of {p.module!r}, which space {space!r} lacks",
                             space=space)
    names = list(prods)
    kw = dict(spaces=names, batch_size=batch_size, device=device)
    stats_a, stats_b = endpoint_stats or (channel_stats(model, graph, data, params_a, **kw),
                                          channel_stats(model, graph, data, params_b, **kw))
    params = interpolate(params_a, params_b, alpha)
    for space in stats_a:  # forward order: a correction changes the statistics downstream
        (mu_a, sd_a), (mu_b, sd_b) = stats_a[space], stats_b[space]
        mu_t, sd_t = (1 - alpha) * mu_a + alpha * mu_b, (1 - alpha) * sd_a + alpha * sd_b
        mu, sd = channel_stats(model, graph, data, params, **{**kw, "spaces": [space]})[space]
        live = sd > eps * max(1.0, float(sd.max()))  # a constant channel keeps its rows, only shifts
        s = torch.where(live, sd_t / torch.where(live, sd, torch.ones_like(sd)), torch.ones_like(sd))
        p = prods[space]
        w, b = params[p.weight], params[p.bias]
        sw = s.to(w).reshape((-1,) + (1,) * (w.dim() - 1))
        params[p.weight] = w * sw
        params[p.bias] = (s * (b.to(s) - mu) + mu_t).to(b)
    return params


def repair_adjust(model: nn.Module, graph, params_a: Mapping, params_b: Mapping, data, **kwargs):
    """``adjust(params, α)`` for :func:`~symmetries.landscape.interpolation_curve` (endpoint statistics
    measured once)."""
    spaces = kwargs.get("spaces")
    kw = dict(spaces=list(producers(model, graph, spaces)), batch_size=kwargs.get("batch_size", 1024),
              device=kwargs.get("device"))
    stats = (channel_stats(model, graph, data, params_a, **kw), channel_stats(model, graph, data, params_b, **kw))
    return lambda params, alpha: repair(model, graph, params_a, params_b, alpha, data, endpoint_stats=stats,
                                        **kwargs)
