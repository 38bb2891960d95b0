"""Typed errors. Each names the parameter, axis, space or class at fault.

Every error derives from :class:`SymmetryError` and from the built-in exception
a caller would naturally catch (``ValueError``, ``KeyError``, ``TypeError``).
"""
from __future__ import annotations

__all__ = [
    "SymmetryError",
    "GraphError",
    "UnknownParameterError",
    "MissingParameterError",
    "UnknownSpaceError",
    "ShapeMismatchError",
    "OverlappingAxisError",
    "UncoveredParameterError",
    "RoleClassError",
    "NotAdmittedError",
    "ClassSpecError",
    "ElementShapeError",
    "NoOracleError",
    "TieError",
    "ArgumentError",
    "ParameterTypeError",
    "ArgumentTypeError",
    "InvalidElementError",
    "ElementNotAdmittedError",
]


class SymmetryError(Exception):
    """Base class of every error raised by ``symmetries``, ``solvers`` and ``architectures``."""


class GraphError(SymmetryError, ValueError):
    """A weight graph is inconsistent, or inconsistent with a parameter set.

    Attributes ``parameter``, ``axis`` and ``space`` name the culprit (``None`` when
    not applicable).
    """

    def __init__(self, message: str, *, parameter: str | None = None, axis: int | None = None,
                 space: str | None = None):
        super().__init__(message)
        self.parameter = parameter
        self.axis = axis
        self.space = space


class UnknownParameterError(GraphError, KeyError):
    """A parameter set holds a tensor the graph does not know."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class MissingParameterError(GraphError, KeyError):
    """A parameter the graph declares is absent from a parameter set."""

    def __str__(self) -> str:
        return self.args[0]


class UnknownSpaceError(GraphError, KeyError):
    """A space name that the graph does not declare."""

    def __str__(self) -> str:
        return self.args[0]


class ShapeMismatchError(GraphError):
    """A tensor's size along an axis disagrees with the space that axis indexes."""


class OverlappingAxisError(GraphError):
    """Two edges claim the same index of the same axis of one parameter."""


class UncoveredParameterError(GraphError):
    """A parameter is neither touched by any space nor declared fixed (or is both)."""


class ParameterTypeError(GraphError, TypeError):
    """A parameter set is not a mapping, or holds a value that is not a tensor or array (``None``)."""


class RoleClassError(GraphError):
    """A role cannot be exact for a class admitted at the space (e.g. a tied axis with T⁻ᵀ ≠ T)."""


class TieError(GraphError):
    """Spaces that share a head permutation were given transforms that do not share it."""


class NotAdmittedError(SymmetryError, ValueError):
    """A class was requested at a space that does not admit it."""

    def __init__(self, message: str, *, space: str | None = None, cls: object = None):
        super().__init__(message)
        self.space = space
        self.cls = cls


class ClassSpecError(SymmetryError, TypeError, ValueError):
    """A ``classes`` argument names no class: not an instance, a class type or a known name."""

    def __init__(self, message: str, *, space: str | None = None, spec: object = None):
        super().__init__(message)
        self.space = space
        self.spec = spec


class ElementNotAdmittedError(NotAdmittedError):
    """An element given for a space (``apply`` with ``check=True``) is in none of the classes the
    space admits: it would change the network's function. ``space`` and ``element`` name it."""

    def __init__(self, message: str, *, space: str | None = None, cls: object = None, element: object = None):
        super().__init__(message, space=space, cls=cls)
        self.element = element


class ArgumentError(SymmetryError, ValueError):
    """An argument of a builder, a graph method or a front door has a bad value or type;
    ``argument`` names it."""

    def __init__(self, message: str, *, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument has the wrong type (a transform that is not an ``Element``, a seed that is not an
    integer); ``argument`` names it."""


class InvalidElementError(SymmetryError, ValueError):
    """An element's numbers do not define a map of a space: a singular or non-finite matrix, or a
    left inverse that does not undo it."""


class ElementShapeError(SymmetryError, ValueError):
    """An element's size does not fit the tensor axis or the space it is applied to."""


class NoOracleError(SymmetryError, NotImplementedError):
    """The class has no linear-maximisation oracle (it is unbounded, e.g. scalings)."""
