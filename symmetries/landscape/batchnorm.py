"""BatchNorm statistics reset: recompute the running mean and variance of an interpolated model.

Interpolating running statistics is wrong (the statistics of ``θ(α)``'s activations are not
the interpolated statistics). After :func:`reset_batchnorm` each BatchNorm layer holds the
exact mean and unbiased variance (what ``running_var`` stores) of its input over all of
``data`` when the model runs in eval mode with the statistics already reset upstream —
whatever the batching. The statistics are accumulated per channel with forward hooks (count,
mean and sum of squared deviations, merged batch by batch in float64), one layer at a time in
the order the forward pass reaches them, since a layer's input depends on the statistics of
the layers before it: one pass over ``data`` per BatchNorm layer, each stopped once that
layer has seen the batch.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Mapping

import torch
from torch import nn

from symmetries.errors import UnknownParameterError
from symmetries.landscape.evaluation import _input_batches, _param_device, float_dtype

__all__ = ["reset_batchnorm", "batchnorm_adjust", "has_batchnorm"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged across batches (Chan et al.)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        c = x.shape[1]           # BatchNorm's channel axis: (N, C) or (N, C, *spatial)
        rows = x.movedim(1, 0).reshape(c, -1).to(torch.float64)
        n = rows.shape[1]
        if n == 0:
            return
        mean = rows.mean(1)
        m2 = ((rows - mean[:, None]) ** 2).sum(1)
        if self.n == 0:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total


class _Stop(Exception):
    """Ends a forward pass once the layer being measured has seen the batch."""


def _reiterable(data):
    """``data`` if it can be iterated more than once (a pair, a list, a DataLoader); a one-shot
    iterator (a generator of batches) is read into a list."""
    return list(data) if isinstance(data, Iterator) else data


@torch.no_grad()
def reset_batchnorm(model: nn.Module, params: Mapping[str, torch.Tensor], data, *, batch_size: int = 1024,
                    device=None) -> dict[str, torch.Tensor]:
    """A new state dict: ``params`` with every BatchNorm's running statistics measured on ``data``.

    ``running_mean`` and ``running_var`` become the exact mean and unbiased variance of the layer's
    input over all of ``data`` in eval mode (dropout off, upstream BatchNorm layers already reset),
    for any batch sizes; ``num_batches_tracked`` the number of batches. ``model`` is not modified.
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
    bns = {name: b for name, b in m.named_modules()
           if isinstance(b, nn.modules.batchnorm._BatchNorm) and b.track_running_stats}
    if not bns:
        raise ValueError("the model has no BatchNorm layer to reset; use REPAIR (symmetries.landscape.repair)")
    data = _reiterable(data)
    m.eval()
    order: list[str] = []          # the layers in the order the forward pass first reaches them
    calls: dict[str, int] = {}     # calls per forward pass (a layer may be used more than once)
    state = {"first": True, "target": None, "seen": 0}
    moments: dict[str, _Moments] = {}

    def hook(name):
        def pre(module, inputs):
            if state["first"]:
                if name not in calls:
                    order.append(name)
                    calls[name] = 0
                calls[name] += 1
            if state["target"] is None:        # first pass: every layer (only the first one is final)
                moments.setdefault(name, _Moments()).add(inputs[0].detach())
            elif name == state["target"]:
                moments[name].add(inputs[0].detach())
                state["seen"] += 1
                if state["seen"] == calls[name]:
                    raise _Stop
        return pre

    def run_pass() -> int:
        batches = 0
        for x, _ in _input_batches(data, batch_size, device, dtype):
            state["seen"] = 0
            try:
                m(x)
            except _Stop:
                pass
            state["first"] = False
            batches += 1
        if batches == 0:
            raise ValueError("data yielded no batches to measure BatchNorm statistics on")
        return batches

    handles = [b.register_forward_pre_hook(hook(name)) for name, b in bns.items()]
    try:
        batches = run_pass()
        for i, name in enumerate(order):
            if i > 0:              # layer i's input depends on the layers before it: measure it again
                state["target"], moments[name] = name, _Moments()
                run_pass()
            _set_statistics(bns[name], moments[name], batches, name)
    finally:
        for h in handles:
            h.remove()
    out = m.state_dict()
    return {k: out[k].detach().clone() for k in params} | {k: out[k].detach().clone() for k in out
                                                          if k not in params and "running" in k}


def _set_statistics(b: nn.modules.batchnorm._BatchNorm, mom: _Moments, batches: int, name: str) -> None:
    if mom.n < 2:
        raise ValueError(f"BatchNorm {name!r} saw {mom.n} value(s) per channel; its unbiased variance needs at "
                         f"least 2")
    b.running_mean.copy_(mom.mean.to(b.running_mean))
    b.running_var.copy_((mom.m2 / (mom.n - 1)).to(b.running_var))   # running_var holds the unbiased variance
    if b.num_batches_tracked is not None:
        b.num_batches_tracked.fill_(batches)


def batchnorm_adjust(model: nn.Module, data, *, batch_size: int = 1024, device=None):
    """``adjust(params, α)`` for :func:`~symmetries.landscape.interpolation_curve`: reset BN statistics."""
    data = _reiterable(data)
    return lambda params, alpha: reset_batchnorm(model, params, data, batch_size=batch_size, device=device)
