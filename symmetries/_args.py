"""Argument checks shared by the builders and :class:`~architectures.WeightGraph`.

Each check returns the value in its canonical type or raises
:class:`~symmetries.errors.ArgumentError` (a ``ValueError``; or the ``error`` it is given, e.g. a
``GraphError`` naming the node) that names the argument and the bad value.
Sizes are integers: ``16`` and ``16.0`` are accepted, ``16.7``, ``True`` and ``"16"`` are not
(a silently truncated width would build a different network than the one asked for).

Width multipliers scale a base width ``c`` to ``round(c · width)`` (Python's ``round``: to the
nearest integer, ties to even), and at least 1 — see :func:`scaled`.
"""
from __future__ import annotations

import math
import operator
from numbers import Real
from typing import Callable, Iterable

from symmetries.errors import ArgumentError

__all__ = ["integer", "real", "items", "sizes", "scaled", "argument_error"]


def argument_error(name: str) -> Callable[[str], Exception]:
    """The default ``error`` of the checks: an :class:`ArgumentError` whose ``argument`` is ``name``."""
    return lambda message: ArgumentError(message, argument=name)


def integer(name: str, value, minimum: int | None = 1, *, error: Callable[[str], Exception] | None = None) -> int:
    """``value`` as an ``int`` ≥ ``minimum`` (``None``: any): an integer, or a real number with an
    integral value."""
    if not isinstance(value, bool):
        try:
            n = operator.index(value)
        except TypeError:
            n = int(value) if isinstance(value, Real) and math.isfinite(value) and float(value).is_integer() else None
        if n is not None and (minimum is None or n >= minimum):
            return n
    need = "an integer" if minimum is None else "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
    raise (error or argument_error(name))(f"{name} must be {need}, got {value!r}")


def items(name: str, value, least: int = 0, *, error: Callable[[str], Exception] | None = None) -> list:
    """``value`` (any iterable but a string or a mapping) as a list of at least ``least`` entries."""
    error = error or argument_error(name)
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise error(f"{name} must be a sequence, got {value!r}")
    out = list(value)
    if len(out) < least:
        raise error(f"{name} needs at least {least} entr{'y' if least == 1 else 'ies'}, got {out!r}")
    return out


def sizes(name: str, value, least: int = 0) -> list[int]:
    """A sequence of at least ``least`` positive integers (``widths``, ``hidden``, ``channels``);
    an entry's error names it as ``name[i]``."""
    return [integer(f"{name}[{i}]", v) for i, v in enumerate(items(name, value, least))]


def real(name: str, value, *, minimum: float = 0.0, strict: bool = False,
         error: Callable[[str], Exception] | None = None) -> float:
    """``value`` as a finite ``float`` ≥ ``minimum`` (> ``minimum`` when ``strict``)."""
    if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) \
            and (value > minimum if strict else value >= minimum):
        return float(value)
    bound = f"> {minimum:g}" if strict else f"≥ {minimum:g}"
    raise (error or argument_error(name))(f"{name} must be a finite number {bound}, got {value!r}")


def scaled(base: int, width: float) -> int:
    """A base width ``base`` (checked) times a width multiplier ``width`` (checked, > 0): the
    nearest integer, and at least 1 — ``round(16 · 0.5) = 8``, ``round(16 · 0.01) = 0`` → 1."""
    return max(1, round(base * width))
