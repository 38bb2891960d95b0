"""An architecture: a weight graph, the torch module it describes and, from a builder, the inputs it takes."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from symmetries.errors import SymmetryError
from symmetries.graph import WeightGraph

__all__ = ["Architecture", "ExampleInputsError"]


class ExampleInputsError(SymmetryError, TypeError):
    """An architecture without example inputs, or a request they cannot meet; ``architecture`` names it."""

    def __init__(self, message: str, *, architecture: str | None = None):
        super().__init__(message)
        self.architecture = architecture


@dataclass(frozen=True)
class Architecture:
    """What every builder returns: ``.graph`` and ``.module(seed=…)`` whose state-dict keys are
    exactly the graph's parameter names. ``inputs(batch, generator, dtype, **sizes)``, set by the
    builders, draws inputs the module takes (see :meth:`example_inputs`); ``None`` where unknown."""
    name: str
    graph: WeightGraph
    factory: Callable[[], nn.Module] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)
    inputs: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

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

    def example_inputs(self, batch: int = 4, *, seed: int = 0, dtype: torch.dtype = torch.float64,
                       device: Any = None, **sizes) -> Any:
        """Seeded inputs the module takes: ``batch`` examples (a GCN: one graph), floating values of
        ``dtype`` (token ids stay integers), on ``device``. ``sizes`` are the builder's own knobs
        (``image_size`` for vgg/resnet, ``nodes`` for gcn); an :class:`ExampleInputsError` names an
        unknown one, or an architecture no builder made."""
        if self.inputs is None:
            raise ExampleInputsError(f"architecture {self.name!r} carries no example inputs (it was not made by a "
                                     f"builder that knows its input shape); pass them explicitly",
                                     architecture=self.name)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ExampleInputsError(f"batch must be a positive integer, got {batch!r}", architecture=self.name)
        knobs = [p for p in inspect.signature(self.inputs).parameters if p not in ("batch", "generator", "dtype")]
        unknown = sorted(set(sizes) - set(knobs))
        if unknown:
            raise ExampleInputsError(f"architecture {self.name!r} has no input size {', '.join(map(repr, unknown))}; "
                                     f"its sizes are {knobs or 'none'}", architecture=self.name)
        out = self.inputs(batch, torch.Generator().manual_seed(seed), dtype, **sizes)
        return _to(out, device)


def _to(x, device):
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return type(x)(_to(v, device) for v in x)


def randn(generator: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    """Standard normal values drawn in float64 (the same numbers in every dtype), cast to ``dtype``."""
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def images(channels: int, batch: int, generator: torch.Generator, dtype: torch.dtype,
           image_size: int = 8) -> torch.Tensor:
    """Images ``(batch, channels, image_size, image_size)`` for a convolutional builder."""
    return randn(generator, dtype, batch, channels, image_size, image_size)
