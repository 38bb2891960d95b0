"""Weight matching's subproblem for :class:`~symmetries.Rotary`: one complex factor per rotary pair.

Read pair ``i`` of every row matrix as complex rows, ``αᵢ = A[i] + i·A[i + d/2]`` (A) and
``βᵢ = B[i] + i·B[i + d/2]`` (B). The map multiplies pair ``i`` by ``cᵢ`` on producing edges and by
``1/c̄ᵢ`` on consuming ones (``T⁻ᵀ``), so the local loss separates over pairs:

    Lᵢ(c) = P|c|² − 2 Re(c̄ p) + Q/|c|² − 2 Re(q / c) + const,

with ``p = Σ_out ⟨βᵢ, αᵢ⟩``, ``P = Σ_out ‖βᵢ‖²`` and ``q``, ``Q`` the same over consuming edges.
Writing ``c = r e^{iφ}``: for a fixed ``r`` the best angle is ``arg(r p + q/r)``, leaving the
one-dimensional ``Lᵢ(r) = P r² + Q r⁻² − 2|r p + q/r|``. With producing (or consuming) edges only
it is least squares (``c = p/P``, or ``1/c̄ = q/Q``); with both, ``Lᵢ`` is minimised over ``log r``
on a grid around those two estimates, then the root of ``dL/dr`` in the bracket of the grid's
minimum is found by bisection — every pair at once.
"""
from __future__ import annotations

import torch

from symmetries.classes import Rotary
from symmetries.elements import RotaryElement
from symmetries.roles import Role

from solvers.local import Local
from solvers.subproblems import subproblem

__all__ = ["rotary_update", "pair_terms"]

_GRID, _SPAN, _BISECT = 161, 6.0, 64


def pair_terms(local: Local, role: Role) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, P)`` for the edges of ``role``: ``pᵢ = Σ_e ⟨βᵢ, αᵢ⟩`` (complex) and ``Pᵢ = Σ_e ‖βᵢ‖²``."""
    h = local.n // 2
    m = local.cross(role).double().cpu()
    norms = local.row_norms(role, "b").double().cpu()
    if not local.has(role):
        return torch.zeros(h, dtype=torch.complex128), torch.zeros(h, dtype=torch.float64)
    i = torch.arange(h)
    re = m[i, i] + m[i + h, i + h]
    im = m[i + h, i] - m[i, i + h]
    return torch.complex(re, im), norms[:h] + norms[h:]


def _loss(r, p, big_p, q, big_q):
    return big_p * r * r + big_q / (r * r) - 2 * (r * p + q / r).abs()


def _slope(r, p, big_p, q, big_q):
    """``dL/dr = 2Pr − 2Q r⁻³ − 2 Re(z̄ (p − q r⁻²)) / |z|`` with ``z = r p + q/r``."""
    z = r * p + q / r
    dz = (z.conj() * (p - q / (r * r))).real / z.abs().clamp_min(1e-300)
    return 2 * big_p * r - 2 * big_q / r ** 3 - 2 * dz


def rotary_update(local: Local) -> RotaryElement:
    """The factors ``cᵢ`` minimising the local loss (exact with one kind of edge; a global grid and
    bisection on ``dL/dr`` over ``log |cᵢ|`` with both)."""
    h = local.n // 2
    p, big_p = pair_terms(local, Role.OUT)
    q, big_q = pair_terms(local, Role.IN)
    tiny = 1e-300
    one = torch.ones(h, dtype=torch.complex128)
    c_out = torch.where(big_p > tiny, p / big_p.clamp_min(tiny), one)
    c_in = torch.where(q.abs() > tiny, big_q / q.conj().where(q.abs() > tiny, one), one)  # c = 1/w̄, w = q/Q
    both = (big_p > tiny) & (big_q > tiny)
    only_in = ~(big_p > tiny) & (big_q > tiny)
    c = torch.where(only_in, c_in, c_out)
    if bool(both.any()):
        logs = [c_out.abs(), c_in.abs()]
        centre = torch.stack([x.clamp_min(1e-150).log() for x in logs]).mean(0)
        centre = torch.where(torch.isfinite(centre), centre, torch.zeros_like(centre))
        grid = centre[:, None] + torch.linspace(-_SPAN, _SPAN, _GRID, dtype=torch.float64)[None, :]
        values = _loss(grid.exp(), p[:, None], big_p[:, None], q[:, None], big_q[:, None])
        k = values.argmin(1)
        step = 2 * _SPAN / (_GRID - 1)
        lo = grid[torch.arange(h), k] - step
        hi = grid[torch.arange(h), k] + step
        for _ in range(_BISECT):  # the root of dL/dr inside the grid minimum's bracket
            mid = (lo + hi) / 2
            up = _slope(mid.exp(), p, big_p, q, big_q) > 0
            hi = torch.where(up, mid, hi)
            lo = torch.where(up, lo, mid)
        r = ((lo + hi) / 2).exp()
        z = r * p + q / r
        angle = torch.where(z.abs() > 0, z / z.abs().clamp_min(tiny), one)
        c = torch.where(both, r * angle, c)
    c = torch.where((c.abs() > 0) & torch.isfinite(c.abs()), c, one)
    return RotaryElement(c)


@subproblem.register(Rotary)
def _rotary(cls, local, *, backend="auto", current=None):
    found = rotary_update(local)
    if current is not None and isinstance(current, RotaryElement) and current.shape == found.shape \
            and not local.streamed and local.loss(current) < local.loss(found):
        return current
    return found
