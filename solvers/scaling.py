"""Closed-form positive scalings: the exact per-unit (or per-pair) optimal scale.

For one unit pair (A's row ``j``, B's row ``i``) and a scale ``c > 0`` acting in each role
(``out``: ``c·b``; ``in``: ``b/c``; ``var``: ``c²·b``) the local loss is, up to constants,

    f(c) = β c² − 2α c + δ/c² − 2γ/c + ε c⁴ − 2ζ c²

with ``α, γ, ζ`` the cross products ``⟨a, b⟩`` and ``β, δ, ε`` the norms ``‖b‖²`` of the
``out``, ``in`` and ``var`` edges. Its stationary points are the positive roots of
``c³ f′(c)/2 = 2ε c⁶ + (β − 2ζ) c⁴ − α c³ + γ c − δ``; the minimiser is the best of those
roots (and of the bounds ``[1e-8, 1e8]`` when ``f`` keeps decreasing).
"""
from __future__ import annotations

import numpy as np

__all__ = ["best_scale", "scale_loss"]

C_MIN, C_MAX = 1e-8, 1e8


def scale_loss(c, alpha, beta, gamma, delta, zeta, eps):
    """``f(c)`` (the local loss without the terms that do not depend on ``c``)."""
    return beta * c**2 - 2 * alpha * c + delta / c**2 - 2 * gamma / c + eps * c**4 - 2 * zeta * c**2


def _positive_roots(coeffs: np.ndarray) -> np.ndarray:
    """Real positive roots of the polynomials in the rows of ``coeffs`` (highest degree first),
    padded with ``nan`` (batched companion-matrix eigenvalues, grouped by effective degree)."""
    n, width = coeffs.shape
    out = np.full((n, width - 1), np.nan)
    scale = np.abs(coeffs).max(1, keepdims=True)
    scale[scale == 0] = 1.0
    c = coeffs / scale
    nonzero = np.abs(c) > 1e-13
    lead = np.where(nonzero.any(1), nonzero.argmax(1), width - 1)
    for first in np.unique(lead):
        deg = width - 1 - first
        rows = np.flatnonzero(lead == first)
        if deg == 0:
            continue
        p = c[rows, first:]
        comp = np.zeros((rows.size, deg, deg))
        comp[:, 0, :] = -p[:, 1:] / p[:, :1]
        if deg > 1:
            comp[:, np.arange(1, deg), np.arange(deg - 1)] = 1.0
        roots = np.linalg.eigvals(comp)
        ok = (np.abs(roots.imag) <= 1e-7 * (1 + np.abs(roots.real))) & (roots.real > 0)
        out[rows, :deg] = np.where(ok, roots.real, np.nan)
    return out


def best_scale(alpha, beta, gamma, delta, zeta=0.0, eps=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise ``(c*, f(c*))`` minimising ``f`` over ``c ∈ [1e-8, 1e8]`` (broadcast inputs)."""
    arrays = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (alpha, beta, gamma, delta, zeta, eps)))
    shape = arrays[0].shape
    a, b, g, d, z, e = (x.reshape(-1) for x in arrays)
    zero = np.zeros_like(a)
    coeffs = np.stack([2 * e, zero, b - 2 * z, -a, zero, g, -d], axis=1)
    roots = np.clip(_positive_roots(coeffs), C_MIN, C_MAX)
    candidates = np.concatenate([roots, np.tile([1.0, C_MIN, C_MAX], (a.size, 1))], axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        values = scale_loss(candidates, a[:, None], b[:, None], g[:, None], d[:, None], z[:, None], e[:, None])
    values = np.where(np.isnan(values), np.inf, values)
    pick = values.argmin(1)
    rows = np.arange(a.size)
    return candidates[rows, pick].reshape(shape), values[rows, pick].reshape(shape)
