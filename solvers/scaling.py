"""Closed-form positive scalings: the exact per-unit (or per-pair) optimal scale.

For one unit pair (A's row ``j``, B's row ``i``) and a scale ``c > 0`` acting in each role
(``out``: ``c·b``; ``in``: ``b/c``; ``var``: ``c²·b``) the local loss is, up to constants,

    f(c) = β c² − 2α c + δ/c² − 2γ/c + ε c⁴ − 2ζ c²

with ``α, γ, ζ`` the cross products ``⟨a, b⟩`` and ``β, δ, ε`` the norms ``‖b‖²`` of the
``out``, ``in`` and ``var`` edges. Its stationary points are the positive roots of
``c³ f′(c)/2 = 2ε c⁶ + (β − 2ζ) c⁴ − α c³ + γ c − δ``; the minimiser is the best of those
roots (and of the bounds ``[1e-8, 1e8]`` when ``f`` keeps decreasing).

Exact methods, one answer:

* **the quartic** (no ``var`` edge, ``β, δ > 0`` — every pair of a plain ReLU layer): with
  ``c = s t``, ``s = (δ/β)^¼``, ``κ = √(βδ)``: ``f = κ h(t)``, ``h = t² + t⁻² − 2At − 2G/t``,
  ``A = αs/κ``, ``G = γ/(sκ)`` — two numbers per pair (``s, κ`` are per column of the ``n × n`` grid);
  stationarity ``p(t) = t⁴ − At³ + Gt − 1 = 0``, ``p(0) = −1``. ``p″(t) = 6t(2t − A)``: ``p`` is
  concave on ``(0, t_i)`` and convex on ``(t_i, ∞)``, ``t_i = A⁺/2``. The minimisers of ``f`` are the
  roots where ``p`` crosses from − to +: at most two (Descartes: three positive roots at most, more
  than one only if ``A, G > 0``), the smallest, in the concave part if anywhere, and the largest, in
  the convex part. On the concave part ``p(t) ≤ −1 + Gt`` (below its tangent at 0): it holds a root
  only if ``G t_i ≥ 1``. So a point ``t ≥ t_i`` where Newton has converged and ``p′(t) > 0`` is the
  largest root (``p`` increases beyond it), and where ``G t_i < 1`` the global minimiser — a
  certificate that does not depend on the path. **Fast path**: unguarded Newton from ``t = max(1, A)``
  (the root when ``A = G = 0``), vectorised over cache-sized blocks of the grid — four steps in float32
  (twice the SIMD width), then float64 steps to convergence (about two) — then that certificate. The
  ``D P`` pair grid (:func:`pair_grid`) starts instead from the root's second-order series in ``A, G``
  and accepts one float64 step after three float32 ones where a Kantorovich-style bound shows it lands at
  the root (:func:`_grid_root`). **Guarded path** for the rows neither certifies: monotone Newton from
  the right on the convex part (from ``max(1, t_i)``, or its Newton step where that lies left of the root, or
  the bound ``B = max(3A⁺, (3G⁻)^⅓, 3^¼)``, ``p(B) ≥ 0``) and from ``0`` on the concave part — a
  tangent lies below a convex and above a concave function, so neither steps over a root; each
  leaves its part (no root there) or converges.
* **one role** (``γ = δ = 0`` or ``α = β = 0``, no ``var`` edge): a convex quadratic in ``c`` (in
  ``1/c``), its minimiser clamped to the box.
* **eigenvalues** (everything else, and any row the paths above cannot certify: a minimiser outside
  ``[1e-8, 1e8]``, no convergence in the step budget, non-finite numbers): the positive real roots of
  the sextic by batched companion-matrix eigenvalues, grouped by effective degree.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["best_scale", "best_scale_eig", "pair_grid", "quartic_variables", "scale_loss"]

C_MIN, C_MAX = 1e-8, 1e8
NEWTON_STEPS = 100  # per direction; rows not converged by then go to the eigenvalue path
NEWTON_RTOL = 1e-9  # a step this small (relative): one more step puts the iterate at round-off (quadratic)


def scale_loss(c, alpha, beta, gamma, delta, zeta=0.0, eps=0.0):
    """``f(c)`` (the local loss without the terms that do not depend on ``c``)."""
    return beta * c**2 - 2 * alpha * c + delta / c**2 - 2 * gamma / c + eps * c**4 - 2 * zeta * c**2


def best_scale(alpha, beta, gamma, delta, zeta=0.0, eps=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise ``(c*, f(c*))`` minimising ``f`` over ``c ∈ [1e-8, 1e8]`` (broadcast inputs: arrays or
    tensors; float64 numpy results). The quartic rows by Newton, one-sided rows in closed form, the rest
    by eigenvalues."""
    a, b, g, d, z, e = (_numpy64(x) for x in (alpha, beta, gamma, delta, zeta, eps))
    shape = np.broadcast_shapes(a.shape, b.shape, g.shape, d.shape, z.shape, e.shape)
    if not z.any() and not e.any():  # no var edge anywhere: the quartic on the broadcast inputs
        c, f = _quartic_min(a, b, g, d)
        c, f = (x.reshape(-1) if x.shape == shape else np.broadcast_to(x, shape).reshape(-1).copy() for x in (c, f))
        arrays = None
    else:
        arrays = [np.broadcast_to(x, shape).reshape(-1) for x in (a, b, g, d, z, e)]
        c, f = np.full(int(np.prod(shape)), np.nan), np.full(int(np.prod(shape)), np.nan)
        quartic = np.flatnonzero((arrays[4] == 0) & (arrays[5] == 0))
        if quartic.size:
            c[quartic], f[quartic] = _quartic_min(*(x[quartic] for x in arrays[:4]))
    rest = np.flatnonzero(np.isnan(c))
    if rest.size:
        if arrays is None:
            arrays = [np.broadcast_to(x, shape).reshape(-1) for x in (a, b, g, d, z, e)]
        c[rest], f[rest] = _one_sided(*(x[rest] for x in arrays))
        rest = rest[np.isnan(c[rest])]
    if rest.size:
        c[rest], f[rest] = best_scale_eig(*(x[rest] for x in arrays))
    return c.reshape(shape), f.reshape(shape)


def pair_grid(alpha, beta, gamma, delta, zeta=0.0, eps=0.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_scale` for the ``n × n`` pair grid of the ``D P`` assignment, cheaper: quartic rows take the
    certified root of :func:`_grid_root` (a float32 Newton root refined by one float64 step), where ``f`` — stationary
    at the root — is exact to round-off and ``c`` to about 1e-9 (relative); other rows as :func:`best_scale`."""
    a, b, g, d, z, e = (_numpy64(x) for x in (alpha, beta, gamma, delta, zeta, eps))
    if z.any() or e.any():
        return best_scale(a, b, g, d, z, e)
    shape = np.broadcast_shapes(a.shape, b.shape, g.shape, d.shape)
    c, f = _quartic_min(a, b, g, d, grid=True)
    c, f = (x.reshape(-1) if x.shape == shape else np.broadcast_to(x, shape).reshape(-1).copy() for x in (c, f))
    rest = np.flatnonzero(np.isnan(c))
    if rest.size:  # one-sided rows and the rest: best_scale's own paths
        c[rest], f[rest] = best_scale(*(np.broadcast_to(x, shape).reshape(-1)[rest] for x in (a, b, g, d)))
    return c.reshape(shape), f.reshape(shape)


def _one_sided(a, b, g, d, z, e) -> tuple[np.ndarray, np.ndarray]:
    """Rows with one role only (``γ = δ = 0``: ``f = βc² − 2αc``, ``β > 0``; ``α = β = 0``: ``f = δ/c² − 2γ/c``,
    ``δ > 0``; no ``var`` term): the convex quadratic in ``c`` (in ``1/c``) clamped to the box — exact;
    ``nan`` elsewhere."""
    c, f = np.full(a.shape, np.nan), np.full(a.shape, np.nan)
    plain = (z == 0) & (e == 0) & np.isfinite(a) & np.isfinite(b) & np.isfinite(g) & np.isfinite(d)
    out = np.flatnonzero(plain & (g == 0) & (d == 0) & (b > 0))
    c[out] = np.clip(np.maximum(a[out], 0.0) / b[out], C_MIN, C_MAX)
    inn = np.flatnonzero(plain & (a == 0) & (b == 0) & (d > 0))
    c[inn] = 1.0 / np.clip(np.maximum(g[inn], 0.0) / d[inn], 1.0 / C_MAX, 1.0 / C_MIN)
    both = np.concatenate([out, inn])
    f[both] = scale_loss(c[both], a[both], b[both], g[both], d[both])
    return c, f


def _numpy64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


# -- the quartic (no var edge) ---------------------------------------------------------------
CHUNK = 32768  # grid entries per block: the block's temporaries stay in cache
FAST_STEPS = 8  # unguarded float64 Newton steps per block before the guarded path takes the rows left over
FAST32_STEPS = 4  # float32 steps first (twice the SIMD width): to float32 accuracy, then two in float64 suffice


def quartic_variables(beta, delta) -> tuple[np.ndarray, np.ndarray]:
    """``(s, κ) = ((δ/β)^¼, √(βδ))``: the quartic's variables ``c = s t``, ``f = κ h(t)``, ``A = αs/κ``,
    ``G = γ/(sκ)`` (``nan`` where ``β ≤ 0`` or ``δ ≤ 0``)."""
    with np.errstate(all="ignore"):
        rb, rd = np.sqrt(np.where(beta > 0, beta, np.nan)), np.sqrt(np.where(delta > 0, delta, np.nan))
        return np.sqrt(rd / rb), rb * rd


def _quartic_min(a, b, g, d, grid: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(c*, f(c*))`` (broadcast shape) for ``ε = ζ = 0``; ``nan`` where not certified (``β ≤ 0`` or
    ``δ ≤ 0`` included). ``β, δ`` enter only through ``s`` and ``κ`` (``1 × n`` on the ``n × n`` grid),
    computed once; the grid is walked in blocks of rows, ``f = κ h(t)``, ``c = s t``. ``grid``: the roots by
    :func:`_grid_root` first (``f`` exact, ``c`` to about 1e-9), :func:`_fast_root` where it does not certify."""
    with np.errstate(all="ignore"):
        s, k = quartic_variables(b, d)
        u, v = s / k, 1.0 / (s * k)
        shape = np.broadcast_shapes(a.shape, b.shape, g.shape, d.shape)
        size = int(np.prod(shape))
        rows, cols = (size // shape[-1], shape[-1]) if len(shape) >= 2 and shape[-1] else (size, 1)
        a2, g2, s2, u2, v2, k2 = (x.reshape(rows, cols) if x.shape == shape else
                                  np.broadcast_to(x, shape).reshape(rows, cols) for x in (a, g, s, u, v, k))
        c, f = np.empty((rows, cols)), np.empty((rows, cols))
        step = max(1, CHUNK // max(cols, 1))
        todo, todo_a, todo_g = [], [], []
        for r in range(0, rows, step):
            blk = slice(r, r + step)
            big_a, big_g = a2[blk] * u2[blk], g2[blk] * v2[blk]
            t, ok = _grid_root(big_a, big_g) if grid else _fast_root(big_a, big_g)
            if grid and not ok.all():  # far from the series' reach: the float64 fast path for those
                miss = np.flatnonzero(~ok)
                t.reshape(-1)[miss], ok.reshape(-1)[miss] = _fast_root(big_a.reshape(-1)[miss], big_g.reshape(-1)[miss])
            c[blk], f[blk] = s2[blk] * t, k2[blk] * _h(t, big_a, big_g)
            bad = np.flatnonzero(~ok)
            if bad.size:
                todo.append(bad + r * cols)
                todo_a.append(big_a.reshape(-1)[bad])
                todo_g.append(big_g.reshape(-1)[bad])
        if todo:
            idx, ta, tg = np.concatenate(todo), np.concatenate(todo_a), np.concatenate(todo_g)
            t = _careful_root(ta, tg)
            c.reshape(-1)[idx] = s2.reshape(-1)[idx] * t
            f.reshape(-1)[idx] = k2.reshape(-1)[idx] * _h(t, ta, tg)
        if size and not (c.min() >= C_MIN and c.max() <= C_MAX):  # nan, or the box's answer may be an end
            out = ~((c >= C_MIN) & (c <= C_MAX))
            c[out], f[out] = np.nan, np.nan
        return c.reshape(shape), f.reshape(shape)


def _fast_root(a: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest root of ``p`` by unguarded Newton from ``t = max(1, A)``, and where it is certified as the global
    minimiser (path-independent): converged at ``t ≥ t_i`` with ``p′(t) > 0`` (``p`` increases beyond: no
    larger root) and no root possible on the concave part (``G t_i < 1``: ``A ≤ 0``, ``G ≤ 0`` included)."""
    x = _newton32(a, g) if FAST32_STEPS else np.maximum(a, 1.0)
    a3 = 3.0 * a
    small, dp = np.zeros(x.shape, dtype=bool), x
    for i in range(FAST_STEPS):
        x2 = x * x
        p = ((x - a) * x2 + g) * x - 1.0
        dp = (4.0 * x - a3) * x2 + g
        step = p / dp
        x = x - step
        if i >= (1 if FAST32_STEPS else 3):
            small = np.abs(step) <= NEWTON_RTOL * x
            if small.all():
                break
    infl = np.maximum(a, 0.0) * 0.5
    ok = small & (dp > 0) & (x >= infl) & (g * infl < 1.0)
    return x, ok


GRID32_STEPS = 3  # float32 steps from the second-order start: to float32 accuracy where |A| + |G| ≤ 2
SERIES_RADIUS = 2.0  # |A| + |G| up to which the series start is used (else max(1, A))


def _grid_root(a: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A root ``t`` of ``p`` where ``h(t)`` is the global minimum to round-off, and where that is certified:
    float32 Newton from the series ``t = 1 + ε + ε((3A − G)/4 − 3ε/2)``, ``ε = (A − G)/4`` (the root to second
    order in ``A, G``), then one float64 step ``s`` from the float32 root ``t₀``. Certified where ``|s| ≤ 1e-6 t``
    and ``|p″(t₀)| |s| ≤ 1e-3 p′(t₀)`` (the step lands within ``~|s|²|p″|/p′ ≤ 1e-9 t`` of the root, and ``h`` —
    stationary there — is exact to ``O(1e-18)``), with the path-independent conditions of :func:`_fast_root`
    (``p′ > 0``, ``t ≥ t_i``, ``G t_i < 1``: the largest root, and the global minimiser)."""
    a32, g32 = a.astype(np.float32), g.astype(np.float32)
    e = (a32 - g32) * np.float32(0.25)
    x = np.float32(1.0) + e + e * ((np.float32(3.0) * a32 - g32) * np.float32(0.25) - np.float32(1.5) * e)
    far = np.abs(a32) + np.abs(g32) > np.float32(SERIES_RADIUS)
    if far.any():
        x = np.where(far, np.maximum(a32, np.float32(1.0)), x)
    x = _newton32(a32, g32, x, GRID32_STEPS)
    x2 = x * x
    dp = (4.0 * x - 3.0 * a) * x2 + g
    step = (((x - a) * x2 + g) * x - 1.0) / dp
    ddp = (12.0 * x - 6.0 * a) * x
    x = x - step
    ast = np.abs(step)
    infl = np.maximum(a, 0.0) * 0.5
    ok = (ast <= 1e-6 * x) & (np.abs(ddp) * ast <= 1e-3 * dp) & (x >= infl) & (g * infl < 1.0)
    return x, ok


def _newton32(a: np.ndarray, g: np.ndarray, x: np.ndarray | None = None, steps: int = FAST32_STEPS) -> np.ndarray:
    """``steps`` unguarded Newton steps in float32 from ``x`` (default ``max(1, A)``), returned in float64: a start
    for the float64 steps, whose convergence and certificate decide (a row that went astray here fails
    them and takes the guarded path)."""
    a32, g32 = a.astype(np.float32, copy=False), g.astype(np.float32, copy=False)
    a3 = np.float32(3.0) * a32
    x = np.maximum(a32, np.float32(1.0)) if x is None else x
    for _ in range(steps):
        x2 = x * x
        x = x - (((x - a32) * x2 + g32) * x - np.float32(1.0)) / ((np.float32(4.0) * x - a3) * x2 + g32)
    return x.astype(np.float64)


def _careful_root(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The global minimiser ``t > 0`` of ``t² + t⁻² − 2at − 2g/t`` (1-D arrays) by monotone Newton on
    both parts (module doc), ``nan`` where uncertified."""
    infl = np.maximum(a, 0.0) * 0.5
    x = np.maximum(infl, 1.0)
    x2 = x * x
    p = ((x - a) * x2 + g) * x - 1.0
    dp = (4.0 * x - 3.0 * a) * x2 + g
    # a valid right start: p ≥ 0 with p′ ≥ 0 (no root above), or the Newton step from a point left of
    # the root with p′ > 0 (convexity: it lands at or above the root, p increasing beyond)
    x = np.where(p >= 0, x, x - p / dp)
    bad = np.flatnonzero(~(dp > 0) & ~((p >= 0) & (dp >= 0)))
    if bad.size:
        ab, gb = a[bad], g[bad]
        x[bad] = np.maximum(np.maximum(3 * np.maximum(ab, 0.0), np.cbrt(3 * np.maximum(-gb, 0.0))), 3 ** 0.25)
    right, ok = _newton(a, g, x, infl, from_right=True)
    two = np.flatnonzero((a > 0) & (g > 0) & (g * infl >= 1.0))  # else p < 0 on the concave part
    if two.size:
        at, gt = a[two], g[two]
        left, lok = _newton(at, gt, np.zeros(two.size), infl[two], from_right=False)
        ok[two] &= lok
        rt = right[two]
        hl, hr = _h(left, at, gt), _h(rt, at, gt)
        right[two] = np.where(np.isnan(rt) | (hl < hr), left, rt)  # nan left: hl < hr is false
    return np.where(ok, right, np.nan)


def _h(t, a, g):
    """``f/κ = t² + t⁻² − 2At − 2G/t``."""
    it = 1.0 / t
    return t * (t - 2.0 * a) + it * (it - 2.0 * g)


def _newton(a, g, x, infl, *, from_right: bool) -> tuple[np.ndarray, np.ndarray]:
    """Newton on ``p`` restricted to the convex part (``from_right``: from ``x`` with ``p(x) ≥ 0`` and no
    root above, decreasing) or the concave part (from ``x = 0``, increasing). Returns ``(root or nan,
    certified)``: ``nan`` and certified where the iterate left its part (no root there); not certified
    where a number was not finite or the step budget ran out."""
    n = x.size
    root = np.full(n, np.nan)
    certified = np.ones(n, dtype=bool)
    idx = np.arange(n)
    live = np.ones(n, dtype=bool)  # rows still iterating (compacted when half are done)
    a3 = 3.0 * a
    for _ in range(NEWTON_STEPS):
        x2 = x * x
        p = ((x - a) * x2 + g) * x - 1.0
        dp = (4.0 * x - a3) * x2 + g
        step = p / dp
        nx = x - step
        if from_right:  # leaving the convex part (or p′ ≤ 0 there): no root ≥ t_i; p ≤ 0: at the root
            gone, at_root = (dp <= 0) | (nx < infl), p <= 0
        else:
            gone, at_root = (dp <= 0) | (nx > infl), p >= 0
        small = np.abs(step) <= NEWTON_RTOL * nx
        stop = (at_root | gone | small) & live  # a non-finite step is none: it runs out of steps
        if stop.any():
            j = np.flatnonzero(stop)
            hit, conv = at_root[j], small[j] & ~gone[j]
            root[idx[j]] = np.where(hit, x[j], np.where(conv, nx[j], np.nan))
            live[j] = False
            nlive = int(np.count_nonzero(live))
            if nlive == 0:
                return root, certified
            if 2 * nlive <= live.size:
                keep = np.flatnonzero(live)
                idx, a, g, a3, infl, nx = (v[keep] for v in (idx, a, g, a3, infl, nx))
                live = np.ones(nlive, dtype=bool)
        x = nx  # rows no longer live iterate on harmlessly (masked by live)
    rest = idx[live]
    certified[rest] = False
    root[rest] = np.nan
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
