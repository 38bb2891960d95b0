"""Linear interpolation of parameter sets: ``θ(α) = (1 − α) θ_A + α θ_B``."""
from __future__ import annotations

from typing import Mapping

import torch

from symmetries._arrays import restore, to_tensor
from symmetries.errors import MissingParameterError, ShapeMismatchError, UnknownParameterError

__all__ = ["interpolate", "check_compatible", "DEFAULT_ALPHAS", "alphas"]

#: Number of evenly spaced α on ``[0, 1]`` used by default for curves and barriers.
DEFAULT_ALPHAS = 25


def alphas(num: int | None = None) -> torch.Tensor:
    """``num`` (default 25) evenly spaced α in ``[0, 1]``, endpoints included (float64)."""
    num = DEFAULT_ALPHAS if num is None else int(num)
    if num < 2:
        raise ValueError(f"an interpolation path needs at least 2 values of alpha, got {num}")
    return torch.linspace(0.0, 1.0, num, dtype=torch.float64)


def check_compatible(params_a: Mapping, params_b: Mapping, *, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise a typed error naming the tensor unless both sets have the same keys and shapes."""
    a_keys, b_keys = set(params_a), set(params_b)
    if a_keys - b_keys:
        k = sorted(a_keys - b_keys)[0]
        raise MissingParameterError(f"parameter {k!r} of {names[0]} is missing from {names[1]}", parameter=k)
    if b_keys - a_keys:
        k = sorted(b_keys - a_keys)[0]
        raise UnknownParameterError(f"parameter {k!r} of {names[1]} is not in {names[0]}", parameter=k)
    for k in params_a:
        sa, sb = tuple(params_a[k].shape), tuple(params_b[k].shape)
        if sa != sb:
            raise ShapeMismatchError(f"parameter {k!r} has shape {sa} in {names[0]} but {sb} in {names[1]}",
                                     parameter=k)


def interpolate(params_a: Mapping, params_b: Mapping, alpha: float) -> dict:
    """``(1 − α) θ_A + α θ_B`` tensor by tensor (a new dict; inputs untouched).

    Non-floating tensors (e.g. BatchNorm's ``num_batches_tracked``) are taken from the
    nearer endpoint. Works on torch tensors and numpy arrays.
    """
    check_compatible(params_a, params_b)
    alpha = float(alpha)
    out = {}
    for k, xa in params_a.items():
        a, was_numpy = to_tensor(xa)
        b, _ = to_tensor(params_b[k])
        if a.is_floating_point():
            b = b.to(device=a.device, dtype=a.dtype)
            t = torch.lerp(a, b, alpha) if alpha not in (0.0, 1.0) else (a if alpha == 0.0 else b).clone()
        else:
            t = (a if alpha < 0.5 else b.to(a.device)).clone()
        out[k] = restore(t, was_numpy)
    return out
