"""Aligning two mean-field Gaussian posteriors with one transform acting on means and stds.

Cost: the squared 2-Wasserstein distance between diagonal Gaussians,
``W₂²(q_A, T q_B) = ‖μ_A − Tμ_B‖² + ‖σ_A − |T|σ_B‖²``, minimised by the registered solver
``posterior_matching`` (:mod:`solvers.algorithms.posterior`: weight matching on a graph holding
the means with their edges and the stds in role ``var``, so that each space is solved exactly by
its class — LAP on ``C_μ + C_σ``, signed LAP on ``|C_μ| + C_σ``). Only maps keeping the
mean-field family are allowed: permutations and sign flips (an orthogonal or invertible map makes
the covariance dense).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from symmetries.classes import HeadStructured, Permutation, SignedPermutation, SignFlip, SymmetryClass, Trivial
from symmetries.errors import NotAdmittedError
from symmetries.policy import resolve_classes
from symmetries.transforms import TransformSet
from symmetries.posteriors.gaussian import MeanField

from solvers.algorithms.posterior import MEAN_FIELD_CLASSES  # the classes posterior_matching searches

__all__ = ["align_posteriors", "PosteriorAlignment", "MeanFieldClassError", "wasserstein2", "MEAN_FIELD_CLASSES"]



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
    """The class per space (:func:`symmetries.resolve_classes`; unnamed spaces: signed permutations where
    admitted, else permutations, else sign flips), each checked to keep the mean-field family."""
    given = classes if isinstance(classes, Mapping) else \
        ({} if classes is None else {s.name: classes for s in graph.spaces()})
    defaults = {s.name: next((c() for c in (SignedPermutation, Permutation, SignFlip) if graph.admits(s.name, c())),
                             Trivial()) for s in graph.spaces() if s.name not in given}
    out = resolve_classes(graph, {**defaults, **given}, strict=False)
    for space in graph.spaces():
        cls = out[space.name]
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
    return out


def _admitted_choices(graph, space: str) -> str:
    """The mean-field classes ``space`` admits, as advice (only those: SignFlip is no choice for ReLU)."""
    names = [c.__name__ for c in (Permutation, SignFlip, SignedPermutation) if graph.admits(space, c())]
    if not names:
        return "the space admits none of Permutation, SignFlip and SignedPermutation (use Trivial there)"
    if len(names) == 1:
        return f"choose {names[0]} (the only mean-field class the space admits)"
    return f"choose {', '.join(names[:-1])} or {names[-1]} (the mean-field classes the space admits)"


def align_posteriors(graph, post_a: MeanField, post_b: MeanField, *,
                     classes: SymmetryClass | Mapping[str, SymmetryClass] | None = None, max_sweeps: int = 100,
                     seed: int = 0, backend: str = "auto") -> PosteriorAlignment:
    """The monomial ``T`` (one per space) minimising ``W₂²(q_A, T q_B)``; see the module docstring.

    ``classes``: one class, ``{space: class}``, or ``None`` (signed permutations where the space
    admits them, else permutations). Others raise :class:`MeanFieldClassError`.
    """
    import solvers  # the application layer runs the registered solver

    chosen = _classes(graph, classes)
    graph.validate(post_a.mean)
    graph.validate(post_b.mean)
    from symmetries.landscape.interpolation import check_compatible
    check_compatible(post_a.mean, post_b.mean)
    sol = solvers.solve("posterior_matching", graph, post_a.mean, post_b.mean, classes=chosen,
                        stds=(post_a.std, post_b.std), seed=seed, max_iter=max_sweeps, backend=backend)
    aligned = post_b.transform(graph, sol.transforms)
    return PosteriorAlignment(sol.transforms, aligned, wasserstein2(post_a, post_b), wasserstein2(post_a, aligned),
                              sol.iterations)
