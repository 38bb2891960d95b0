"""Learned matching: Git Re-Basin's straight-through estimator (Theus et al., Algorithm 1).

Each searched space ``s`` carries a latent matrix ``L_s`` (initialised at weight matching's
transform). The forward pass uses the class oracle's projection ``T_s = argmax_{T ∈ class} ⟨T, L_s⟩``
and the backward pass the identity (straight through: ``T̃_s = T_s + L_s − sg(L_s)``); Adam
minimises the loss of the interpolated model

    ℓ(L) = E_{α ~ U(a, b)} loss( f((1 − α) θ_A + α T̃·θ_B ; x), y ),    (a, b) = (0.4, 0.6),

on the user's data. The returned transforms are the projections that give the lower midpoint
loss (``α = 1/2``) on the evaluation data: the final latents' or weight matching's start.
Classes: permutations, orthogonal maps, and head-structured spaces with such an inner class
(spaces sharing a ``head_group`` are projected jointly: one head permutation).
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

import numpy as np
import torch
from torch.func import functional_call

from symmetries.action import apply
from symmetries.assignment import assignment_permutation
from symmetries.classes import HeadStructured, Orthogonal, Permutation
from symmetries.elements import DenseElement, Element, HeadElement
from symmetries.transforms import TransformSet

from solvers.errors import SolverInputError
from solvers.losses import mean_loss
from solvers.registry import Solver, get, register
from solvers.solution import Solution
from solvers.subproblems import head_blocks

__all__ = ["LearnedMatching", "project_latents", "project_heads", "midpoint_loss"]


def project_heads(latents: dict, classes: dict, names: list[str], backend: str = "auto") -> dict[str, Element]:
    """The joint oracle of head-tied spaces ``names`` (``classes[s] = HeadStructured(h, inner)``, inner
    norm-keeping): ``argmax Σ_s ⟨T_s, L_s⟩`` over one head permutation ``π`` shared by the spaces and
    per-head maps — ``π = argmax Σ_s Σ_i ⟨E_s,iπ(i), L_s[i, π(i)]⟩`` (LAP) with each block's best inner
    map ``E`` (the inner oracle). Exact: for a fixed ``π`` the blocks separate."""
    h = classes[names[0]].num_heads
    best, value = {}, np.zeros((h, h))
    for s in names:
        blocks = head_blocks(latents[s].detach().cpu().to(torch.float64), h)
        inner = classes[s].inner
        best[s] = [[inner.project(blocks[i, j], backend=backend) for j in range(h)] for i in range(h)]
        value += np.array([[float((best[s][i][j].as_matrix() * blocks[i, j]).sum()) for j in range(h)]
                           for i in range(h)])
    perm = assignment_permutation(value, backend=backend)
    return {s: HeadElement(perm, [best[s][i][int(perm[i])] for i in range(h)]) for s in names}


def project_latents(graph, latents: dict, classes: dict, backend: str = "auto") -> TransformSet:
    """The class oracle at every latent (head groups jointly)."""
    out, groups = {}, {}
    for s, lat in latents.items():
        group = graph.space(s).head_group
        if isinstance(classes[s], HeadStructured) and group is not None:
            groups.setdefault(group, []).append(s)
        else:
            out[s] = classes[s].project(lat.detach().cpu().to(torch.float64), backend=backend)
    for names in groups.values():
        out.update(project_heads(latents, classes, names, backend))
    return TransformSet({s: out[s] for s in latents})


def _ste(hard: TransformSet, latents: dict) -> TransformSet:
    """``T̃ = T + L − sg(L)`` as dense elements (``T⁻¹ = Tᵀ`` for the supported classes)."""
    els = {}
    for s, lat in latents.items():
        t = hard[s].as_matrix().to(lat) + lat - lat.detach()
        els[s] = DenseElement(t, t.T)
    return TransformSet(els)


def _hard_keys(graph, params: dict, module) -> set[str]:
    """Tensors that take the hard projection, not the straight-through one: the module's buffers
    (BatchNorm's running statistics: no gradient is wanted there) and any tensor a space acts on
    as a variance (``var`` accepts only monomial maps, never the dense ``T̃``)."""
    buffers = {name for name, _ in module.named_buffers(remove_duplicate=False)} if module is not None else set()
    return {k for k in params if k in buffers or any(e.role.value == "var" for e in graph.edges_of(k))}


def _align(graph, params_b: dict, hard: TransformSet, latents: dict, hard_keys: set[str]) -> dict:
    """``T̃·θ_B``: parameters by the straight-through ``T̃`` (the gradient reaches the latents),
    ``hard_keys`` by the projected ``T`` itself (a permutation for permutation classes, so running
    variances stay variances)."""
    soft = {k: v for k, v in params_b.items() if k not in hard_keys}
    fixed = {k: v for k, v in params_b.items() if k in hard_keys}
    out = apply(graph, soft, _ste(hard, latents), check=False)
    if fixed:
        first = next((v for v in fixed.values() if v.is_floating_point()), next(iter(fixed.values())))
        dtype = first.dtype if first.is_floating_point() else None
        out.update(apply(graph, fixed, hard.to(first.device, dtype), check=False))
    return out


def _mix(params_a: dict, aligned_b: dict, alpha: float) -> dict:
    """``(1 − α) θ_A + α θ_B'``; other tensors (BatchNorm's ``num_batches_tracked``) are copied, since a
    module in train mode updates them in place."""
    return {k: (1 - alpha) * a + alpha * aligned_b[k] if a.is_floating_point() else a.clone()
            for k, a in params_a.items()}


def _is_pair(data) -> bool:
    """Whether ``data`` is one pair of tensors ``(x, y)`` (else: an iterable of ``(x, y)`` batches)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


def _batches(data, batch_size: int, seed: int):
    """Endless minibatches from a pair ``(x, y)`` (shuffled, seeded) or an iterable of batches."""
    if _is_pair(data):
        x, y = data
        if len(x) != len(y):
            raise SolverInputError(f"data: {len(x)} inputs but {len(y)} targets")
        g = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                yield x[idx], y[idx]
    else:
        for batch in itertools.cycle(data):
            yield batch[0], batch[1]


def _eval_batches(data, limit: int):
    if _is_pair(data):
        return [tuple(data)]
    return [(b[0], b[1]) for b in itertools.islice(iter(data), limit)]


def midpoint_loss(module, graph, params_a, params_b, transforms, batches, loss_fn, alpha: float = 0.5) -> float:
    """Mean loss of ``(1 − α) θ_A + α T·θ_B`` over ``batches``."""
    aligned = apply(graph, params_b, transforms, check=False)
    mixed = _mix(params_a, aligned, alpha)
    with torch.no_grad():
        total, count = 0.0, 0
        for x, y in batches:
            total += float(loss_fn(functional_call(module, mixed, (x,)), y)) * len(x)
            count += len(x)
    return total / max(count, 1)


class LearnedMatching(Solver):
    """Solver ``"learned_matching"`` (STE). Needs ``data`` (``(x, y)`` tensors or a DataLoader of
    ``(x, y)``) and a module: ``models=(module_a, module_b)`` or an ``Architecture`` as the graph.

    Options: ``loss_fn`` (``(outputs, targets) → scalar`` mean, default :func:`solvers.losses.mean_loss`:
    per-token cross-entropy, so ``(batch, time, vocab)`` logits work), ``steps``
    (``300``), ``lr`` (Adam, ``0.05``), ``batch_size`` (``256``), ``alpha`` (``(0.4, 0.6)``),
    ``selection_data`` (held-out ``(x, y)`` or DataLoader on which the learned and weight matching's
    transforms are compared; default: the training ``data``), ``eval_batches`` (DataLoader batches
    for that comparison, ``10``), ``backend``. ``objective_before`` / ``objective_after``: midpoint
    loss on the selection data at weight matching's transforms and at the returned ones.

    Tensors that are buffers of the module (BatchNorm's running statistics) or variances take the
    hard projection in the forward pass; the straight-through gradient flows through parameters.
    The module runs in the mode it is in (an ``Architecture``'s modules: eval, so BatchNorm uses the
    interpolated running statistics; a module in train mode uses batch statistics). The inputs are
    never modified.
    """

    name = "learned_matching"
    needs_data = True
    description = ("straight-through estimator (Git Re-Basin / Theus et al.): Adam on the loss of the interpolated "
                   "model; heads: HeadStructured(k, Permutation | Orthogonal) only (Invertible has no projection)")
    classes = (Permutation, Orthogonal, HeadStructured)
    head_inner = (Permutation, Orthogonal)
    head_refusal = ("the straight-through estimator needs the inner class's projection argmax_T <T, L>, and an "
                    "invertible (GL(d)) per-head map has none (the maximum is unbounded; the builder's default "
                    "HeadStructured(k, Invertible()) is searched by weight_matching)")

    def solve(self, problem, *, loss_fn: Callable | None = None, steps: int = 300, lr: float = 0.05,
              batch_size: int = 256, alpha: tuple[float, float] = (0.4, 0.6), eval_batches: int = 10,
              selection_data=None, backend: str = "auto") -> Solution:
        start = time.perf_counter()
        if problem.data is None:
            raise SolverInputError("learned matching needs data=(x, y) or a DataLoader of (x, y) batches")
        if problem.models is None:
            raise SolverInputError("learned matching needs models=(module_a, module_b), or an Architecture as the "
                                   "graph so that the module can be built")
        if problem.width_changing:
            raise SolverInputError("learned matching aligns models of equal widths")
        lo, hi = float(alpha[0]), float(alpha[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise SolverInputError(f"alpha must be a range inside [0, 1], got {alpha!r}")
        loss_fn = loss_fn or mean_loss
        module = problem.models[0]
        spaces = problem.spaces
        init = problem.init
        if init is None:
            wm = get("weight_matching").solve(problem)
            init = wm.transforms
        init = TransformSet({s: init[s] for s in spaces if s in init})
        latents = {s: (init[s].as_matrix() if s in init else torch.eye(problem.sizes[s][0], dtype=torch.float64))
                   .to(device=problem.device, dtype=problem.dtype).clone().requires_grad_(True) for s in spaces}
        start_transforms = project_latents(problem.graph, latents, problem.classes, backend)
        opt = torch.optim.Adam(list(latents.values()), lr=lr)
        gen = torch.Generator().manual_seed(problem.seed)
        history = []
        batches = _batches(problem.data, batch_size, problem.seed)
        hard_keys = _hard_keys(problem.graph, problem.params_b, module)
        for _ in range(int(steps)):
            x, y = next(batches)
            a = lo + (hi - lo) * float(torch.rand((), generator=gen))
            hard = project_latents(problem.graph, latents, problem.classes, backend)
            aligned = _align(problem.graph, problem.params_b, hard, latents, hard_keys)
            loss = loss_fn(functional_call(module, _mix(problem.params_a, aligned, a), (x,)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
        final = project_latents(problem.graph, latents, problem.classes, backend)
        evals = _eval_batches(problem.data if selection_data is None else selection_data, eval_batches)
        before = midpoint_loss(module, problem.graph, problem.params_a, problem.params_b, start_transforms,
                               evals, loss_fn)
        after = midpoint_loss(module, problem.graph, problem.params_a, problem.params_b, final, evals, loss_fn)
        chosen, value = (final, after) if after <= before else (start_transforms, before)
        extra = dict(final_midpoint_loss=after, start_midpoint_loss=before, kept="learned" if after <= before
                     else "weight_matching", weight_distance=problem.objective(chosen), steps=int(steps),
                     selection="data" if selection_data is None else "selection_data")
        return Solution(chosen, objective_before=before, objective_after=value, iterations=int(steps),
                        wall_time=time.perf_counter() - start, status="max_iter", history=history, solver=self.name,
                        objective="midpoint loss L((theta_A + T.theta_B) / 2) on the "
                                  + ("training data" if selection_data is None else "selection data"),
                        extra=extra, graph=problem.graph_b)


register("learned_matching", LearnedMatching)
