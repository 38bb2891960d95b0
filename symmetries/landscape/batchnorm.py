"""BatchNorm statistics reset: recompute the running mean and variance of an interpolated model.

Interpolating running statistics is wrong (the statistics of ``θ(α)``'s activations are not
the interpolated statistics); after resetting, each BatchNorm layer holds the exact
(cumulative-average) mean and variance of its input over ``data`` under ``θ(α)``.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from ..errors import UnknownParameterError
from .evaluation import _input_batches, _param_device, float_dtype

__all__ = ["reset_batchnorm", "batchnorm_adjust", "has_batchnorm"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reset_batchnorm(model: nn.Module, params: Mapping[str, torch.Tensor], data, *, batch_size: int = 1024,
                    device=None) -> dict[str, torch.Tensor]:
    """A new state dict: ``params`` with every BatchNorm's running statistics measured on ``data``.

    Only BatchNorm layers run in training mode (dropout stays off); ``model`` is not modified.
    """
    m = copy.deepcopy(model)
    keys = set(m.state_dict())
    unknown = sorted(set(params) - keys)
    if unknown:
        raise UnknownParameterError(f"parameter {unknown[0]!r} is not in the model's state dict",
                                    parameter=unknown[0])
    device = _param_device(model, params, device)
    dtype = float_dtype(model, params)
    m.to(device=device, dtype=dtype)   # the module takes the parameters' dtype, not the reverse
    m.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()}, strict=False)
    bns = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("the model has no BatchNorm layer to reset; use REPAIR (symmetries.landscape.repair)")
    m.eval()
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative moving average: exact mean over all batches
        b.train()
    for x, _ in _input_batches(data, batch_size, device, dtype):
        m(x)
    state = m.state_dict()
    return {k: state[k].detach().clone() for k in params} | {k: state[k].detach().clone() for k in state
                                                                if k not in params and "running" in k}


def batchnorm_adjust(model: nn.Module, data, **kwargs):
    """``adjust(params, α)`` for :func:`~symmetries.landscape.interpolation_curve`: BN reset at each α."""
    return lambda params, alpha: reset_batchnorm(model, params, data, **kwargs)
