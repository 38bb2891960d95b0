"""The one default loss of the library (learned matching, the landscape, the posteriors), per token.

Class targets (an integer tensor of shape ``S``) need outputs of shape ``S + (C,)``: the classes on
the last axis, as ``nn.Linear`` writes them — ``(batch, classes)`` logits for ``(batch,)`` labels,
``(batch, time, vocab)`` logits for ``(batch, time)`` tokens (whatever ``time`` and ``vocab`` are,
equal included). The loss is the cross-entropy summed over every target position,
``Σ_i −log softmax(z_i)[y_i]``, and its count is the number of positions (tokens), so ``sum / count``
is the mean per-token cross-entropy; positions whose target is ``-100`` (PyTorch's ``ignore_index``:
padding) are neither summed nor counted. Floating targets (regression) give the squared error
summed over each example's outputs, ``Σ_n ‖f(x_n) − y_n‖²``, counted per example. Any other pairing
of shapes is a :class:`TargetShapeError` naming both — never a guess at the class axis.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
from torch.nn import functional as F

from symmetries.errors import SymmetryError

__all__ = ["IGNORE_INDEX", "LossFn", "TargetShapeError", "class_logits", "summed_loss", "mean_loss",
           "token_accuracy", "default_loss"]

#: Targets equal to this (PyTorch's ``ignore_index``) are padding: neither summed nor counted.
IGNORE_INDEX = -100

#: ``loss_fn(outputs, targets)`` → a summed loss (a scalar tensor) or a pair ``(sum, count)``.
LossFn = Callable[[torch.Tensor, torch.Tensor], Union[torch.Tensor, tuple]]


class TargetShapeError(SymmetryError, ValueError):
    """Targets whose shape cannot be matched with the model's outputs; names both shapes."""

    def __init__(self, message: str, *, output_shape: tuple, target_shape: tuple):
        super().__init__(message)
        self.output_shape = tuple(output_shape)
        self.target_shape = tuple(target_shape)


def _shapes(out: torch.Tensor, y: torch.Tensor) -> str:
    return f"outputs of shape {tuple(out.shape)} and targets of shape {tuple(y.shape)}"


def class_logits(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C)`` logits and ``(N,)`` class targets from outputs ``S + (C,)`` and targets ``S``
    (``N = prod(S)``); a :class:`TargetShapeError` for any other pair of shapes."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TargetShapeError(f"class targets must be integers, got {y.dtype} ({_shapes(out, y)})",
                               output_shape=out.shape, target_shape=y.shape)
    if out.dim() == y.dim() + 1 and out.dim() >= 2 and tuple(out.shape[:-1]) == tuple(y.shape):
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)
    raise TargetShapeError(
        f"cannot match {_shapes(out, y)}: class targets of shape S need outputs of shape S + (classes,), "
        f"the classes on the last axis — (batch,) labels with (batch, classes) logits, (batch, time) tokens "
        f"with (batch, time, vocab) logits; pass a loss_fn for another layout",
        output_shape=out.shape, target_shape=y.shape)


def summed_loss(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(sum, count)``: cross-entropy summed over the target tokens and their number, or for
    floating targets the squared error summed over every example and the number of examples."""
    if y.is_floating_point():
        if out.dim() == 0 or y.dim() == 0 or out.numel() != y.numel() or out.shape[0] != y.shape[0]:
            raise TargetShapeError(f"cannot match {_shapes(out, y)}: regression targets need one value per "
                                   f"output (integer targets are read as classes)",
                                   output_shape=out.shape, target_shape=y.shape)
        return ((out - y.reshape(out.shape).to(out)) ** 2).sum(), int(out.shape[0])
    logits, t = class_logits(out, y)
    t = t.to(device=logits.device, dtype=torch.long)
    total = F.cross_entropy(logits, t, reduction="sum", ignore_index=IGNORE_INDEX)
    return total, int((t != IGNORE_INDEX).sum())


def mean_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum / count`` of :func:`summed_loss`: the mean per-token cross-entropy (differentiable;
    ``nan`` when every target is padding), or the mean per-example squared error."""
    total, count = summed_loss(out, y)
    return total / count if count else total * float("nan")


def token_accuracy(out: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """``(correct, count)``: target tokens where the arg-max of the last axis is the target, and
    the number of target tokens (padding excluded)."""
    logits, t = class_logits(out, y)
    t = t.to(logits.device)
    keep = t != IGNORE_INDEX
    return int((logits.argmax(dim=-1)[keep] == t[keep]).sum()), int(keep.sum())


def default_loss(y: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The summed part of :func:`summed_loss` as ``(outputs, targets) → scalar`` (``y`` is kept for
    callers that pick the loss from their targets; the kind of loss follows the targets of each call)."""
    del y
    return lambda out, t: summed_loss(out, t)[0]
