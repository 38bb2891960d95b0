"""The extraction rules of the activation table: every module type, function and tensor method of
:data:`architectures.ACTIVATIONS` restricts the spaces it is applied to to the activation's classes
(``f`` applied unit by unit commutes with ``T`` exactly when ``T`` is in one of them)."""
from __future__ import annotations

from architectures.activations import ACTIVATIONS, Activation
from architectures.extract.rules import register_rule

__all__: list[str] = []


def _module_rule(act: Activation):
    def rule(ctx, node, module, x, *args, **kwargs):
        return ctx.elementwise(node, x, act.name, act.classes_of(module))
    rule.__qualname__ = f"activation rule {act.name!r}"
    return rule


def _function_rule(act: Activation):
    def rule(ctx, node, x, *args, **kwargs):
        return ctx.elementwise(node, x, act.name, act.classes)
    rule.__qualname__ = f"activation rule {act.name!r}"
    return rule


for _act in ACTIVATIONS.values():
    for _t in _act.modules:
        register_rule(_t, _module_rule(_act))
    for _f in (*_act.functions, *_act.methods):
        register_rule(_f, _function_rule(_act))
