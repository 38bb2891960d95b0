"""The extraction rules: one registry of what each module type, function and tensor method does to
the candidate spaces of :func:`architectures.from_module`.

A rule is keyed by its *target*: an ``nn.Module`` subclass (fx ``call_module`` nodes; a module is
matched by the first registered type of its class's MRO, and a registered type is never traced
into; a subclass of it defined outside ``torch.nn`` is traced into unless registered itself, since
it may override ``forward``), a function (``call_function`` nodes, matched by identity; a plain Python function is also
kept whole while tracing), a tensor-method name (``call_method`` nodes) or the qualified name of a
module type or function of a package that may be absent (``"torchvision.ops.StochasticDepth"``:
registered when extraction runs after that package was imported). A module rule is called
``rule(ctx, node, module, *args, **kwargs)``, a function or method rule ``rule(ctx, node, *args,
**kwargs)``, with each argument replaced by what it carries (:class:`~architectures.extract.Feat`,
:class:`~architectures.extract.ParamRef`, :class:`~architectures.extract.HeadOnly` or a plain
value) and ``ctx`` the walk's :class:`~architectures.extract.Context`. It returns what the node's
output carries, or ``NotImplemented`` (no rule: the node is opaque). The rule :data:`TRACE` for a
module type says "trace into its ``forward``" instead (``torch.nn`` modules are otherwise kept whole
as one node). The built-in rules are registered here too, by the modules of this package.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Callable

from torch import nn

from symmetries.errors import SymmetryError

__all__ = ["RuleError", "register_rule", "unregister_rule", "rule_for", "registered_module", "keeps_whole",
           "traced_into", "plain_functions", "resolve_pending", "TRACE"]

Rule = Callable[..., Any]

_MODULE_RULES: dict[type, Rule] = {}
_FUNCTION_RULES: dict[Any, Rule] = {}
_METHOD_RULES: dict[str, Rule] = {}
_PENDING: dict[str, Rule] = {}  # qualified name → rule, until its package is imported


class _Trace:
    """The rule that makes extraction trace into a module type's ``forward``."""

    __qualname__ = "TRACE"

    def __call__(self, *args, **kwargs):  # never called: such a module is not an fx node
        raise RuleError("TRACE is not a rule to call: modules registered with it are traced into")

    def __repr__(self) -> str:
        return "TRACE"


#: Register it for a module type to trace into its ``forward`` (``register_rule(nn.TransformerEncoderLayer,
#: TRACE)``): its submodules and functions then meet their own rules.
TRACE = _Trace()


class RuleError(SymmetryError, TypeError):
    """A registration :func:`register_rule` refuses; ``target`` names what it was for."""

    def __init__(self, message: str, *, target: Any = None):
        super().__init__(message)
        self.target = target


def _describe(target) -> str:
    if _qualified(target):
        return f"{target!r} (a qualified name)"
    if isinstance(target, str):
        return f"tensor method {target!r}"
    if isinstance(target, type):
        return f"module type {target.__module__}.{target.__qualname__}"
    return f"function {getattr(target, '__module__', None) or ''}.{getattr(target, '__qualname__', repr(target))}"


def _qualified(target) -> bool:
    return isinstance(target, str) and "." in target and all(p.isidentifier() for p in target.split("."))


def _table(target) -> dict:
    """The table a target belongs to, or a :class:`RuleError` saying what a target may be."""
    if _qualified(target):
        return _PENDING
    if isinstance(target, str):
        if not target.isidentifier():
            raise RuleError(f"a tensor-method target must be a method name or a qualified name "
                            f"('package.module.Name'), got {target!r}", target=target)
        return _METHOD_RULES
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise RuleError(f"a type target must be a torch.nn.Module subclass, got {target.__qualname__}",
                            target=target)
        return _MODULE_RULES
    if callable(target):
        try:
            hash(target)
        except TypeError:
            raise RuleError(f"a function target must be hashable, got {target!r}", target=target) from None
        return _FUNCTION_RULES
    raise RuleError(f"an extraction rule's target is an nn.Module subclass, a function or a tensor-method "
                    f"name; got {type(target).__name__} {target!r}", target=target)


def register_rule(target, rule: Rule | None = None, *, replace: bool = False):
    """Register ``rule`` for ``target`` (a module type, a function, a tensor-method name, or the
    qualified name ``"package.module.Name"`` of a module type or function: its rule takes effect
    when extraction runs after ``package.module`` was imported, so a package that is not installed
    is never imported). ``rule`` may be :data:`TRACE` for a module type: trace into its ``forward``.

    Without ``rule`` it returns a decorator. A target that already has a rule is refused unless
    ``replace=True`` (replacing a built-in rule changes every later extraction). Returns ``rule``.
    """
    table = _table(target)
    if rule is None:
        return lambda r: register_rule(target, r, replace=replace)
    if not callable(rule):
        raise RuleError(f"the rule for {_describe(target)} must be callable, got {type(rule).__name__}",
                        target=target)
    if rule is TRACE and not (isinstance(target, type) or table is _PENDING):
        raise RuleError(f"TRACE is a rule for module types only, not for {_describe(target)}", target=target)
    if target in table and not replace:
        raise RuleError(f"{_describe(target)} already has an extraction rule ({getattr(table[target], '__qualname__', table[target])!s}); "
                        f"pass replace=True to replace it", target=target)
    table[target] = rule
    return rule


def unregister_rule(target) -> Rule:
    """Remove and return the rule registered for ``target`` (a :class:`RuleError` if it has none)."""
    table = _table(target)
    if table is _PENDING and target not in table:  # registered by name and already resolved
        obj = _lookup(target)[1]
        if obj is not None and obj in _table(obj):
            return _table(obj).pop(obj)
    if target not in table:
        raise RuleError(f"{_describe(target)} has no extraction rule to remove", target=target)
    return table.pop(target)


def _lookup(name: str) -> tuple[bool, Any]:
    """``(imported, obj)``: whether the module part of the qualified ``name`` is imported, and the
    object it names there (``None`` if none)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            obj: Any = module
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            return True, obj
    return False, None


def resolve_pending() -> None:
    """Register the rules given by qualified name whose module is imported (``sys.modules``); a
    rule registered for the object itself wins. Extraction calls it before tracing."""
    for name in list(_PENDING):
        imported, obj = _lookup(name)
        if obj is not None:
            if _PENDING[name] is TRACE and not isinstance(obj, type):
                del _PENDING[name]
                raise RuleError(f"TRACE was registered for {name!r}, which names {type(obj).__name__} {obj!r}, "
                                f"not a module type", target=name)
            _table(obj).setdefault(obj, _PENDING[name])
        if imported:
            del _PENDING[name]


def registered_module(module: nn.Module) -> type | None:
    """The registered type whose rule ``module`` follows: the first in its class's MRO, or ``None``."""
    return next((t for t in type(module).__mro__ if t in _MODULE_RULES), None)


def keeps_whole(module: nn.Module) -> bool:
    """Whether tracing keeps ``module`` as one node because its own class has a rule."""
    return _MODULE_RULES.get(type(module), TRACE) is not TRACE


def traced_into(module: nn.Module) -> bool:
    """Whether tracing goes into ``module``'s ``forward`` because its class's rule is :data:`TRACE`."""
    return _MODULE_RULES.get(type(module)) is TRACE


def rule_for(target) -> Rule | None:
    """The rule for an fx target: a module instance, a function or a tensor-method name."""
    if isinstance(target, nn.Module):
        t = registered_module(target)
        rule = None if t is None else _MODULE_RULES[t]
        return None if rule is TRACE else rule
    if isinstance(target, str):
        return _METHOD_RULES.get(target)
    try:
        return _FUNCTION_RULES.get(target)
    except TypeError:  # an unhashable callable has no rule
        return None


def plain_functions() -> tuple[types.FunctionType, ...]:
    """The registered plain Python functions outside torch: kept whole (one fx node) while tracing
    (torch's own functions reach fx through ``__torch_function__``; ``torchvision``'s are plain)."""
    return tuple(f for f in _FUNCTION_RULES if isinstance(f, types.FunctionType)
                 and not _in_torch(getattr(f, "__module__", None) or ""))


def _in_torch(module: str) -> bool:
    return module == "torch" or module.startswith("torch.")
