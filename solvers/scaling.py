"""Closed-form positive scalings: the exact per-unit (or per-pair) optimal scale.

For one unit pair (A's row ``j``, B's row ``i``) and a scale ``c > 0`` acting in each role
(``out``: ``c·b``; ``in``: ``b/c``; ``var``: ``c²·b``) the local loss is, up to constants,

    f(c) = β c² − 2α c + δ/c² − 2γ/c + ε c⁴ − 2ζ c²

with ``α, γ, ζ`` the cross products ``⟨a, b⟩`` and ``β, δ, ε`` the norms ``‖b‖²`` of the
``out``, ``in`` and ``var`` edges. Its stationary points are the positive roots of
``c³ f′(c)/2 = 2ε c⁶ + (β − 2ζ) c⁴ − α c³ + γ c − δ``; the minimiser is the best of those
roots (and of the bounds ``[1e-8, 1e8]`` when ``f`` keeps decreasing).

Two exact methods, one answer:

* **the quartic** (no ``var`` edge, ``β, δ > 0`` — every pair of a plain ReLU layer):
  ``p(c) = βc⁴ − αc³ + γc − δ``, ``p(0) = −δ < 0``, ``p(∞) = ∞``. ``p″(c) = 6c(2βc − α)``: ``p`` is
  concave on ``(0, c_i)`` and convex on ``(c_i, ∞)``, ``c_i = max(α, 0)/(2β)``. The minimisers of
  ``f`` are the roots where ``p`` crosses from − to +; there are at most two (Descartes: three
  positive roots at most, the middle one a maximum of ``f``): the smallest root, which lies in the
  concave part if anywhere, and the largest, in the convex part. Newton's method from ``0`` on the
  concave part and from an upper bound ``B`` (``p(B) ≥ 0``: ``B = max(3α⁺/β, (3γ⁻/β)^⅓, (3δ/β)^¼)``)
  on the convex part moves monotonically towards those roots and never steps over one (a tangent
  lies above a concave and below a convex function); it leaves its part — the root is not there —
  or converges. Vectorised in torch over the whole ``n × n`` grid, about 10 Newton steps.
* **eigenvalues** (everything else, and any row the quartic cannot certify: a root outside
  ``[1e-8, 1e8]``, no convergence in the step budget, non-finite numbers): the positive real roots of
  the sextic by batched companion-matrix eigenvalues, grouped by effective degree.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["best_scale", "scale_loss"]

C_MIN, C_MAX = 1e-8, 1e8
NEWTON_STEPS = 100  # per direction; rows not converged by then go to the eigenvalue path
NEWTON_RTOL = 1e-11  # a step this small (relative): quadratic convergence puts the next iterate at round-off


def scale_loss(c, alpha, beta, gamma, delta, zeta, eps):
    """``f(c)`` (the local loss without the terms that do not depend on ``c``)."""
    return beta * c**2 - 2 * alpha * c + delta / c**2 - 2 * gamma / c + eps * c**4 - 2 * zeta * c**2


def best_scale(alpha, beta, gamma, delta, zeta=0.0, eps=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise ``(c*, f(c*))`` minimising ``f`` over ``c ∈ [1e-8, 1e8]`` (broadcast inputs: arrays or
    tensors; float64 numpy results). The quartic rows by Newton, the rest by eigenvalues."""
    arrays = np.broadcast_arrays(*(_numpy64(x) for x in (alpha, beta, gamma, delta, zeta, eps)))
    shape = arrays[0].shape
    a, b, g, d, z, e = (np.ascontiguousarray(x).reshape(-1) for x in arrays)
    c, f = np.full(a.size, np.nan), np.full(a.size, np.nan)
    quartic = np.flatnonzero((z == 0) & (e == 0) & (b > 0) & (d > 0) & np.isfinite(a) & np.isfinite(g)
                             & np.isfinite(b) & np.isfinite(d))
    if quartic.size:
        cq, fq = _quartic_min(*(torch.from_numpy(x[quartic]) for x in (a, b, g, d)))
        c[quartic], f[quartic] = cq.numpy(), fq.numpy()
    rest = np.flatnonzero(np.isnan(c))
    if rest.size:
        c[rest], f[rest] = best_scale_eig(a[rest], b[rest], g[rest], d[rest], z[rest], e[rest])
    return c.reshape(shape), f.reshape(shape)


def _numpy64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


# -- the quartic (no var edge) ---------------------------------------------------------------
def _quartic_min(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, d: torch.Tensor):
    """``(c*, f(c*))`` for ``β, δ > 0``, ``ε = ζ = 0``; ``nan`` where not certified (see module doc)."""
    coeffs = a, b, g, d
    s = torch.maximum(torch.maximum(a.abs(), g.abs()), torch.maximum(b, d))
    a, b, g, d = a / s, b / s, g / s, d / s  # same roots, no overflow for c ≤ 2e8
    infl = a.clamp_min(0) / (2 * b)  # c_i: concave below, convex above
    bound = torch.maximum(torch.maximum(3 * a.clamp_min(0) / b, (3 * (-g).clamp_min(0) / b) ** (1 / 3)),
                          (3 * d / b) ** 0.25)
    start = bound.clamp_max(2 * C_MAX)
    right, right_ok = _newton(a, b, g, d, start, infl, from_right=True)
    left = torch.full_like(a, float("nan"))
    left_ok = torch.ones_like(a, dtype=torch.bool)
    two = torch.nonzero((a > 0) & (g > 0)).squeeze(1)  # else p′ ≤ 0 on the concave part: no smallest root there
    if two.numel():
        lv, lok = _newton(a[two], b[two], g[two], d[two], torch.zeros_like(a[two]), infl[two], from_right=False)
        left[two], left_ok[two] = lv, lok
    ok = right_ok & left_ok & ~(torch.isnan(left) & torch.isnan(right))
    for root in (left, right):  # a minimiser outside the box: the box's answer may be an end (eigen path)
        ok &= torch.isnan(root) | ((root >= C_MIN) & (root <= C_MAX))
    fl, fr = (_quartic_loss(x, *coeffs) for x in (left, right))
    fl, fr = torch.nan_to_num(fl, nan=float("inf")), torch.nan_to_num(fr, nan=float("inf"))
    take_left = fl < fr
    c = torch.where(take_left, left, right)
    f = torch.where(take_left, fl, fr)
    nan = torch.full_like(c, float("nan"))
    return torch.where(ok, c, nan), torch.where(ok, f, nan)


def _quartic_loss(c, a, b, g, d):
    return b * c**2 - 2 * a * c + d / c**2 - 2 * g / c


def _newton(a, b, g, d, x, infl, *, from_right: bool):
    """Newton on ``p`` restricted to the convex part (``from_right``: from ``x`` with ``p(x) ≥ 0``,
    decreasing) or the concave part (from ``x = 0``, increasing). Returns ``(root or nan, certified)``:
    ``nan`` with ``certified`` where the iterate left its part (no root there); ``certified`` false
    where the start was invalid or the step budget ran out."""
    n = x.numel()
    root = torch.full_like(x, float("nan"))
    certified = torch.ones(n, dtype=torch.bool)
    active = torch.arange(n)
    if from_right:  # the start must be in the convex part with p ≥ 0 (else the root is above 2e8)
        p0 = ((b * x - a) * x * x + g) * x - d
        bad = (p0 < 0) | (x < infl) | ~torch.isfinite(p0)
        certified[bad] = False
        active = active[~bad]
    a, b, g, d, x, infl = (t[active] for t in (a, b, g, d, x, infl))
    a3, b4 = 3 * a, 4 * b
    live = torch.ones(active.numel(), dtype=torch.bool)  # rows still iterating (compacted when half are done)
    for _ in range(NEWTON_STEPS):
        x2 = x * x
        p = torch.addcmul(g, b * x - a, x2).mul_(x).sub_(d)  # ((βx − α)x² + γ)x − δ
        dp = torch.addcmul(g, b4 * x - a3, x2)  # (4βx − 3α)x² + γ
        step = p / dp
        nx = x - step
        if from_right:  # leaving the convex part (or p′ ≤ 0 there): no root ≥ c_i; p ≤ 0: at the root
            gone, at_root = (dp <= 0) | (nx < infl), p <= 0
        else:
            gone, at_root = (dp <= 0) | (nx > infl), p >= 0
        done = (at_root | ((step.abs() <= NEWTON_RTOL * nx) & ~gone)) & live
        stop = (done | gone) & live  # a non-finite step is neither: it runs out of steps (uncertified)
        if bool(stop.any()):
            idx = torch.nonzero(done).squeeze(1)
            root[active[idx]] = torch.where(at_root[idx], x[idx], nx[idx])
            live &= ~stop
            nlive = int(live.sum())
            if nlive == 0:
                active = active[:0]
                break
            if 2 * nlive <= live.numel():
                active, a, b, g, d, a3, b4, infl, nx = (t[live] for t in (active, a, b, g, d, a3, b4, infl, nx))
                live = torch.ones(nlive, dtype=torch.bool)
        x = nx  # rows no longer live iterate on harmlessly (masked by live)
    active = active[live] if active.numel() else active
    certified[active] = False  # out of steps
    root[active] = float("nan")
    return root, certified


# -- the general sextic: companion-matrix eigenvalues -----------------------------------------
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


def best_scale_eig(alpha, beta, gamma, delta, zeta=0.0, eps=0.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_scale` by companion-matrix eigenvalues for every row (the general method; the
    reference the quartic path is tested against)."""
    arrays = np.broadcast_arrays(*(_numpy64(x) for x in (alpha, beta, gamma, delta, zeta, eps)))
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
