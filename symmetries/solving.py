"""Running the ``solvers`` package's registered solvers on a whole architecture (for the commands).

For each space a solver is asked to search the class it supports that the space admits,
preferring ``Permutation`` (the classic alignment), then the space's declared classes, then
their subclasses in the lattice; ``applicable(arch)`` lists the solvers that find one at every
space; ``align(name, arch, A, B, data=…)`` runs one and returns its ``Solution``.
"""
from __future__ import annotations

from typing import Mapping

from .classes import (Invertible, Orthogonal, Permutation, PermutationScaling, PositiveScaling, SemiPermutation,
                      SignedPermutation, SignFlip, SymmetryClass)
from .errors import SymmetryError

__all__ = ["SolverUnavailableError", "applicable", "align", "check_names", "classes_for", "needs_data", "as_batches"]

_PREFERENCE = (Permutation(), SignedPermutation(), Orthogonal(), PermutationScaling(), Invertible(), SignFlip(),
               PositiveScaling(), SemiPermutation())


class SolverUnavailableError(SymmetryError, LookupError):
    """No registered solver has that name, or none can search an architecture's classes."""


def _solvers():
    import solvers
    return solvers


def _names() -> list[str]:
    return [info.name for info in _solvers().available()]


def check_names(names) -> None:
    """Raise :class:`SolverUnavailableError` for a name no registered solver has."""
    known = _names()
    for name in names:
        if name not in known:
            raise SolverUnavailableError(f"no solver named {name!r}; available: {', '.join(known)}")


def needs_data(name: str) -> bool:
    """Whether solver ``name`` reads data (activation and learned matching)."""
    return bool(getattr(_solvers().get(name), "needs_data", False))


def classes_for(name: str, arch) -> dict[str, SymmetryClass] | None:
    """``space → class`` for solver ``name`` on ``arch`` (``None`` if some space has no class both
    admitted and supported)."""
    solver = _solvers().get(name)
    graph = getattr(arch, "graph", arch)
    chosen = {}
    for space in graph.spaces():
        options = [c for c in _PREFERENCE + tuple(space.classes) if graph.admits(space.name, c)]
        found = next((c for c in options if solver.supports(c)), None)
        if found is None:
            return None
        chosen[space.name] = found
    return chosen


def applicable(arch) -> list[str]:
    """Registered solvers that can search a class admitted at every space of ``arch``."""
    return [n for n in _names() if classes_for(n, arch) is not None]


def as_batches(data, *, batch_size: int = 256, seed: int = 0):
    """An ``(x, y)`` pair as a list of shuffled ``(x, y)`` minibatches (seeded) — the form every data-driven
    solver reads (activation matching takes each batch's inputs, learned matching inputs and targets);
    other data is passed through."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(t, "shape") for t in data):
        import torch
        x, y = (torch.as_tensor(t) for t in data)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
        return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, len(x), batch_size)]
    return data


def align(name: str, arch, params_a: Mapping, params_b: Mapping, *, data=None, seed: int = 0, classes=None,
          **options):
    """``solvers.solve(name, arch, A, B, classes=…, data=…, seed=…)`` with classes from :func:`classes_for`."""
    check_names([name])
    if classes is None:
        classes = classes_for(name, arch)
        if classes is None:
            raise SolverUnavailableError(f"solver {name!r} supports no class that every space of {arch.name} admits")
    if data is not None:
        options["data"] = as_batches(data, seed=seed)
    return _solvers().solve(name, arch, params_a, params_b, seed=seed, classes=classes, **options)
