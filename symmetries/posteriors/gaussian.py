"""Mean-field Gaussian posteriors ``q(θ) = Π_k N(θ_k; μ_k, σ_k²)`` over a parameter set.

A monomial map ``T`` (``T[j, π(j)] = s_j``) sends ``θ ~ q`` to ``Tθ ~ N(Tμ, diag(|T|σ)²)``:
means transform like weights, standard deviations with ``|T|`` — the family is kept. Two
posteriors interpolate linearly in means and in standard deviations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from symmetries.action import apply
from symmetries.elements import GatherElement
from symmetries.errors import ShapeMismatchError
from symmetries.landscape.interpolation import check_compatible, interpolate
from symmetries.transforms import TransformSet

__all__ = ["MeanField", "interpolate_posteriors", "abs_transforms"]


@dataclass(frozen=True)
class MeanField:
    """Means and standard deviations (both ``name → tensor``, same keys and shapes, ``σ ≥ 0``)."""
    mean: dict
    std: dict

    def __post_init__(self):
        check_compatible(self.mean, self.std, names=("mean", "std"))
        for k, s in self.std.items():
            if not torch.as_tensor(s).is_floating_point():
                raise ShapeMismatchError(f"std of {k!r} must be floating", parameter=k)
            if bool((torch.as_tensor(s) < 0).any()):
                raise ValueError(f"std of {k!r} has negative entries")

    @classmethod
    def from_log_variance(cls, mean: Mapping, log_var: Mapping) -> "MeanField":
        """From means and log-variances ``log σ²``."""
        return cls(dict(mean), {k: torch.exp(0.5 * torch.as_tensor(v)) for k, v in log_var.items()})

    def sample(self, generator: torch.Generator | None = None) -> dict:
        """One draw ``μ + σ ⊙ ε``, ``ε ~ N(0, I)`` from ``generator``."""
        out = {}
        for k, mu in self.mean.items():
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device="cpu").to(mu.device)
            out[k] = mu + self.std[k].to(mu) * eps
        return out

    def transform(self, graph, transforms: Mapping) -> "MeanField":
        """``(Tμ, |T|σ)`` for monomial transforms (a new posterior)."""
        return MeanField(apply(graph, self.mean, transforms), apply(graph, self.std, abs_transforms(transforms)))

    def interpolate(self, other: "MeanField", alpha: float) -> "MeanField":
        return interpolate_posteriors(self, other, alpha)

    def to(self, device=None, dtype=None) -> "MeanField":
        return MeanField({k: v.to(device=device, dtype=dtype) for k, v in self.mean.items()},
                         {k: v.to(device=device, dtype=dtype) for k, v in self.std.items()})


def abs_transforms(transforms: Mapping) -> TransformSet:
    """``|T|`` space by space for index-vector (monomial) elements."""
    out = {}
    for space, el in transforms.items():
        if not isinstance(el, GatherElement):
            raise TypeError(f"transform at space {space!r} is a {type(el).__name__}; a mean-field posterior "
                            f"takes monomial (index-vector) maps only")
        a = None if el.out_scale is None else el.out_scale.abs()
        b = None if el.in_scale is None else el.in_scale.abs()
        out[space] = GatherElement(el.index, el.n, a, b)
    return TransformSet(out)


def interpolate_posteriors(a: MeanField, b: MeanField, alpha: float) -> MeanField:
    """``N((1−α)μ_A + αμ_B, ((1−α)σ_A + ασ_B)²)`` coordinate-wise."""
    return MeanField(interpolate(a.mean, b.mean, alpha), interpolate(a.std, b.std, alpha))
