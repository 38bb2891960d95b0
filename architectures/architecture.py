"""An architecture: a weight graph together with the torch module it describes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from symmetries.graph import WeightGraph

__all__ = ["Architecture"]


@dataclass(frozen=True)
class Architecture:
    """What every builder returns: ``.graph`` and ``.module(seed=…)`` whose state-dict keys are
    exactly the graph's parameter names."""
    name: str
    graph: WeightGraph
    factory: Callable[[], nn.Module] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)

    def module(self, seed: int | None = None, *, dtype: torch.dtype | None = None,
               device: Any = None) -> nn.Module:
        """A fresh module; with ``seed`` its initial weights are reproducible (the global RNG is untouched)."""
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            m = self.factory()
        if dtype is not None or device is not None:
            m = m.to(device=device, dtype=dtype)
        return m
