"""Activations of a model at the spaces of its weight graph.

A space's activation is the output of the module that produces it: the module owning the
``out`` edges' weight (``layers.0.weight`` → module ``layers.0``), before any nonlinearity.
Channels are the last axis of ``nn.Linear`` outputs and axis 1 of ``nn.ConvNd`` outputs;
every sample (and spatial position) is one row of the ``(rows, channels)`` matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from symmetries.errors import GraphError
from symmetries.landscape.evaluation import _input_batches, _param_device, float_dtype

__all__ = ["Producer", "producers", "space_activations", "channel_stats"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Producer:
    """The module producing ``space``: its name, weight and bias keys, and its channel axis."""
    space: str
    module: str
    weight: str
    bias: str | None
    channel_axis: int


def producers(model: nn.Module, graph, spaces: Sequence[str] | None = None) -> dict[str, Producer]:
    """Locate the producing ``nn.Linear``/``nn.ConvNd`` of each space (a ``GraphError`` otherwise)."""
    names = [s.name for s in graph.spaces()] if spaces is None else list(spaces)
    out = {}
    for space in names:
        edges = [e for e in graph.edges_at(space) if e.role.value == "out"]
        if any(e.slice is not None for e in edges):
            raise GraphError(f"space {space!r} is a slice of a tensor axis; per-channel activations need a "
                             f"whole module output", space=space)
        if any(e.repeat is not None for e in edges):
            raise GraphError(f"space {space!r} is produced on a repeated axis (its units appear several times in "
                             f"the module's output); per-channel activations need one channel per unit", space=space)
        mods = {e.parameter.rsplit(".", 1)[0] for e in edges if "." in e.parameter}
        weights = [e for e in edges if e.parameter.endswith(".weight") and e.axis == 0]
        if len(mods) != 1 or len(weights) != 1:
            raise GraphError(f"space {space!r} is produced by {sorted(mods) or 'no module'}; activations need "
                             f"exactly one producing Linear/Conv module (with BatchNorm, reset its statistics "
                             f"instead)", space=space)
        mod_name = mods.pop()
        try:
            mod = model.get_submodule(mod_name)
        except AttributeError:
            raise GraphError(f"the model has no module {mod_name!r} producing space {space!r}", space=space) from None
        if isinstance(mod, nn.Linear):
            axis = -1
        elif isinstance(mod, _CONV):
            axis = 1
        else:
            raise GraphError(f"space {space!r} is produced by a {type(mod).__name__}; only Linear and Conv "
                             f"modules are supported", space=space)
        bias = f"{mod_name}.bias" if any(e.parameter == f"{mod_name}.bias" for e in edges) else None
        out[space] = Producer(space, mod_name, weights[0].parameter, bias, axis)
    return out


def _rows(y: torch.Tensor, axis: int) -> torch.Tensor:
    return y.movedim(axis, -1).reshape(-1, y.shape[axis])


@torch.no_grad()
def _run(model, graph, params, data, spaces, consume: Callable[[str, torch.Tensor], None], *,
         batch_size: int = 1024, device=None) -> None:
    prods = producers(model, graph, spaces)
    device = _param_device(model, params, device)
    params = None if params is None else {k: torch.as_tensor(v).to(device) for k, v in params.items()}
    hooks = []
    for space, p in prods.items():
        hooks.append(model.get_submodule(p.module).register_forward_hook(
            lambda m, i, o, s=space, ax=p.channel_axis: consume(s, _rows(o.detach(), ax))))
    dtype = float_dtype(model, params)
    was_training = model.training
    model.eval()
    try:
        for x, _ in _input_batches(data, batch_size, device, dtype):
            functional_call(model, params, (x,)) if params is not None else model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def space_activations(model: nn.Module, graph, data, params: Mapping | None = None, *,
                      spaces: Sequence[str] | None = None, max_rows: int | None = None,
                      batch_size: int = 1024, device=None) -> dict[str, torch.Tensor]:
    """``space → (rows, channels)`` activations (float64, CPU), at most ``max_rows`` rows each."""
    acc: dict[str, list[torch.Tensor]] = {}
    count: dict[str, int] = {}

    def consume(space, rows):
        have = count.get(space, 0)
        if max_rows is not None and have >= max_rows:
            return
        rows = rows if max_rows is None else rows[:max_rows - have]
        acc.setdefault(space, []).append(rows.to("cpu", torch.float64))
        count[space] = have + rows.shape[0]

    _run(model, graph, params, data, spaces, consume, batch_size=batch_size, device=device)
    return {s: torch.cat(v) for s, v in acc.items()}


def channel_stats(model: nn.Module, graph, data, params: Mapping | None = None, *,
                  spaces: Sequence[str] | None = None, batch_size: int = 1024,
                  device=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``space → (mean, std)`` per channel over all rows of the data (population std, float64)."""
    sums: dict[str, list] = {}

    def consume(space, rows):
        r = rows.to(torch.float64)
        s = sums.setdefault(space, [0, 0.0, 0.0])
        s[0] += r.shape[0]
        s[1] = s[1] + r.sum(0)
        s[2] = s[2] + (r * r).sum(0)

    _run(model, graph, params, data, spaces, consume, batch_size=batch_size, device=device)
    out = {}
    for space, (n, s1, s2) in sums.items():
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0.0)
        out[space] = (mean.cpu(), var.sqrt().cpu())
    return out
