"""Loss and accuracy of a model with a given parameter set on a user's data.

``data`` is a pair ``(x, y)`` of tensors/arrays (evaluated in batches) or any iterable of
``(x, y)`` batches such as a ``torch.utils.data.DataLoader``. The model is never modified:
parameters are substituted with ``torch.func.functional_call``.

The loss is ``Σ_batches sum / Σ_batches count`` where each batch's ``loss_fn(outputs, targets)``
returns ``(sum, count)`` or a scalar sum (counted as the batch's examples). The default,
:func:`solvers.losses.summed_loss`, counts class targets per token (``(batch, time, vocab)``
outputs with ``(batch, time)`` targets: the mean per-token cross-entropy) and regression per example.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from solvers.losses import IGNORE_INDEX, LossFn, TargetShapeError, default_loss, summed_loss, token_accuracy

__all__ = ["Evaluation", "evaluate", "batches", "default_loss", "LossFn"]


@dataclass(frozen=True)
class Evaluation:
    """Mean loss (per counted unit), accuracy (per target token; ``nan`` for non-class targets),
    the number of examples ``n`` and the number of units ``count`` the loss is averaged over."""
    loss: float
    accuracy: float
    n: int
    count: int | float


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


def _sum_count(result, examples: int) -> tuple[float, float]:
    """A loss function's ``(sum, count)``, or its scalar sum counted as ``examples``."""
    if isinstance(result, (tuple, list)):
        if len(result) != 2:
            raise TypeError(f"loss_fn must return a scalar sum or a pair (sum, count), got {len(result)} values")
        total, count = float(result[0]), float(result[1])
        if not count >= 0:
            raise ValueError(f"loss_fn returned a count of {count}; counts must be non-negative")
        return total, count
    return float(result), float(examples)


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
    """Mean loss ``Σ sum / Σ count`` and token accuracy over ``data``, in eval mode.

    ``loss_fn(outputs, targets)`` returns, per batch, a pair ``(sum, count)`` — a loss summed over
    ``count`` units (tokens, examples; a mean ``m`` over ``k`` units is ``(m * k, k)``) — or a scalar
    sum counted as the batch's examples. The default (:func:`solvers.losses.summed_loss`) is the
    per-token cross-entropy for class targets (outputs ``targets.shape + (classes,)``; any other
    shape is a :class:`~solvers.losses.TargetShapeError`) and the per-example squared error for
    floating targets. Accuracy is the fraction of target tokens (padding ``-100`` excluded) whose
    arg-max over the last axis is right; ``nan`` for floating targets, or when a custom
    ``loss_fn`` reads class targets in another layout. ``params`` (a state dict, possibly partial)
    replaces the model's own tensors for the call.
    """
    device = _param_device(model, params, device)
    if params is not None:
        params = {k: torch.as_tensor(v).to(device) for k, v in params.items()}
    dtype = float_dtype(model, params)
    was_training = model.training
    model.eval()
    total, count, correct, tokens, n = 0.0, 0.0, 0, 0, 0
    classify = True
    try:
        for x, y in _input_batches(data, batch_size, device, dtype):
            y = y.to(device)
            out = functional_call(model, params, (x,)) if params is not None else model(x)
            s, c = _sum_count((loss_fn or summed_loss)(out, y), y.shape[0])
            total, count, n = total + s, count + c, n + y.shape[0]
            if classify and not y.is_floating_point():
                try:
                    right, k = token_accuracy(out, y)
                    correct, tokens = correct + right, tokens + k
                except TargetShapeError:   # a custom loss_fn's own layout: no accuracy
                    classify = False
            else:
                classify = False
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("data yielded no examples")
    if count == 0:
        raise ValueError(f"the loss counted no units on {n} examples (every target is padding {IGNORE_INDEX}?)")
    count = int(count) if float(count).is_integer() else count
    return Evaluation(total / count, correct / tokens if classify and tokens else float("nan"), n, count)
