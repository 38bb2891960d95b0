"""The one class policy: which class each space is searched or drawn in.

Every entry point (``solvers.solve``, ``random_transforms``, the hypothesis strategies, the
invariance checks, posterior alignment, the CLI) reads ``classes`` through
:func:`resolve_classes`. A class may be given as an instance (``Permutation()``), a class type
(``Permutation``), a name (``"permutation"``, ``"semi_permutation"``, ``"SemiPermutation"``:
case and ``_``/``-`` ignored; the names ``symmetries classes`` prints), or a mapping
``space → any of those``. Nothing is reinterpreted: a plain class at an attention space is a map
across all its units (which mixes heads and is refused); name ``HeadStructured(k, C)`` instead.

Defaults (``classes=None``, or spaces a mapping leaves out):

* without a solver (drawing, verifying): the space's declared default group, ``space.cls``;
* for a solver (aligning): the field's standard class that the solver searches —
  ``Permutation`` for elementwise units, ``HeadStructured(k, Permutation())`` for attention
  heads, ``Orthogonal`` for a space declared orthogonal or invertible (an RMS residual stream),
  ``SemiPermutation`` (else ``Orthogonal``) where B is narrower than A. The larger groups
  (scalings, monomials, invertible maps) are searched only when named.
"""
from __future__ import annotations

from typing import Any, Mapping

from symmetries.classes import (ALL, HeadStructured, Invertible, Orthogonal, Permutation, SemiPermutation,
                                SignedPermutation, SymmetryClass, Trivial)
from symmetries.errors import ClassSpecError, NotAdmittedError
from symmetries.graph import WeightGraph

__all__ = ["CLASS_NAMES", "parse_class", "resolve_classes", "standard_class", "class_name"]


def _key(text: str) -> str:
    return text.lower().replace("_", "").replace("-", "").replace(" ", "")


def class_name(cls: type[SymmetryClass]) -> str:
    """The snake_case name of a class type (``SemiPermutation`` → ``"semi_permutation"``)."""
    out = []
    for i, ch in enumerate(cls.__name__):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


#: Names accepted for ``classes`` (``HeadStructured`` needs arguments: pass an instance).
CLASS_NAMES: dict[str, type[SymmetryClass]] = {class_name(c): c for c in ALL}
_BY_KEY = {_key(n): c for n, c in CLASS_NAMES.items()}


def parse_class(spec: Any, *, space: str | None = None) -> SymmetryClass:
    """A class instance from an instance, a class type or a name; anything else is a
    :class:`~symmetries.errors.ClassSpecError` naming ``space`` and listing the valid names."""
    where = f" for space {space!r}" if space is not None else ""
    if isinstance(spec, SymmetryClass):
        return spec
    if isinstance(spec, type) and issubclass(spec, SymmetryClass):
        if spec is HeadStructured:
            raise ClassSpecError(f"HeadStructured{where} needs its arguments: pass HeadStructured(k, inner) or the "
                                 f"inner class alone (heads are kept)", space=space, spec=spec)
        return spec()
    if isinstance(spec, str):
        found = _BY_KEY.get(_key(spec))
        if found is not None:
            return found()
        raise ClassSpecError(f"unknown class name {spec!r}{where}; valid names: {', '.join(CLASS_NAMES)}",
                             space=space, spec=spec)
    raise ClassSpecError(f"class{where} must be a SymmetryClass instance, a SymmetryClass type or one of the names "
                         f"{', '.join(CLASS_NAMES)}; got {spec!r}", space=space, spec=spec)


def _supported(solver, cls: SymmetryClass) -> bool:
    return solver is None or bool(solver.supports(cls))


def standard_class(graph: WeightGraph, space: str, *, solver=None, widens: bool = False) -> SymmetryClass | None:
    """The class a solver searches at ``space`` by default (see the module docstring); ``None`` if the
    space admits no class the solver supports. ``widens``: B is narrower than A there."""
    s = graph.space(space)
    default = s.cls
    if isinstance(default, Trivial):
        return default
    if widens:
        candidates = [SemiPermutation(), Orthogonal()] + [c for c in s.classes if c.rectangular]
    elif isinstance(default, HeadStructured):
        k = default.num_heads
        candidates = [HeadStructured(k, Permutation()), HeadStructured(k, Orthogonal()), default]
    elif isinstance(default, (Orthogonal, Invertible)):
        candidates = [Orthogonal(), Permutation(), SignedPermutation()]
    else:
        candidates = [Permutation(), SignedPermutation(), Orthogonal()]
    candidates += list(s.classes)
    for cls in candidates:
        if (cls.rectangular or not widens) and graph.admits(space, cls) and _supported(solver, cls):
            return cls
    return None


def resolve_classes(graph: WeightGraph, classes: Any = None, *, solver=None, widening: Mapping[str, bool] | None = None,
                    strict: bool = True) -> dict[str, SymmetryClass]:
    """``space → class`` for every space of ``graph``.

    ``classes`` — ``None``, one class spec for every space, or a mapping ``space → spec`` (unnamed
    spaces take the default); ``solver`` — anything with ``supports(cls)``: defaults are then the
    standard class it searches (:func:`standard_class`), else the declared default group;
    ``widening[s]`` — B is narrower than A at ``s``; ``strict`` — refuse a class the space does not
    admit (:class:`~symmetries.errors.NotAdmittedError`). Unknown space names raise
    ``UnknownSpaceError``; bad specs ``ClassSpecError``.
    """
    widening = dict(widening or {})
    given: dict[str, Any] = {}
    if isinstance(classes, Mapping):
        for name, spec in classes.items():
            graph.space(name)  # UnknownSpaceError naming it
            given[name] = spec
    elif classes is not None:
        parse_class(classes)  # a bad spec fails once, before any space
        given = {s.name: classes for s in graph.spaces()}
    chosen: dict[str, SymmetryClass] = {}
    for space in graph.spaces():
        if space.name in given:
            cls = parse_class(given[space.name], space=space.name)
        elif solver is not None:
            cls = standard_class(graph, space.name, solver=solver, widens=widening.get(space.name, False))
            if cls is None:
                raise NotAdmittedError(
                    f"solver {getattr(solver, 'name', solver)!r} supports no class that space {space.name!r} admits "
                    f"({', '.join(map(repr, space.classes))}); name a class for it or use another solver",
                    space=space.name, cls=None)
        else:
            cls = space.cls
            if widening.get(space.name) and not cls.rectangular:
                cls = next((c for c in space.classes if c.rectangular), cls)
        if strict and not graph.admits(space.name, cls):
            hint = ""
            if isinstance(space.cls, HeadStructured) and not isinstance(cls, HeadStructured):
                hint = (f"; a map across all units mixes the heads — to permute heads and map each head by {cls!r}, "
                        f"name HeadStructured({space.cls.num_heads}, {cls!r})")
            raise NotAdmittedError(
                f"space {space.name!r} admits {', '.join(map(repr, space.classes))}; {cls!r} is not among them "
                f"or their subclasses" + (f" (activation: {space.activation})" if space.activation else "") + hint,
                space=space.name, cls=cls)
        chosen[space.name] = cls
    return chosen
