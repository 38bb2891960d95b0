"""Mean-field variational inference with the reparameterisation trick (Blundell et al. 2015).

``q(θ) = N(μ, diag σ²)``, ``σ = softplus(ρ)``; each step draws ``θ = μ + σ ⊙ ε`` and
minimises ``E_batch[NLL(θ)] + β · KL(q ‖ N(0, σ_p² I)) / N`` with Adam, where
``KL = Σ log(σ_p/σ) + (σ² + μ²)/(2σ_p²) − ½`` and ``N`` is the number of training examples.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from solvers.losses import default_loss
from symmetries.posteriors.gaussian import MeanField

__all__ = ["train_mean_field", "kl_to_prior"]


def kl_to_prior(mean: Mapping, std: Mapping, prior_std: float) -> torch.Tensor:
    """``KL(N(μ, σ²) ‖ N(0, σ_p²))`` summed over every coordinate."""
    total = 0.0
    for k, mu in mean.items():
        s = std[k]
        total = total + (torch.log(prior_std / s) + (s ** 2 + mu ** 2) / (2 * prior_std ** 2) - 0.5).sum()
    return total


def train_mean_field(model: nn.Module, data: tuple, *, epochs: int = 100, lr: float = 1e-2, batch_size: int = 128,
                     prior_std: float = 1.0, init_std: float = 1e-3, kl_weight: float = 1.0, seed: int = 0,
                     init: Mapping[str, torch.Tensor] | None = None,
                     progress: Callable[[int, int, float], None] | None = None) -> MeanField:
    """Fit a mean-field posterior over ``model``'s parameters to ``data = (x, y)``.

    Means start from ``init`` (default: the model's own parameters), standard deviations at
    ``init_std``. Buffers (if any) are kept as point values with zero std. ``progress(epoch,
    epochs, loss)`` is called after each epoch. The model itself is not modified.
    """
    x, y = (torch.as_tensor(t) for t in data)
    n = x.shape[0]
    if n != y.shape[0] or n == 0:
        raise ValueError(f"need as many targets as inputs, got {n} and {y.shape[0]}")
    g = torch.Generator().manual_seed(int(seed))
    names = [k for k, _ in model.named_parameters()]
    start = dict(init) if init is not None else {k: v.detach() for k, v in model.named_parameters()}
    mu = {k: start[k].detach().clone().requires_grad_(True) for k in names}
    rho0 = float(torch.log(torch.expm1(torch.tensor(init_std))))
    rho = {k: torch.full_like(mu[k], rho0).requires_grad_(True) for k in names}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    dtype = next((v.dtype for v in mu.values() if v.is_floating_point()), torch.float32)
    opt = torch.optim.Adam(list(mu.values()) + list(rho.values()), lr=lr)
    nll_fn = default_loss(y)
    was_training = model.training
    model.train()
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=g)
            total = 0.0
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                std = {k: nn.functional.softplus(r) for k, r in rho.items()}
                theta = {k: mu[k] + std[k] * torch.randn(mu[k].shape, generator=g, dtype=mu[k].dtype)
                         for k in names}
                xb = x[idx].to(dtype) if x.is_floating_point() else x[idx]
                out = functional_call(model, {**theta, **buffers}, (xb,))
                loss = nll_fn(out, y[idx]) / len(idx) + kl_weight * kl_to_prior(mu, std, prior_std) / n
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            if progress is not None:
                progress(epoch + 1, epochs, total / n)
    finally:
        model.train(was_training)
    with torch.no_grad():
        mean = {k: mu[k].detach().clone() for k in names}
        std = {k: nn.functional.softplus(rho[k]).detach().clone() for k in names}
    for k, b in buffers.items():
        if b.is_floating_point():
            mean[k], std[k] = b, torch.zeros_like(b)
    return MeanField(mean, std)
