"""``J`` as a function of the positive scales of ``T = D P`` with every gather (permutation) kept: per
tensor the sums ``E = Σ_free A∘B̃`` and ``F = Σ_free B̃∘B̃`` over the axes no polished space indexes, so
``J_p = ‖A_p‖² − 2⟨E, w⟩ + ⟨F, w²⟩`` with ``w`` the outer product of the axes' scale factors; each space's
scale terms and each space multiplier's effect are mat-vecs on them (the data of
:mod:`solvers.scale_descent`).
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from symmetries.action import apply_axis
from symmetries.blocks import split_copies
from symmetries.elements import GatherElement
from symmetries.roles import Role

from solvers.cross_cache import source_map

__all__ = ["ScaleViews"]


class ScaleViews:
    """The positive-scale subproblems of ``spaces`` with their gathers (permutations) and every other
    transform kept: per tensor touching them, ``E = Σ_free A∘B̃`` and ``F = Σ_free B̃∘B̃`` (``B̃``: B with the
    gathers and other transforms applied, no scales), summed over the axes no polished space indexes
    (float64 numpy). ``J = Σ‖A‖² − 2⟨E, w⟩ + ⟨F, w²⟩`` with ``w`` the outer product of the polished axes'
    scale factors (``out``: ``c``, ``in``: ``1/c``, ``var``: ``c²``; ``1`` on the parts of an axis no polished
    space covers — a concatenation splits an axis between spaces). A space's scale terms
    (:mod:`solvers.scaling`) are ``E`` and ``F`` contracted with the other axes' factors and restricted
    to the space's span (:meth:`terms`); the same contractions per block give ``J`` as a function of one
    multiplier per space (:meth:`blocks`) — mat-vecs instead of re-gathering the tensors. :meth:`build`
    returns ``None`` where one tensor meets a polished space twice (a tied axis, ``W ← T W Tᵀ``)."""

    def __init__(self, tensors: list, parts: dict, sizes: dict, names: list | None = None, keys: list | None = None,
                 a_norms: list | None = None, states: list | None = None):
        self.tensors = tensors  # [(E, F, [(axis size, [(space, role, start, stop)…])…])] per tensor
        self.parts = parts  # space → [(tensor, position, (start, stop), role)]
        self.sizes = sizes
        self.names = names or []  # the tensors' names, their inputs (build's reuse key) and ‖A‖² (float64)
        self.keys = keys or []
        self.a_norms = a_norms or []
        self.states = states or [None] * len(tensors)  # per tensor its _Gathered record (or None)
        #: per part: E and F with the part's axis first (views), and the other axes to contract, last first
        self._moved = {sp: [(_front(self.tensors[t][0], pos), _front(self.tensors[t][1], pos),
                             [self.tensors[t][2][i] for i in range(len(self.tensors[t][2]) - 1, -1, -1) if i != pos])
                            for t, pos, _, _ in ps] for sp, ps in parts.items()}
        self._plan: list | None = None  # the blocks' structure (_block_plan), built on first use

    @classmethod
    def build(cls, problem, spaces: list[str], transforms: dict, previous: "ScaleViews | None" = None,
              cross: bool = True) -> "ScaleViews | None":
        """The views of ``spaces`` under ``transforms``; a tensor whose inputs (the gathers of the polished
        spaces, the other elements) are those it had in ``previous`` keeps its ``E``, ``F`` from there, and one
        whose gathers moved at a few positions has only those recomputed (:func:`_gathered_view`). Without
        ``cross`` only ``F`` (and ``E = 0``: for :meth:`terms` and :meth:`blocks` with ``cross=False``)."""
        polished = set(spaces)
        gathers = {s: GatherElement(transforms[s].index, transforms[s].n) for s in spaces}
        fixed = {**transforms, **gathers}
        gb = problem.graph_b
        tensors, parts, keys, a_norms, states = [], {s: [] for s in spaces}, [], [], []
        names = sorted({e.parameter for s in spaces for e in gb.edges_at(s)})
        kept = (dict(zip(previous.names, zip(previous.keys, previous.tensors, previous.a_norms, previous.states)))
                if previous else {})
        for name in names:
            key = tuple((e.space, fixed[e.space].index if e.space in polished else fixed[e.space])
                        for e in gb.edges_of(name) if e.space in fixed)
            old = kept.get(name)
            if old is not None and _same_inputs(old[0], key) and (not cross or old[3] is None or old[3].cross):
                entry, a_norm, state = old[1], old[2], old[3]
            else:
                entry, state = _tensor_view(problem, name, polished, fixed, cross, old)
                if entry is None:
                    return None
                a_norm = old[2] if old is not None and not math.isnan(old[2]) else (
                    float(torch.linalg.vector_norm(problem.params_a[name].detach().cpu(), dtype=torch.float64) ** 2)
                    if cross else math.nan)
            tensors.append(entry)
            keys.append(key)
            a_norms.append(a_norm)
            states.append(state)
            for pos, (_, spans) in enumerate(entry[2]):
                for sp, role, start, stop in spans:
                    parts[sp].append((len(tensors) - 1, pos, (start, stop), role))
        return cls(tensors, parts, {s: problem.sizes[s][1] for s in spaces}, names, keys, a_norms, states)

    def tensor_objectives(self, scales: dict) -> dict[str, float]:
        """``J_p = ‖A_p − w∘B̃_p‖² = ‖A_p‖² − 2⟨E, w⟩ + ⟨F, w²⟩`` of every tensor under ``scales``."""
        return {name: a_norm + sum(f - 2 * e for e, f, _ in blocks)
                for name, a_norm, blocks in zip(self.names, self.a_norms, self._blocks_by_tensor(scales, True))}

    def terms(self, space: str, scales: dict, cross: bool = True) -> dict:
        """``α, β, γ, δ, ζ, ε`` (float64 numpy, one per unit) of ``space`` for the other spaces' ``scales``
        (numpy; without ``cross``: the norms ``β, δ, ε`` only)."""
        n = self.sizes[space]
        out = {r: [np.zeros(n), np.zeros(n)] for r in Role}
        for (_, _, (start, stop), role), (x, y, others) in zip(self.parts[space], self._moved[space]):
            for axis in others:  # the other axes, in axis order after the part's: contracted last first
                w = _weights(*axis, scales)
                x, y = (x @ w if cross else x), y @ (w * w)
            if cross:
                out[role][0] += x[start:stop]
            out[role][1] += y[start:stop]
        (a, b), (g, d), (z, e) = (out[r] for r in (Role.OUT, Role.IN, Role.VAR))
        names = dict(alpha=a, beta=b, gamma=g, delta=d, zeta=z, eps=e)
        return {k: v for k, v in names.items() if cross or k in ("beta", "delta", "eps")}

    def neighbours(self, spaces: list[str]) -> dict[str, set]:
        """Per space of ``spaces`` the others of ``spaces`` that share a tensor with it: the spaces its scale
        terms (:meth:`terms`) read."""
        touching: dict[str, set] = {s: set() for s in spaces}
        for _, _, axes in self.tensors:
            met = [sp for _, spans in axes for sp, *_ in spans]
            for sp in met:
                if sp in touching:
                    touching[sp].update(x for x in met if x != sp and x in touching)
        return touching

    def colours(self, spaces: list[str]) -> list[list[str]]:
        """``spaces`` split into classes no tensor joins (greedy, in order): the scale problems of one class
        are independent, so solving them together is the same as one after another."""
        touching = self.neighbours(spaces)
        colour: dict[str, int] = {}
        for sp in spaces:
            taken = {colour[x] for x in touching[sp] if x in colour}
            colour[sp] = next(c for c in range(len(spaces) + 1) if c not in taken)
        return [[sp for sp in spaces if colour[sp] == c] for c in range(max(colour.values(), default=-1) + 1)]

    def blocks(self, scales: dict, cross: bool = True) -> list[tuple[float, float, dict]]:
        """``J − Σ‖A‖² = Σ_b (−2 e_b m_b + f_b m_b²)`` with ``m_b = Π_s λ_s^{k_s}`` when every space's scales are
        multiplied by ``λ_s``: ``(e_b, f_b, {space: k_s})`` per block of every tensor (one span per polished
        axis; ``k``: ``out`` 1, ``in`` −1, ``var`` 2; ``e_b = 0`` without ``cross``)."""
        return [b for blocks in self._blocks_by_tensor(scales, cross) for b in blocks]

    def _blocks_by_tensor(self, scales: dict, cross: bool) -> list[list[tuple[float, float, dict]]]:
        out = []
        for (e_, f_, axes), combos in zip(self.tensors, self._block_plan()):
            fulls = [_weights(size, spans, scales) for size, spans in axes]
            mine = []
            for picks, k in combos:
                x, y = e_, f_
                for i in range(len(picks) - 1, -1, -1):  # contract the last axis first
                    pick, full = picks[i], fulls[i]
                    if isinstance(pick, tuple):  # a span: its factors, zero elsewhere on the axis
                        start, stop = pick
                        if (start, stop) != (0, full.shape[0]):
                            x, y, full = x[..., start:stop], y[..., start:stop], full[start:stop]
                        w = full
                    else:  # the rest of the axis: factor 1 there
                        w = pick
                    x, y = (x @ w if cross else x), y @ (w * w)
                mine.append((float(x) if cross else 0.0, float(y), k))
            out.append(mine)
        return out

    def _block_plan(self) -> list:
        """Per tensor its blocks, which do not depend on the scales: for each, per polished axis a span
        ``(start, stop)`` or the rest of the axis (a 0/1 mask), and ``{space: k_s}``."""
        if self._plan is None:
            self._plan = []
            for _, _, axes in self.tensors:
                choices = []
                for size, spans in axes:
                    opts, rest = [], np.ones(size, dtype=bool)
                    for sp, role, start, stop in spans:
                        rest[start:stop] = False
                        opts.append(((start, stop), {sp: _EXPONENT[role]}))
                    if rest.any():
                        opts.append((rest.astype(np.float64), {}))
                    choices.append(opts)
                combos = []
                for combo in itertools.product(*choices):
                    k: dict = {}
                    for _, ks in combo:
                        for sp, v in ks.items():
                            k[sp] = k.get(sp, 0) + v
                    combos.append(([pick for pick, _ in combo], k))
                self._plan.append(combos)
        return self._plan


#: Above this fraction of moved positions (summed over a tensor's polished axes) its E is recomputed whole.
MAX_MOVED = 0.5


@dataclass
class _Gathered:
    """How a tensor's ``E``, ``F`` were made where its polished axes carry gathers only (:func:`_gathered_view`):
    ``F`` is ``f_raw`` (``Σ_free B∘B`` before the gathers) re-indexed, and ``E`` changes only at the positions
    whose source moved."""
    layout: tuple  # ((axis, size, spans)…) of the polished axes
    others: tuple  # ((space, element)…) the tensor's other transforms
    sigma: tuple  # per polished axis the source map B̃[…, p, …] = B[…, σ(p), …]
    f_raw: np.ndarray
    cross: bool  # E was computed (else zeros)


def _tensor_view(problem, name: str, polished: set, fixed: dict, cross: bool = True, old: tuple | None = None):
    """``((E, F, [(axis size, spans)…]), _Gathered or None)`` of one tensor (:class:`ScaleViews`), ``(None, None)``
    where a polished space meets it twice or a repeated polished edge shares its axis. ``old``: the
    tensor's ``(key, entry, ‖A‖², state)`` in the previous views."""
    b = problem.params_b[name]
    by_axis = defaultdict(list)
    for e in problem.graph_b.edges_of(name):
        if e.space in fixed:
            by_axis[e.axis % b.dim()].append(e)
    layout = []
    for ax, group in sorted(by_axis.items()):
        mine = [e for e in group if e.space in polished]
        if mine and (len(mine) < len(group) or any(e.repeat is not None for e in mine)):
            return _general_view(problem, name, polished, fixed, by_axis), None
        if mine:
            layout.append((ax, b.shape[ax], tuple(sorted(((e.space, e.role, *e.span(b.shape[ax])) for e in mine),
                                                         key=lambda x: x[2]))))
    met = [sp for _, _, spans in layout for sp, *_ in spans]
    if len(set(met)) < len(met):
        return (None, None)  # a space met twice (tied axis): use the per-space path
    return _gathered_view(problem, name, by_axis, tuple(layout), fixed, cross, old)


def _gathered_view(problem, name: str, by_axis: dict, layout: tuple, fixed: dict, cross: bool, old):
    """A tensor whose polished axes carry gathers only: ``B̃ = base`` re-indexed along them (``base``: B with the
    other transforms applied). ``F`` from ``f_raw`` (kept from ``old`` when the other transforms are the same);
    ``E`` from ``old``'s where the sources moved at few positions — those slabs recomputed, exactly as a whole
    recomputation would give them — else whole."""
    pol = [ax for ax, _, _ in layout]
    others = tuple((e.space, fixed[e.space]) for ax, g in sorted(by_axis.items()) if ax not in pol for e in g)
    b = problem.params_b[name].detach()
    sigma = tuple(source_map(b, ax, by_axis[ax], fixed) for ax in pol)
    state = old[3] if old is not None else None
    same = state is not None and state.layout == layout and _same_inputs(state.others, others)
    free = [ax for ax in range(b.dim()) if ax not in pol]
    base = None

    def get_base():
        nonlocal base
        if base is None:
            base = b
            for ax, group in sorted(by_axis.items()):
                if ax not in pol:
                    base = apply_axis(base, ax, group, fixed)
            base = base.cpu()
        return base

    f_raw = state.f_raw if same else _sum_free(get_base().double().square(), free)
    f_ = f_raw[np.ix_(*(s.numpy() for s in sigma))]
    if not cross:
        e_ = np.zeros_like(f_)
    else:
        a = problem.params_a[name].detach().cpu()
        moved = ([torch.nonzero(s0 != s1).flatten() for s0, s1 in zip(state.sigma, sigma)]
                 if same and state.cross else None)
        if moved is not None and sum(p.numel() / s.numel() for p, s in zip(moved, sigma)) <= MAX_MOVED:
            e_ = old[1][0].copy()
            for i, rows in enumerate(moved):
                if rows.numel():
                    at = [slice(None)] * e_.ndim
                    at[i] = rows.numpy()
                    e_[tuple(at)] = _cross_slab(a, get_base(), pol, sigma, free, i, rows)
        else:
            e_ = _cross_slab(a, get_base(), pol, sigma, free, None, None)
    axes = [(size, list(spans)) for _, size, spans in layout]
    return (e_, f_, axes), _Gathered(layout, others, sigma, f_raw, cross)


def _cross_slab(a: torch.Tensor, base: torch.Tensor, pol: list, sigma: tuple, free: list, i, rows) -> np.ndarray:
    """``Σ_free A∘B̃`` (float64) — restricted to positions ``rows`` of the ``i``-th polished axis when given."""
    x, y = a, base
    for j, (ax, s) in enumerate(zip(pol, sigma)):
        if j == i:
            x, y = x.index_select(ax, rows), y.index_select(ax, s[rows])
        else:
            y = y.index_select(ax, s)
    return _sum_free(x.double() * y.double(), free)


def _sum_free(x: torch.Tensor, free: list) -> np.ndarray:
    return (x.sum(free) if free else x).numpy()


def _general_view(problem, name: str, polished: set, fixed: dict, by_axis: dict):
    """``(E, F, axes)`` of a tensor with a repeated polished edge or an axis polished spaces share with others
    (``by_axis``: its edges at ``fixed`` spaces per axis): the transforms applied to B, then the sums (``None``
    where a repeated polished edge shares its axis)."""
    b, a = problem.params_b[name], problem.params_a[name]
    axes = []  # (axis, size, [(space, role, start, stop)…]) of the axes a polished space indexes
    repeats = {}  # axis → (count, block) of a repeated polished edge (the axis's only edge)
    for ax, group in sorted(by_axis.items()):
        mine = [(e.space, e.role, *e.span(b.shape[ax])) for e in group if e.space in polished]
        rep = [e.repeat for e in group if e.space in polished and e.repeat is not None]
        if rep:
            if len(group) > 1 or group[0].span(b.shape[ax]) != (0, b.shape[ax]):
                return None  # a repeated edge beside others on one axis: use the per-space path
            repeats[ax] = rep[0]
        if mine:
            axes.append((ax, b.shape[ax], sorted(mine, key=lambda x: x[2])))
        b = apply_axis(b, ax, group, fixed)
    met = [sp for _, _, spans in axes for sp, *_ in spans]
    if len(set(met)) < len(met):
        return None  # a space met twice (tied axis): use the per-space path
    for ax in sorted(repeats, reverse=True):  # the copies become one more free axis, before the units
        a, b = split_copies(a, ax, *repeats[ax]), split_copies(b, ax, *repeats[ax])
    shift = lambda ax: ax + sum(r <= ax for r in repeats)  # noqa: E731
    axes = [(shift(ax), size // repeats[ax][0], [(sp, role, 0, size // repeats[ax][0]) for sp, role, *_ in spans])
            if ax in repeats else (shift(ax), size, spans) for ax, size, spans in axes]
    free = [ax for ax in range(b.dim()) if ax not in {x for x, _, _ in axes}]
    a64, b64 = a.detach().cpu().double(), b.detach().cpu().double()
    e_, f_ = _sum_free(a64 * b64, free), _sum_free(b64 * b64, free)
    return e_, f_, [(size, spans) for _, size, spans in axes]


def _same_inputs(old: tuple, new: tuple) -> bool:
    """Whether two build keys name the same inputs: equal gathers of the polished spaces, the same other
    elements."""
    return len(old) == len(new) and all(
        s0 == s1 and (x0 is x1 or (isinstance(x0, torch.Tensor) and isinstance(x1, torch.Tensor)
                                   and x0.shape == x1.shape and torch.equal(x0, x1)))
        for (s0, x0), (s1, x1) in zip(old, new))


_EXPONENT = {Role.OUT: 1, Role.IN: -1, Role.VAR: 2}


def _front(x: np.ndarray, pos: int) -> np.ndarray:
    """``x`` with axis ``pos`` first, the others in order (a view)."""
    return x if pos == 0 else x.transpose([pos] + [i for i in range(x.ndim) if i != pos])


def _weights(size: int, spans, scales: dict) -> np.ndarray:
    """One axis's scale factors: each polished space's on its span, ``1`` elsewhere."""
    if len(spans) == 1 and spans[0][2:] == (0, size):
        return _factor(scales[spans[0][0]], spans[0][1])
    w = np.ones(size)
    for sp, role, start, stop in spans:
        w[start:stop] = _factor(scales[sp], role)
    return w


def _factor(c: np.ndarray, role: Role) -> np.ndarray:
    return c if role is Role.OUT else (1.0 / c if role is Role.IN else c * c)
