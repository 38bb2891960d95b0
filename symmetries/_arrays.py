"""Conversions between numpy arrays and torch tensors (internal)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

Array = Any  # numpy.ndarray | torch.Tensor


def to_tensor(x: Array) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``; numpy input is wrapped without a copy."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x), True
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def restore(t: torch.Tensor, was_numpy: bool) -> Array:
    return t.numpy() if was_numpy else t


def as_float64(x: Array) -> torch.Tensor:
    """A CPU float64 tensor holding ``x`` (matrix input of membership tests and oracles)."""
    if hasattr(x, "as_matrix"):
        x = x.as_matrix()
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().to(device="cpu", dtype=torch.float64)


def like(t: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor | None:
    """``t`` moved to ``ref``'s device and, for floating data, its dtype."""
    if t is None:
        return None
    if t.is_floating_point():
        return t.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else t.dtype)
    return t.to(device=ref.device)


def rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
