"""The marginalized loss barrier between two posteriors (Rossi et al., NeurIPS 2023).

``L̄(α) = E_{θ ~ q_α}[L(θ)]`` with ``q_α`` the linear interpolation of ``q_A`` and (aligned)
``q_B`` in means and standard deviations, estimated with ``S`` seeded Monte Carlo draws
(the same noise ``ε_s`` at every α, so the curve is smooth in α); barriers as in
:mod:`symmetries.landscape.barrier`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from symmetries.landscape.barrier import Curve, alpha_grid
from symmetries.landscape.evaluation import LossFn, evaluate
from symmetries.posteriors.gaussian import MeanField, interpolate_posteriors

__all__ = ["expected_loss", "marginalized_curve"]


def expected_loss(model: nn.Module, posterior: MeanField, data, *, samples: int = 16, seed: int = 0,
                  loss_fn: LossFn | None = None, batch_size: int = 1024, device=None) -> tuple[float, float]:
    """Monte Carlo ``(E_q[loss], E_q[accuracy])`` from ``samples`` draws seeded ``seed, seed+1, …``."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    losses, accs = [], []
    for s in range(samples):
        g = torch.Generator().manual_seed(int(seed) + s)
        ev = evaluate(model, data, posterior.sample(g), loss_fn=loss_fn, batch_size=batch_size, device=device)
        losses.append(ev.loss)
        accs.append(ev.accuracy)
    return float(np.mean(losses)), float(np.mean(accs))


def marginalized_curve(model: nn.Module, post_a: MeanField, post_b: MeanField, data, *,
                       alphas: int | Sequence[float] | None = None, samples: int = 16, seed: int = 0,
                       loss_fn: LossFn | None = None, batch_size: int = 1024, device=None, label: str = "",
                       progress: Callable[[int, int], None] | None = None) -> Curve:
    """Expected loss and accuracy along ``q_α`` (25 evenly spaced α by default); see the module docstring."""
    a = alpha_grid(alphas)
    losses, accs = [], []
    for i, alpha in enumerate(a):
        q = interpolate_posteriors(post_a, post_b, float(alpha))
        lo, ac = expected_loss(model, q, data, samples=samples, seed=seed, loss_fn=loss_fn,
                               batch_size=batch_size, device=device)
        losses.append(lo)
        accs.append(ac)
        if progress is not None:
            progress(i + 1, len(a))
    return Curve(a, np.asarray(losses), np.asarray(accs), label, {"samples": samples, "seed": seed})
