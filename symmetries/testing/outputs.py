"""Running a model on substituted parameters and comparing its outputs, for invariance checks.

:class:`ModelRunner` calls a private eval-mode copy of a module with a parameter dict (one value
per tied group: tied state-dict keys are one tensor in the module); :func:`output_difference` is
``max |f(T·θ) − f(θ)|`` over the entries finite in both, with non-finite entries (masked logits)
compared by position and value; :func:`output_scale` is ``max |f(θ)|`` over the finite entries.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

__all__ = ["ModelRunner", "output_difference", "output_scale", "cast_inputs", "tied_groups", "float_dtype"]


def _as_args(inputs) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _leaves(y) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, Mapping):
        return [t for v in y.values() for t in _leaves(v)]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in _leaves(v)]
    return []


def float_dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.state_dict().values() if p.is_floating_point()), torch.get_default_dtype())


def cast_inputs(inputs, dtype: torch.dtype) -> tuple:
    """The positional inputs as a tuple, floating tensors cast to ``dtype`` (others as given)."""
    return tuple(x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in _as_args(inputs))


def tied_groups(module: nn.Module) -> list[list[str]]:
    """State-dict keys that name one tensor in ``module`` (tied parameters or buffers), in groups of ≥ 2."""
    groups: dict[int, list[str]] = {}
    keys = set(module.state_dict())
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    for name, t in named:
        if name in keys and t is not None:
            groups.setdefault(id(t), [])
            if name not in groups[id(t)]:
                groups[id(t)].append(name)
    return [g for g in groups.values() if len(g) > 1]


class ModelRunner:
    """A private eval-mode copy of the model, called with substituted parameters (one value per
    tied group: what ``load_state_dict`` would leave in the module)."""

    def __init__(self, model: nn.Module, inputs, dtype: torch.dtype | None):
        self.model = copy.deepcopy(model).eval()
        if dtype is not None:
            self.model.to(dtype=dtype)
        self.dtype = dtype or float_dtype(self.model)
        self.args = cast_inputs(inputs, self.dtype)
        self.tied = tied_groups(self.model)
        self._drop = {name for group in self.tied for name in group[1:]}
        self.calls = 0

    def untie(self, params: Mapping[str, torch.Tensor], rtol: float, kappa: float) -> str:
        """Why ``params`` cannot be loaded into the module (tied keys whose values differ), or ``""``."""
        for group in self.tied:
            first = params.get(group[0])
            for name in group[1:]:
                other = params.get(name)
                if first is None or other is None:
                    continue
                if first.shape != other.shape:
                    return (f"tied parameters {group[0]!r} and {name!r} (one tensor in the module) get shapes "
                            f"{tuple(first.shape)} and {tuple(other.shape)} under this transform")
                diff = float((first.double() - other.double()).abs().max()) if first.numel() else 0.0
                size = float(first.double().abs().max()) if first.numel() else 0.0
                if not diff <= rtol * kappa * size:
                    return (f"tied parameters {group[0]!r} and {name!r} (one tensor in the module) get different "
                            f"values under this transform (by {diff:.2g}): the transformed state dict cannot be "
                            f"loaded into the module")
        return ""

    def __call__(self, params: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        self.calls += 1
        values = {k: v for k, v in params.items() if k not in self._drop}
        with torch.no_grad():
            out = torch.func.functional_call(self.model, values, self.args, strict=False)
        leaves = _leaves(out)
        if not leaves:
            raise TypeError(f"the model returned {type(out).__name__}, which holds no tensors to compare")
        return leaves


def _inexact(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def output_difference(y: list[torch.Tensor], y2: list[torch.Tensor]) -> tuple[float, str]:
    """``(max |y2 − y| over entries finite in both, note)``; ``(inf, why)`` when the output's structure,
    an exact (integer) entry, or the non-finite pattern changed: a ``±inf`` or NaN of ``y`` must be
    the same ``±inf`` or a NaN at the same place in ``y2``, and a finite entry must stay finite."""
    if len(y) != len(y2) or any(a.shape != b.shape for a, b in zip(y, y2)):
        return float("inf"), "the output's structure or shape changed"
    err = 0.0
    for i, (a, b) in enumerate(zip(y, y2)):
        if not _inexact(a):
            if not torch.equal(a, b):
                return float("inf"), f"an exact (non-floating) output {i} changed"
            continue
        if not a.numel():
            continue
        fa, fb = torch.isfinite(a), torch.isfinite(b)
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        bad = (fa != fb) | (~fa & ~same)
        if bool(bad.any()):
            idx = tuple(int(k) for k in torch.nonzero(bad)[0])
            where = f"output {i} entry {list(idx)}" if len(y) > 1 else f"output entry {list(idx)}"
            kind = "was finite" if bool(fa[idx]) else "was non-finite"
            return float("inf"), (f"{where} {kind} for θ ({a[idx].item()}) and is {b[idx].item()} after the "
                                  f"transform (non-finite entries are compared by position and value)")
        both = fa & fb
        if bool(both.any()):
            wide = torch.complex128 if a.is_complex() else torch.float64
            err = max(err, float((a[both].to(wide) - b[both].to(wide)).abs().max()))
    return err, ""


def output_scale(y: list[torch.Tensor]) -> float:
    """``max |y|`` over the finite entries; ``ValueError`` when floating entries exist but none is finite."""
    vals, inexact = [], False
    for t in y:
        if _inexact(t) and t.numel():
            inexact = True
            finite = t[torch.isfinite(t)]
            if finite.numel():
                vals.append(float(finite.abs().max()))
    if inexact and not vals:
        raise ValueError("the model's output f(θ) has no finite entries (every entry is ±inf or NaN), so no "
                         "invariance can be checked; check the model and its example inputs")
    return max(vals, default=0.0)
