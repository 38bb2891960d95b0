"""Running the ``solvers`` package's built-in solvers on a whole architecture (for the commands).

``applicable(arch)`` lists the registered solvers that apply to an architecture's classes;
``align(name, arch, A, B, data=…)`` runs one with the options it needs and returns its
``Solution`` (``.transforms`` to apply to B).
"""
from __future__ import annotations

from typing import Mapping

from .errors import SymmetryError

__all__ = ["SolverUnavailableError", "applicable", "align"]


class SolverUnavailableError(SymmetryError, LookupError):
    """The ``solvers`` package (issue #4) is not installed, or has no solver of that name."""


def _solvers():
    import solvers
    if not hasattr(solvers, "solve") or not hasattr(solvers, "available"):
        raise SolverUnavailableError("the solvers package provides no solve()/available() yet")
    return solvers


def applicable(arch) -> list[str]:
    """Names of the built-in solvers to try on ``arch`` (all registered ones, in registry order)."""
    return list(_solvers().available())


def align(name: str, arch, params_a: Mapping, params_b: Mapping, *, data=None, seed: int = 0, **options):
    """``solvers.solve(name, arch.graph, A, B, seed=…, **options)``."""
    s = _solvers()
    if name not in s.available():
        raise SolverUnavailableError(f"no solver named {name!r}; available: {', '.join(s.available())}")
    return s.solve(name, arch.graph, params_a, params_b, seed=seed, **options)
