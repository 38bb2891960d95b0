"""The relaxation by accelerated projected gradient: ``min_{X ∈ C} f(X)`` without a modelling layer.

FISTA with adaptive restart on the convex misfit ``f`` of :mod:`solvers.algorithms.relaxation.misfit`, using its
structure: ``∇f`` is a few ``n × n`` matrix products (:class:`QuadraticMisfit`); the projection onto
the Birkhoff polytope is exact (semismooth Newton on its ``2n`` dual variables,
:func:`project_birkhoff`), onto the spectral-norm ball a clipped SVD. Every ``check_every``
iterations the convexity certificate ``L(X̂) ≤ min_C f ≤ f(X̂)`` brackets the relaxed optimum, so the
bound returned is valid however early it stops. Per iteration ``O(n³)``; no ``n² × n²`` system.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse.linalg as spla

from symmetries.classes import Permutation

from solvers.algorithms.relaxation.misfit import Misfit, RelaxedOptimum

__all__ = ["QuadraticMisfit", "project_birkhoff", "project_spectral_ball", "relax_apg", "estimate_apg"]


class QuadraticMisfit:
    """``f`` of a :class:`Misfit` as matrix products: ``∇f(X)/2`` at space ``s`` is
    ``X_s R_s + Q_s X_s + C_s − Σ (cross terms)`` with ``R_s = Σ B Bᵀ`` (terms producing ``s``),
    ``Q_s = Σ Aᵀ A`` (terms consuming ``s``), ``C_s`` the linear part, and for a two-sided term
    ``−Σ_k A_kᵀ X_out B_k`` at its input space and ``−Σ_k A_k X_in B_kᵀ`` at its output space."""

    def __init__(self, misfit: Misfit):
        self.misfit = misfit
        self.sizes = {s: n for s, (n, _) in misfit.spaces.items()}
        self.right = {s: np.zeros((n, n)) for s, n in self.sizes.items()}
        self.left = {s: np.zeros((n, n)) for s, n in self.sizes.items()}
        self.linear = {s: np.zeros((n, n)) for s, n in self.sizes.items()}
        self.cross = []
        for t in misfit.terms:
            if t.kind == "out":
                self.right[t.out] += t.b @ t.b.T
                self.linear[t.out] -= t.a @ t.b.T
            elif t.kind == "in":
                self.left[t.inn] += t.a.T @ t.a
                self.linear[t.inn] -= t.a.T @ t.b
            else:
                self.left[t.inn] += np.einsum("kmi,kmj->ij", t.a, t.a)
                self.right[t.out] += np.einsum("kim,kjm->ij", t.b, t.b)
                self.cross.append((t.inn, t.out, t.a, t.b, np.ascontiguousarray(t.a.transpose(0, 2, 1)),
                                   np.ascontiguousarray(t.b.transpose(0, 2, 1))))

    def half_hessian(self, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``(∇²f / 2) x`` (the gradient's linear part)."""
        g = {s: x[s] @ self.right[s] + self.left[s] @ x[s] for s in self.sizes}
        for inn, out, a, b, at, bt in self.cross:
            g[inn] -= (at @ x[out] @ b).sum(0)
            g[out] -= (a @ x[inn] @ bt).sum(0)
        return g

    def half_gradient(self, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``∇f(x) / 2``."""
        g = self.half_hessian(x)
        return {s: g[s] + self.linear[s] for s in g}

    #: Above this many variables (``Σ n²``) the step size comes from :meth:`block_bound`, not Lanczos.
    LANCZOS_VARIABLES = 50_000

    def block_bound(self) -> float:
        """``2 max_s (λ_max(Q_s) + λ_max(R_s)) ≥ λ_max(∇²f / 2)``: ``‖A X_in − X_out B‖²`` is at most
        ``2‖A X_in‖² + 2‖X_out B‖²``, which summed over the terms is ``2 Σ_s ⟨X_s, Q_s X_s + X_s R_s⟩``.
        At most 2× loose; costs one symmetric eigenvalue problem per space."""
        return 2.0 * max(float(np.linalg.eigvalsh(self.left[s])[-1]) + float(np.linalg.eigvalsh(self.right[s])[-1])
                         for s in self.sizes)

    def lipschitz(self, seed: int = 0) -> float:
        """An upper bound on ``λ_max(∇²f / 2)`` (the gradient of ``f`` is ``2λ``-Lipschitz): Lanczos to
        1e-3 plus 1 % up to :attr:`LANCZOS_VARIABLES` variables, :meth:`block_bound` above (Lanczos
        needs ~100 gradient-sized products there). Only the step size depends on it — never the
        certificate's validity."""
        big = sum(n * n for n in self.sizes.values()) > self.LANCZOS_VARIABLES
        if getattr(self, "_lipschitz", None) is None and big:
            self._lipschitz = self.block_bound()
        keys = list(self.sizes)
        shapes = [(self.sizes[s], self.sizes[s]) for s in keys]
        cuts = np.cumsum([0] + [a * b for a, b in shapes])

        def matvec(v):
            x = {s: v[cuts[i]:cuts[i + 1]].reshape(shapes[i]) for i, s in enumerate(keys)}
            hx = self.half_hessian(x)
            return np.concatenate([hx[s].ravel() for s in keys])

        if getattr(self, "_lipschitz", None) is not None:
            return self._lipschitz
        dim = int(cuts[-1])
        if dim <= 3:
            basis = np.eye(dim)
            return float(np.linalg.eigvalsh(np.stack([matvec(e) for e in basis], 1)).max())
        op = spla.LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(dim)
        try:  # a Ritz value is within tol (relative) of λ_max: tol 1e-3 and a 1 % margin bound it from above
            self._lipschitz = 1.01 * float(spla.eigsh(op, k=1, which="LA", v0=v0, tol=1e-3,
                                                      return_eigenvectors=False)[0])
            return self._lipschitz
        except spla.ArpackNoConvergence as exc:  # pragma: no cover - a power-iteration bound instead
            return float(np.max(exc.eigenvalues)) if len(exc.eigenvalues) else float(np.linalg.norm(matvec(v0)) /
                                                                                      np.linalg.norm(v0))


def _simplex_thresholds(z: np.ndarray) -> np.ndarray:
    """``τ_i`` with ``Σ_j max(z_ij − τ_i, 0) = 1`` for every row (row-wise projection onto the simplex)."""
    n = z.shape[1]
    srt = -np.sort(-z, axis=1)
    cums = np.cumsum(srt, axis=1) - 1.0
    rho = np.count_nonzero(srt - cums / np.arange(1, n + 1) > 0, axis=1)  # the condition holds on a prefix
    return cums[np.arange(len(z)), rho - 1] / rho


def _dual_line_search(z: np.ndarray, du: np.ndarray, dv: np.ndarray) -> float:
    """The maximiser ``t ≥ 0`` of ``h(t) = g(u + t du, v + t dv)`` (``z = y − u1ᵀ − 1vᵀ``): the root of the
    decreasing, piecewise linear ``h'(t) = Σ_ij e_ij max(z_ij − t e_ij, 0) − Σ du − Σ dv``,
    ``e_ij = du_i + dv_j``, between its breakpoints ``z_ij / e_ij`` (sorted)."""
    e = du[:, None] + dv[None, :]
    total = float(du.sum() + dv.sum())

    def slope(t):
        return float(np.sum(e * np.maximum(z - t * e, 0.0))) - total

    if slope(0.0) <= 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        br = z / e
    br = np.unique(br[np.isfinite(br) & (br > 0)])
    lo, hi = 0.0, None
    if br.size:  # bisect over the sorted breakpoints, then solve the linear piece exactly
        a, b = 0, br.size - 1
        if slope(br[b]) > 0:
            lo = float(br[b])
        else:
            while a < b:
                mid = (a + b) // 2
                if slope(br[mid]) > 0:
                    a = mid + 1
                else:
                    b = mid
            hi = float(br[a])
            lo = float(br[a - 1]) if a > 0 else 0.0
    if hi is None:  # past the last breakpoint h' is linear: h'(t) = h'(lo) + (t − lo)·(h'(lo + 1) − h'(lo))
        s0, s1 = slope(lo), slope(lo + 1.0)
        return lo + s0 / (s0 - s1) if s0 > s1 else lo
    s0, s1 = slope(lo), slope(hi)
    return lo + (hi - lo) * s0 / (s0 - s1) if s0 > s1 else hi


def project_birkhoff(y: np.ndarray, dual: tuple | None = None, *, tol: float = 1e-12,
                     max_iter: int = 200) -> tuple[np.ndarray, tuple, int]:
    """The Euclidean projection of ``y`` onto the doubly stochastic matrices, ``(x, (u, v), steps)``.

    ``x = max(y − u 1ᵀ − 1 vᵀ, 0)`` at the maximiser ``(u, v)`` of the concave, piecewise quadratic
    dual ``g(u, v) = min_{x ≥ 0} ½‖x − y‖² + uᵀ(x1 − 1) + vᵀ(xᵀ1 − 1)``, found by semismooth Newton
    steps (the generalised Hessian is the bipartite graph of the support, solved as an ``n × n``
    Schur system) with an Armijo line search on ``g``; a row or column without support first gets
    its exact threshold (``g`` increases), and a failed line search falls back to an exact
    row-then-column block ascent. Stops when ``‖(x1 − 1, xᵀ1 − 1)‖ ≤ tol·√n`` (or the round-off
    floor ``4·n·eps·max|y|·√n``) or after ``max_iter`` steps. ``dual``
    warm-starts it (the previous projection's ``(u, v)``)."""
    n = y.shape[0]
    if dual is None:
        u = _simplex_thresholds(y)
        v = _simplex_thresholds((y - u[:, None]).T)
    else:
        u, v = dual[0].copy(), dual[1].copy()
    ones = np.ones((n, n)) / n
    ridge = 1e-12 * np.eye(n)

    def state(u, v):
        z = y - u[:, None] - v[None, :]
        x = np.maximum(z, 0.0)
        gr, gc = x.sum(1) - 1.0, x.sum(0) - 1.0
        dual_value = 0.5 * float(np.sum((x - y) ** 2)) + float(u @ gr) + float(v @ gc)
        return z, x, gr, gc, dual_value

    z, x, gr, gc, gval = state(u, v)
    # x = y − u − v loses ~eps·|y| per entry: the residual cannot go below ~n·eps·max|y|
    steps, limit = 0, np.sqrt(n) * max(tol, 4 * np.finfo(np.float64).eps * n * float(np.abs(y).max(initial=0.0)))
    while float(np.sqrt(gr @ gr + gc @ gc)) > limit and steps < max_iter:
        steps += 1
        act = z > 0
        r, c = act.sum(1), act.sum(0)
        if r.min() == 0 or c.min() == 0:  # exact thresholds where a row / column has no support
            if r.min() == 0:
                rows = r == 0
                u[rows] = _simplex_thresholds(y[rows] - v[None, :])
            z, x, gr, gc, gval = state(u, v)
            c = (z > 0).sum(0)
            if c.min() == 0:
                cols = c == 0
                v[cols] = _simplex_thresholds((y[:, cols] - u[:, None]).T)
            z, x, gr, gc, gval = state(u, v)
            continue
        m = act.astype(np.float64)
        schur = np.diag(c.astype(np.float64)) - m.T @ (m / r[:, None])
        rhs = gc - m.T @ (gr / r)
        try:  # schur·1 = 0 and rhs ⊥ 1, so the 1-shift changes nothing but the null direction
            dv = np.linalg.solve(schur + ones + ridge, rhs)
        except np.linalg.LinAlgError:  # pragma: no cover - the ridge keeps it regular
            dv = np.linalg.lstsq(schur, rhs, rcond=None)[0]
        du = (gr - m @ dv) / r
        slope = float(gr @ du + gc @ dv)  # ∇g·d > 0: an ascent direction
        moved = False
        if slope > 0:
            res = float(np.sqrt(gr @ gr + gc @ gc))

            def better(c, t):  # Armijo on g, or (near the optimum, where g's gain drowns in round-off) a
                cres = float(np.sqrt(c[2] @ c[2] + c[3] @ c[3]))  # clear drop of the residual
                return c[4] >= gval + 1e-4 * t * slope or cres <= 0.5 * res

            cand, t = state(u + du, v + dv), 1.0  # the full Newton step
            if not better(cand, 1.0):  # exact line search: the step's length is irrelevant (a singular
                t = _dual_line_search(z, du, dv)  # Hessian gives huge ones)
                cand = state(u + t * du, v + t * dv)
            if t > 0 and (better(cand, t) or cand[4] > gval):
                u, v = u + t * du, v + t * dv
                z, x, gr, gc, gval = cand
                moved = True
        if not moved:  # exact block ascent: row thresholds, then column thresholds
            u = _simplex_thresholds(y - v[None, :])
            v = _simplex_thresholds((y - u[:, None]).T)
            z, x, gr, gc, gval = state(u, v)
    return x, (u, v), steps


def project_spectral_ball(y: np.ndarray) -> np.ndarray:
    """The Euclidean projection onto ``{X : σ_max(X) ≤ 1}``: singular values clipped at 1."""
    u, sv, vt = np.linalg.svd(y)
    return (u * np.minimum(sv, 1.0)) @ vt


def relax_apg(misfit: Misfit, *, tol: float = 1e-8, atol: float | None = None, max_iter: int = 20000,
              check_every: int = 25, time_limit: float | None = None, x0: dict | None = None,
              deadline: float | None = None, quad: "QuadraticMisfit | None" = None) -> RelaxedOptimum:
    """The relaxation by accelerated projected gradient (FISTA, step ``1/L`` with ``L`` an upper bound
    on the Lipschitz constant of ``∇f``, gradient-based adaptive restart), certified every
    ``check_every`` iterations. Stops when ``f(X̂) − bound ≤ max(tol · f(X̂), atol)`` (``atol``
    defaults to ``1e-10 · f(identity)``, so planted problems with ``min f = 0`` stop too), after
    ``max_iter`` iterations, or ``time_limit`` seconds after the call (set-up included) or at
    ``deadline`` (a ``time.perf_counter()`` value), checked every iteration; the bound is the best
    certificate ``L(X)`` seen, the last iterate certified too — valid whether or not it stopped
    converged (``status``: ``"optimal"``, ``"max_iter"`` or ``"time_limit"``)."""
    start = time.perf_counter()
    if time_limit is not None:
        deadline = start + float(time_limit) if deadline is None else min(deadline, start + float(time_limit))
    quad = QuadraticMisfit(misfit) if quad is None else quad
    sizes = quad.sizes
    if not sizes:
        return RelaxedOptimum({}, misfit.constant, misfit.constant, "optimal", 0.0, 0.0, "APG", 0, 0)
    kinds = {s: isinstance(cls, Permutation) for s, (_, cls) in misfit.spaces.items()}
    step = 1.0 / max(quad.lipschitz() * (1 + 1e-6), 1e-300)  # on ∇f/2: x − step·∇f/2 = x − ∇f/(2λ)
    identity = misfit.value({s: np.eye(n) for s, n in sizes.items()})
    atol = 1e-10 * max(identity, 1e-300) if atol is None else float(atol)
    if x0 is None:
        x = {s: np.full((n, n), 1.0 / n) if kinds[s] else np.zeros((n, n)) for s, n in sizes.items()}
    else:
        x = {s: np.asarray(x0[s], dtype=np.float64).copy() for s in sizes}
    duals = {s: None for s in sizes}

    def project(s, z):
        if kinds[s]:
            out, duals[s], _ = project_birkhoff(z, duals[s])
            return out
        return project_spectral_ball(z)

    x = {s: project(s, x[s]) for s in sizes}
    y = {s: v.copy() for s, v in x.items()}
    theta, best, best_x, value, status, k = 1.0, -np.inf, x, np.inf, "max_iter", 0
    setup = time.perf_counter() - start
    for k in range(1, int(max_iter) + 1):
        g = quad.half_gradient(y)
        new = {s: project(s, y[s] - step * g[s]) for s in sizes}
        if sum(float(np.sum(g[s] * (new[s] - x[s]))) for s in sizes) > 0:
            theta = 1.0  # the momentum points uphill: restart
        theta_next = (1 + np.sqrt(1 + 4 * theta * theta)) / 2
        beta = (theta - 1) / theta_next
        y = {s: new[s] + beta * (new[s] - x[s]) for s in sizes}
        x, theta = new, theta_next
        if k % check_every == 0 or k == max_iter:
            value = misfit.value(x)
            cert = misfit.lower_bound(x)
            if cert > best:
                best = cert
            best_x = x
            if value - best <= max(tol * abs(value), atol):
                status = "optimal"
                break
        if deadline is not None and time.perf_counter() > deadline:
            status = "time_limit"
            break
    if best_x is not x:  # stopped between checks: certify the last iterate
        value, best, best_x = misfit.value(x), max(best, misfit.lower_bound(x)), x
    total = time.perf_counter() - start
    variables = sum(n * n for n in sizes.values())
    constraints = sum(2 * n + n * n if kinds[s] else 1 for s, n in sizes.items())
    return RelaxedOptimum(best_x, float(value), float(best), status, setup, total - setup, "APG", variables,
                          constraints, iterations=k)


#: Lanczos matrix-vector products budgeted for the step size; APG iterations expected per unit of width
#: (measured: ~11 n for Birkhoff spaces of trained MLPs, up to ~160 n for a random ViT at n = 32; the
#: spectral-norm ball's non-smooth projection needs ~5 n² at widths 16-64); the measured time of one
#: gradient and projection is doubled for the certificates and the projections' extra Newton steps.
LANCZOS_PRODUCTS, PERMUTATION_ITERATIONS, ORTHOGONAL_ITERATIONS, ITERATION_OVERHEAD = 100, 50, 5, 2.0
#: The fewest iterations a useful relaxation runs: the floor of the up-front estimate.
MIN_ITERATIONS = 100


def estimate_apg(misfit: Misfit, quad: QuadraticMisfit, max_iter: int = 20000) -> dict:
    """An up-front estimate of :func:`relax_apg`'s run time: one gradient and one projection per space
    are timed on this problem, and multiplied by the Lanczos products of the step size and the
    iterations expected from the widths (``50 n`` for Birkhoff spaces, ``5 n²`` for spectral-norm
    balls, at most ``max_iter``) — an order of magnitude, not a promise (the iterations a problem
    needs depend on its conditioning: the demo's width-128 MLP converges in about 70, where the rule
    says 6400). Returns ``iterations``, ``seconds_per_iteration``, ``seconds`` and ``seconds_floor``
    — the step size plus :data:`MIN_ITERATIONS` iterations, a time no run can beat."""
    sizes = quad.sizes
    if not sizes:
        return dict(iterations=0, seconds_per_iteration=0.0, seconds=0.0)
    products = LANCZOS_PRODUCTS if sum(n * n for n in sizes.values()) <= quad.LANCZOS_VARIABLES else 0
    x = {s: np.full((n, n), 1.0 / n) for s, n in sizes.items()}
    timings = []
    for _ in range(2):  # the second, warm pass is the one kept (the first pays one-off costs)
        t0 = time.perf_counter()
        g = quad.half_gradient(x)
        t_grad = time.perf_counter() - t0
        for s, (n, cls) in misfit.spaces.items():
            z = x[s] - g[s] / max(float(np.abs(g[s]).max()), 1e-300) / n
            project_birkhoff(z, None) if isinstance(cls, Permutation) else project_spectral_ball(z)
        timings.append((t_grad, ITERATION_OVERHEAD * (time.perf_counter() - t0)))
    t_grad, t_iter = timings[-1]
    perm = max([n for s, (n, c) in misfit.spaces.items() if isinstance(c, Permutation)], default=0)
    orth = max([n for s, (n, c) in misfit.spaces.items() if not isinstance(c, Permutation)], default=0)
    iterations = int(min(max(PERMUTATION_ITERATIONS * perm, ORTHOGONAL_ITERATIONS * orth ** 2, 100), max_iter))
    floor = products * t_grad + min(MIN_ITERATIONS, max_iter) * t_iter
    return dict(iterations=iterations, seconds_per_iteration=t_iter,
                seconds=products * t_grad + iterations * t_iter, seconds_floor=floor)
