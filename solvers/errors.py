"""Typed solver errors; each names the solver, space or class at fault.

They derive from :class:`symmetries.errors.SymmetryError` and from the built-in exception a
caller would naturally catch.
"""
from __future__ import annotations

from symmetries.errors import SymmetryError

__all__ = ["SolverError", "UnknownSolverError", "UnsupportedClassError", "SolverInputError"]


class SolverError(SymmetryError):
    """Base of the errors raised by :mod:`solvers`."""


class UnknownSolverError(SolverError, KeyError):
    """No solver is registered (or advertised by an entry point) under that name."""

    def __init__(self, message: str, *, name: str | None = None):
        super().__init__(message)
        self.name = name

    def __str__(self) -> str:
        return self.args[0]


class UnsupportedClassError(SolverError, ValueError):
    """A solver was asked to search a space in a class it does not declare."""

    def __init__(self, message: str, *, solver: str | None = None, space: str | None = None,
                 cls: object = None):
        super().__init__(message)
        self.solver = solver
        self.space = space
        self.cls = cls


class SolverInputError(SolverError, ValueError):
    """A problem's inputs are inconsistent (missing data, models, widths, initial transforms,
    tensors a solver cannot compute with); ``space``, ``parameter`` and ``cls`` name the culprit."""

    def __init__(self, message: str, *, space: str | None = None, parameter: str | None = None,
                 cls: object = None):
        super().__init__(message)
        self.space = space
        self.parameter = parameter
        self.cls = cls
