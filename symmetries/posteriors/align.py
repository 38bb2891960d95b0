"""Aligning two mean-field Gaussian posteriors with one transform acting on means and stds.

Cost: the squared 2-Wasserstein distance between diagonal Gaussians,
``W₂²(q_A, T q_B) = ‖μ_A − Tμ_B‖² + ‖σ_A − |T|σ_B‖²``, minimised by coordinate descent over
spaces: a first pass in declaration order scores each space only on tensors whose other axes
are settled (input side first), then sweeps in random order from a seed until a sweep changes
nothing (Git Re-Basin's weight matching, with this cost). At one
space, with the others fixed, it is a linear assignment: permutations maximise
``Σ_j C_μ[j,π(j)] + C_σ[j,π(j)]``; signed permutations ``|C_μ| + C_σ`` with ``s_j = sign C_μ``.
Only maps keeping the mean-field family are allowed: permutations and sign flips (an
orthogonal or invertible map makes the covariance dense).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from symmetries.assignment import assignment_permutation
from symmetries.classes import HeadStructured, Permutation, SignedPermutation, SignFlip, SymmetryClass, Trivial
from symmetries.elements import GatherElement
from symmetries.errors import NotAdmittedError
from symmetries.transforms import TransformSet
from symmetries.posteriors.gaussian import MeanField

__all__ = ["align_posteriors", "PosteriorAlignment", "MeanFieldClassError", "wasserstein2", "MEAN_FIELD_CLASSES"]

#: Classes whose elements map a mean-field Gaussian to a mean-field Gaussian (and that we align over).
MEAN_FIELD_CLASSES = (Trivial, Permutation, SignFlip, SignedPermutation)


class MeanFieldClassError(NotAdmittedError):
    """A class that does not keep the mean-field (diagonal) Gaussian family was requested."""


@dataclass(frozen=True)
class PosteriorAlignment:
    """``transforms`` to apply to B (means with ``T``, stds with ``|T|``), W₂² before/after, sweeps."""
    transforms: TransformSet
    aligned: MeanField
    cost_before: float
    cost_after: float
    sweeps: int


def wasserstein2(a: MeanField, b: MeanField) -> float:
    """Squared 2-Wasserstein distance ``‖μ_A − μ_B‖² + ‖σ_A − σ_B‖²`` between diagonal Gaussians."""
    total = 0.0
    for k in a.mean:
        total += float(((a.mean[k].double() - b.mean[k].double()) ** 2).sum())
        total += float(((a.std[k].double() - b.std[k].double()) ** 2).sum())
    return total


def _classes(graph, classes) -> dict[str, SymmetryClass]:
    out = {}
    for space in graph.spaces():
        if isinstance(classes, SymmetryClass):
            cls = classes
        elif isinstance(classes, Mapping) and space.name in classes:
            cls = classes[space.name]
        else:
            cls = next((c() for c in (SignedPermutation, Permutation, SignFlip)
                        if graph.admits(space.name, c())), Trivial())
        if not isinstance(cls, MEAN_FIELD_CLASSES) or isinstance(cls, HeadStructured):
            raise MeanFieldClassError(
                f"{cls!r} at space {space.name!r} does not keep the mean-field Gaussian family (a non-monomial map "
                f"makes the covariance dense; scalings are not supported): {_admitted_choices(graph, space.name)}",
                space=space.name, cls=cls)
        if not graph.admits(space.name, cls):
            raise NotAdmittedError(f"space {space.name!r} admits {', '.join(map(repr, space.classes))}; "
                                   f"{cls!r} is not among them or their subclasses", space=space.name, cls=cls)
        if space.head_group is not None:
            raise MeanFieldClassError(f"space {space.name!r} belongs to head group {space.head_group!r}; posterior "
                                      f"alignment of attention heads is not supported", space=space.name, cls=cls)
        out[space.name] = cls
    if isinstance(classes, Mapping):
        for name in classes:
            graph.space(name)  # UnknownSpaceError for a misspelt space
    return out


def _admitted_choices(graph, space: str) -> str:
    """The mean-field classes ``space`` admits, as advice (only those: SignFlip is no choice for ReLU)."""
    names = [c.__name__ for c in (Permutation, SignFlip, SignedPermutation) if graph.admits(space, c())]
    if not names:
        return "the space admits none of Permutation, SignFlip and SignedPermutation (use Trivial there)"
    if len(names) == 1:
        return f"choose {names[0]} (the only mean-field class the space admits)"
    return f"choose {', '.join(names[:-1])} or {names[-1]} (the mean-field classes the space admits)"


def _settled(graph, e, solved: set) -> bool:
    """Whether every other axis of ``e.parameter`` indexes no space or an already solved one."""
    return all(o.space in solved for o in graph.edges_of(e.parameter) if o.axis != e.axis)


def _scores(graph, space: str, a: MeanField, b: MeanField, solved: set | None = None):
    """``C_μ[j, i] = Σ_edges ⟨μ_A[..j..], μ_B[..i..]⟩`` and the same for σ (float64); with ``solved``,
    only over edges whose tensors are otherwise settled (all of them if none is)."""
    n = graph.space(space).size
    cm = torch.zeros(n, n, dtype=torch.float64)
    cs = torch.zeros(n, n, dtype=torch.float64)
    seen = set()
    edges = graph.edges_at(space)
    if solved is not None:
        edges = [e for e in edges if _settled(graph, e, solved)] or edges
    for e in edges:
        x = a.mean[e.parameter]
        key = (e.parameter, e.axis % x.dim(), e.span(x.shape[e.axis]))
        if key in seen:  # a tied axis counts once
            continue
        seen.add(key)
        start, stop = key[2]

        def rows(t):
            return t.narrow(key[1], start, stop - start).movedim(key[1], 0).reshape(n, -1).double().cpu()
        cm += rows(a.mean[e.parameter]) @ rows(b.mean[e.parameter]).T
        cs += rows(a.std[e.parameter]) @ rows(b.std[e.parameter]).T
    return cm, cs


def _solve_space(cls: SymmetryClass, cm: torch.Tensor, cs: torch.Tensor, backend: str) -> GatherElement:
    n = cm.shape[0]
    if isinstance(cls, Trivial):
        return GatherElement.identity(n)
    if isinstance(cls, SignFlip):
        return GatherElement.monomial(torch.arange(n), torch.where(torch.diagonal(cm) < 0, -1.0, 1.0).double())
    signed = isinstance(cls, SignedPermutation)
    score = (cm.abs() if signed else cm) + cs
    perm_t = torch.from_numpy(assignment_permutation(score.numpy(), maximize=True, backend=backend))
    if not signed:
        return GatherElement(perm_t, n)
    vals = cm[torch.arange(n), perm_t]
    return GatherElement.monomial(perm_t, torch.where(vals < 0, -1.0, 1.0).double())


def _gain(el: GatherElement, cm: torch.Tensor, cs: torch.Tensor) -> float:
    """``⟨T, C_μ⟩ + ⟨|T|, C_σ⟩`` (the part of ``−W₂²/2`` that depends on this space's map)."""
    j = torch.arange(cm.shape[0])
    sign = torch.ones(cm.shape[0], dtype=torch.float64) if el.out_scale is None else el.out_scale.double()
    return float((sign * cm[j, el.index]).sum() + (sign.abs() * cs[j, el.index]).sum())


def align_posteriors(graph, post_a: MeanField, post_b: MeanField, *,
                     classes: SymmetryClass | Mapping[str, SymmetryClass] | None = None, max_sweeps: int = 100,
                     seed: int = 0, backend: str = "auto") -> PosteriorAlignment:
    """The monomial ``T`` (one per space) minimising ``W₂²(q_A, T q_B)``; see the module docstring.

    ``classes``: one class, ``{space: class}``, or ``None`` (signed permutations where the space
    admits them, else permutations). Others raise :class:`MeanFieldClassError`.
    """
    chosen = _classes(graph, classes)
    graph.validate(post_a.mean)
    graph.validate(post_b.mean)
    from symmetries.landscape.interpolation import check_compatible
    check_compatible(post_a.mean, post_b.mean)
    rng = np.random.default_rng(seed)
    names = [s for s in chosen if not isinstance(chosen[s], Trivial)]
    current = {s: GatherElement.identity(graph.space(s).size) for s in chosen}
    before = wasserstein2(post_a, post_b)
    # first pass in declaration (forward) order, each space scored only on tensors already settled
    solved = {s for s in chosen if isinstance(chosen[s], Trivial)}
    for s in names:
        b_other = post_b.transform(graph, TransformSet({k: v for k, v in current.items() if k != s}))
        current[s] = _solve_space(chosen[s], *_scores(graph, s, post_a, b_other, solved), backend)
        solved.add(s)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        changed = False
        for i in rng.permutation(len(names)):
            s = names[i]
            others = TransformSet({k: v for k, v in current.items() if k != s})
            b_other = post_b.transform(graph, others)
            cm, cs = _scores(graph, s, post_a, b_other)
            el = _solve_space(chosen[s], cm, cs, backend)
            if _gain(el, cm, cs) > _gain(current[s], cm, cs) + 1e-12 * (1.0 + float(cs.abs().max())):
                changed, current[s] = True, el
        if not changed:
            break
    transforms = TransformSet(current)
    aligned = post_b.transform(graph, transforms)
    return PosteriorAlignment(transforms, aligned, before, wasserstein2(post_a, aligned), sweeps)
