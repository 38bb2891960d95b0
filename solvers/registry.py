"""The solver protocol, the registry, and the front door ``solve``.

A solver is a :class:`Solver` (``name``, ``description``, the ``classes`` it can search in,
``solve(problem, **options) → Solution``) or a plain callable ``f(problem, **options)``.
Built-ins and third parties register the same way — ``register(name, solver)`` or the
``@register(name, classes=…)`` decorator — and installed packages advertise theirs through
the entry-point group ``symmetries.solvers`` (loaded lazily, on first lookup)::

    [project.entry-points."symmetries.solvers"]
    my_solver = "my_package.module:MySolver"
"""
from __future__ import annotations

import copy
import difflib
import inspect
import math
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping

from symmetries.classes import HeadStructured, SymmetryClass, Trivial
from symmetries.errors import NotAdmittedError
from symmetries.policy import resolve_classes

from solvers.errors import SolverInputError, UnknownSolverError, UnsupportedClassError
from solvers.problem import PROBLEM_OPTIONS, Problem, make_problem
from solvers.solution import Solution
from solvers.threads import thread_budget, threads_for, threads_for_inputs

__all__ = ["Solver", "FunctionSolver", "SolverInfo", "register", "unregister", "get", "available", "solve",
           "applicable", "registered", "check_options", "keyword_parameters", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "symmetries.solvers"


def _class_label(c) -> str:
    if isinstance(c, type):
        return c.__name__
    return repr(c)


class Solver:
    """Base of solver objects. Subclasses set ``name``, ``description`` and ``classes`` — the
    classes (types, or instances for an exact match) they can search in — and implement
    ``solve``. ``HeadStructured`` in ``classes`` means head-structured spaces whose inner class
    is itself supported. ``Trivial`` spaces are always accepted (they are left as the identity).
    ``classes = None`` accepts every class (no check). ``needs_data`` — the solver reads
    ``problem.data`` (activations, a loss on data); a problem without data is refused at the door.
    ``head_inner`` — the inner class types a head-structured space may have (``None``: any the
    solver supports); ``head_refusal`` says why the others are refused (the maths)."""

    name: str = ""
    description: str = ""
    classes: tuple | None = None
    needs_data: bool = False
    head_inner: tuple | None = None
    head_refusal: str = ""

    def supports(self, cls: SymmetryClass) -> bool:
        """Whether the solver can search in ``cls`` (exact membership, not the lattice's order:
        supporting ``Orthogonal`` does not mean supporting ``Invertible``, nor ``Permutation``)."""
        if isinstance(cls, Trivial) or self.classes is None:
            return True
        for c in self.classes:
            if isinstance(c, SymmetryClass) and c == cls:
                return True
            if isinstance(c, type) and type(cls) is c:
                if c is not HeadStructured:
                    return True
                if self.head_inner is not None:
                    return isinstance(cls.inner, self.head_inner)
                return self.supports(cls.inner)
        return False

    def check(self, problem: Problem) -> None:
        """Raise :class:`UnsupportedClassError` naming solver, space and class if a class is not
        supported (with :attr:`head_refusal` for a head-structured space whose inner class is not in
        :attr:`head_inner`), and :class:`SolverInputError` if the solver needs data and the problem has none."""
        if self.head_inner is not None:
            for space, cls in problem.classes.items():
                if isinstance(cls, HeadStructured) and not isinstance(cls.inner, self.head_inner):
                    names = " or ".join(f"HeadStructured({cls.num_heads}, {c.__name__}())" for c in self.head_inner)
                    raise UnsupportedClassError(
                        f"solver {self.name!r} cannot search space {space!r} in {cls!r}: {self.head_refusal}; it "
                        f"searches heads as {names}", solver=self.name, space=space, cls=cls)
        if self.needs_data and problem.data is None:
            raise SolverInputError(f"solver {self.name!r} needs data: pass data= (input tensors, an (x, y) pair or "
                                   f"a DataLoader) and an Architecture or models=(module_a, module_b)")
        for space, cls in problem.classes.items():
            if not self.supports(cls):
                names = ", ".join(_class_label(c) for c in self.classes or ())
                raise UnsupportedClassError(
                    f"solver {self.name!r} cannot search space {space!r} in {cls!r}; it supports: {names}",
                    solver=self.name, space=space, cls=cls)

    def solve(self, problem: Problem, **options) -> Solution:  # pragma: no cover - abstract
        raise NotImplementedError

    def option_parameters(self) -> list[inspect.Parameter] | None:
        """The solver's options: the keyword parameters of :meth:`solve` after the problem, or ``None``
        when it takes ``**options`` (undeclared: any keyword is passed through unchecked)."""
        return keyword_parameters(self.solve)

    def option_names(self) -> tuple[str, ...] | None:
        """The names :func:`solve` accepts for this solver besides the problem options (``None``: any)."""
        params = self.option_parameters()
        return None if params is None else tuple(p.name for p in params)

    def required_options(self) -> tuple[str, ...]:
        """Declared options without a default (e.g. ``posterior_matching``'s ``stds``): a call without
        them is refused at the door, and :func:`applicable` does not offer the solver."""
        params = self.option_parameters() or []
        return tuple(p.name for p in params if p.default is inspect.Parameter.empty)

    def __call__(self, problem: Problem, **options) -> Solution:
        return self.solve(problem, **options)

    def __repr__(self) -> str:
        return f"<solver {self.name!r}>"


class FunctionSolver(Solver):
    """A plain function ``f(problem, **options) → Solution`` presented as a solver."""

    def __init__(self, fn: Callable, name: str | None = None, classes: Iterable | None = None,
                 description: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "solver")
        self.classes = tuple(classes) if classes is not None else getattr(fn, "classes", None)
        doc = (fn.__doc__ or "").strip().splitlines()
        self.description = description or (doc[0] if doc else "")

    def solve(self, problem, **options):
        return self.fn(problem, **options)

    def option_parameters(self) -> list[inspect.Parameter] | None:
        return keyword_parameters(self.fn)


def keyword_parameters(fn: Callable) -> list[inspect.Parameter] | None:
    """The parameters of ``fn(problem, …)`` after the problem, as keyword-only parameters; ``None`` if
    ``fn`` takes ``**kwargs`` or has no signature (its options are then not declared)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    if params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        params = params[1:]  # the problem
    return [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def check_options(solver: Solver, options: Mapping[str, Any]) -> None:
    """Refuse, before any work, a keyword that is neither a problem option nor one of the solver's
    declared options (:meth:`Solver.option_names`), naming it and listing the valid ones."""
    valid = solver.option_names()
    if valid is None:
        return
    missing = [k for k in solver.required_options() if k not in options]
    if missing:
        raise SolverInputError(f"solver {solver.name!r} needs the option {missing[0]!r} (required: "
                               f"{', '.join(solver.required_options())})")
    unknown = [k for k in options if k not in valid]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, [*valid, *PROBLEM_OPTIONS], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SolverInputError(f"solver {solver.name!r} has no option {key!r}{hint}; its options: "
                               f"{', '.join(valid) or 'none'}; problem options: {', '.join(PROBLEM_OPTIONS)}")


def as_solver(obj, name: str | None = None, classes=None, description: str | None = None) -> Solver:
    """A :class:`Solver` from a solver instance, a ``Solver`` subclass, or a callable. A given
    instance is never modified: if ``name``, ``classes`` or ``description`` change it, a copy is."""
    if isinstance(obj, type) and issubclass(obj, Solver):
        obj = obj()
    if isinstance(obj, Solver):
        changes = {}
        if name and not obj.name:
            changes["name"] = name
        if classes is not None:
            changes["classes"] = tuple(classes)
        if description:
            changes["description"] = description
        if changes:
            obj = copy.copy(obj)
            for key, value in changes.items():
                setattr(obj, key, value)
        return obj
    if callable(obj):
        return FunctionSolver(obj, name, classes, description)
    raise TypeError(f"a solver must be a Solver, a Solver subclass or a callable, got {obj!r}")


_REGISTRY: dict[str, Solver] = {}
#: What was registered under each name: ``(object, classes, description)`` as passed to ``register``.
_SOURCES: dict[str, tuple] = {}


def register(name: str, solver=None, *, classes: Iterable | None = None, description: str | None = None,
             replace: bool = False):
    """Register ``solver`` under ``name`` (or use as a decorator: ``@register("name", classes=…)``).

    Registering the same object again under its name (with the same options) does nothing — so a
    module that registers itself at import may also be named by an entry point; a different
    object under a taken name raises ``ValueError`` unless ``replace=True``. The caller's solver
    instance is not modified (the registry keeps a copy named ``name``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"solver names are non-empty strings, got {name!r}")
    options = (None if classes is None else tuple(classes), description)

    def do(obj):
        if name in _REGISTRY and not replace:
            known = _SOURCES.get(name)
            if known is not None and known[0] is obj and known[1:] == options:
                return obj
            raise ValueError(f"a solver named {name!r} is already registered; pass replace=True to override")
        s = as_solver(obj, name, classes, description)
        if s.name != name:
            s = copy.copy(s) if s is obj else s
            s.name = name
        _REGISTRY[name] = s
        _SOURCES[name] = (obj, *options)
        return obj

    return do if solver is None else do(solver)


def registered() -> list[str]:
    """The names registered so far (built-ins included; entry points not yet loaded are not)."""
    _builtins()
    return sorted(_REGISTRY)


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
    _SOURCES.pop(name, None)


def _entry_points():
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:  # pragma: no cover - Python < 3.10 API
        return list(metadata.entry_points().get(ENTRY_POINT_GROUP, []))


def _load_entry_point(ep) -> None:
    if ep.name in _REGISTRY:
        return
    obj = ep.load()
    register(ep.name, obj)


def get(name: str) -> Solver:
    """The solver registered (or advertised through an entry point) under ``name``."""
    _builtins()
    if name not in _REGISTRY:
        for ep in _entry_points():
            if ep.name == name:
                _load_entry_point(ep)
                break
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownSolverError(f"no solver named {name!r}; available: {known}", name=name) from None


@dataclass(frozen=True)
class SolverInfo:
    name: str
    classes: tuple[str, ...]
    description: str
    needs_data: bool = False


def available() -> list[SolverInfo]:
    """Every solver by name: the classes it supports and a one-line description (entry points
    that fail to load are skipped with a warning)."""
    _builtins()
    for ep in _entry_points():
        try:
            _load_entry_point(ep)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the listing
            warnings.warn(f"solver entry point {ep.name!r} failed to load: {exc}", RuntimeWarning, stacklevel=2)
    return [SolverInfo(n, tuple(_class_label(c) for c in s.classes) if s.classes is not None else ("any",),
                       s.description, bool(getattr(s, "needs_data", False))) for n, s in sorted(_REGISTRY.items())]


def resolve(method) -> Solver:
    """A solver from a registered name, a solver object or class, or a callable."""
    if isinstance(method, str):
        return get(method)
    return as_solver(method)


def solve(method, graph, params_a, params_b, **options: Any) -> Solution:
    """Align model B to model A with ``method`` (a registered name, a solver or a callable).

    Problem options (validated at the door): ``classes``, ``init``, ``seed``, ``device``,
    ``dtype``, ``data``, ``models``, ``sites``, ``graph_b`` (see :func:`make_problem`); every
    other keyword goes to the solver, and one the solver does not declare
    (:meth:`Solver.option_names`) is refused with :class:`SolverInputError` before any work. Without ``classes`` each space is searched in the standard
    class this solver supports there (:func:`symmetries.resolve_classes`). Returns a :class:`Solution` whose transforms map B to A.
    """
    solver = resolve(method)
    problem_options = {k: options.pop(k) for k in PROBLEM_OPTIONS if k in options}
    check_options(solver, options)
    with thread_budget(threads_for_inputs(params_a, params_b)):  # the door's checks: a pass over each tensor
        problem = make_problem(graph, params_a, params_b, solver=solver, **problem_options)
    solver.check(problem)
    start = time.perf_counter()
    with thread_budget(threads_for(problem)):  # one thread for small work: robust beside a busy neighbour
        solution = solver.solve(problem, **options)
    elapsed = time.perf_counter() - start
    if not isinstance(solution, Solution):
        raise TypeError(f"solver {solver.name!r} returned {type(solution).__name__}, expected a Solution")
    if not solution.wall_time:
        solution.wall_time = elapsed
    solution.solver = solution.solver or solver.name
    _refuse_non_finite(solution)
    if solution.graph is None:
        solution.graph = problem.graph_b
    return solution


def _refuse_non_finite(solution: Solution) -> None:
    """A solution whose objective is inf or NaN is no success, whatever its solver says: status 'failed',
    with a message naming the value (the door refuses inputs that overflow; a solver can still diverge)."""
    for key in ("objective_before", "objective_after", "lower_bound"):
        value = getattr(solution, key)
        if value is not None and not math.isfinite(float(value)) and solution.status != "failed":
            note = f"{key} is {float(value)}: the objective overflowed or became NaN, so the transforms are not trusted"
            solution.status = "failed"
            solution.message = f"{note}; {solution.message}" if solution.message else note


def applicable(graph) -> list[str]:
    """The registered solvers that can run on ``graph`` (a ``WeightGraph`` or an ``Architecture``) with
    default classes and no solver option: each finds a supported class admitted at every space and
    requires no option (``posterior_matching`` needs ``stds``)."""
    graph = getattr(graph, "graph", graph)
    names = []
    for info in available():
        if get(info.name).required_options():
            continue
        try:
            resolve_classes(graph, None, solver=get(info.name))
        except NotAdmittedError:
            continue
        names.append(info.name)
    return names


def _builtins() -> None:
    """Import the built-in solver modules (they register themselves)."""
    from solvers import _builtin  # noqa: F401
