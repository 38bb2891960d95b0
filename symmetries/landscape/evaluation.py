"""Loss and accuracy of a model with a given parameter set on a user's data.

``data`` is a pair ``(x, y)`` of tensors/arrays (evaluated in batches) or any iterable of
``(x, y)`` batches such as a ``torch.utils.data.DataLoader``. The model is never modified:
parameters are substituted with ``torch.func.functional_call``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

__all__ = ["Evaluation", "evaluate", "batches", "default_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """Mean loss, accuracy (``nan`` for non-class targets) and the number of examples."""
    loss: float
    accuracy: float
    n: int


def _tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x


def batches(data, batch_size: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches from a tensor pair or an iterable of pairs."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = _tensor(data[0]), _tensor(data[1])
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"inputs have {x.shape[0]} examples but targets have {y.shape[0]}")
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be an (x, y) pair or an iterable of (x, y) batches, got {type(data).__name__}")
    for item in data:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError("each batch must be an (x, y) pair")
        yield _tensor(item[0]), _tensor(item[1])


def default_loss(y: torch.Tensor) -> LossFn:
    """Summed cross-entropy for integer class targets, summed squared error otherwise."""
    if y.is_floating_point():
        return lambda out, t: ((out - t.reshape(out.shape)) ** 2).sum()
    return lambda out, t: nn.functional.cross_entropy(out, t, reduction="sum")


def float_dtype(model: nn.Module, params: Mapping | None) -> torch.dtype | None:
    """The dtype of the first floating tensor of ``params`` (else of the model), to cast inputs to."""
    for t in list((params or {}).values()) + list(model.parameters()):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.dtype
    return None


def _param_device(model: nn.Module, params: Mapping | None, device=None) -> torch.device:
    """``device`` if given, else that of the first tensor of ``params``, else the model's (else CPU)."""
    if device is not None:
        return torch.device(device)
    for t in (params or {}).values():
        if isinstance(t, torch.Tensor):
            return t.device
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _input_batches(data, batch_size: int, device: torch.device, dtype: torch.dtype | None):
    """:func:`batches` with the inputs moved to ``device`` and, when floating, cast to ``dtype``."""
    for x, y in batches(data, batch_size):
        x = x.to(device)
        yield (x.to(dtype) if dtype is not None and x.is_floating_point() else x), y


@torch.no_grad()
def evaluate(model: nn.Module, data, params: Mapping[str, torch.Tensor] | None = None, *,
             loss_fn: LossFn | None = None, batch_size: int = 1024, device=None) -> Evaluation:
    """Mean of ``loss_fn`` (a *summed* loss over a batch) and accuracy over ``data``, in eval mode.

    ``params`` (a state dict, possibly partial) replaces the model's own tensors for the call.
    """
    device = _param_device(model, params, device)
    if params is not None:
        params = {k: torch.as_tensor(v).to(device) for k, v in params.items()}
    dtype = float_dtype(model, params)
    was_training = model.training
    model.eval()
    total, correct, n = 0.0, 0, 0
    classify = True
    try:
        for x, y in _input_batches(data, batch_size, device, dtype):
            y = y.to(device)
            out = functional_call(model, params, (x,)) if params is not None else model(x)
            fn = loss_fn or default_loss(y)
            total += float(fn(out, y))
            n += y.shape[0]
            if y.is_floating_point() or out.dim() != 2:
                classify = False
            else:
                correct += int((out.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("data yielded no examples")
    return Evaluation(total / n, correct / n if classify else float("nan"), n)
