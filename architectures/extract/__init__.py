"""Extraction: the weight graph of a ``torch.nn.Module``, by torch.fx tracing (:func:`from_module`).

Its rules — what each module type, function and tensor method does to the candidate spaces —
sit in one registry that :func:`register_rule` extends; a rule receives a :class:`Context` and
what each argument carries (:class:`Feat`, :class:`ParamRef`, :class:`HeadOnly`, :class:`Stacked` or a
plain value); the rule :data:`TRACE` makes tracing go into a module type's ``forward``.
"""
from architectures.extract.context import Context
from architectures.extract.rules import TRACE, RuleError, register_rule, unregister_rule
from architectures.extract.state import ExtractionError, Feat, HeadOnly, ParamRef, Stacked
from architectures.extract.walk import from_module

__all__ = ["from_module", "ExtractionError", "register_rule", "unregister_rule", "RuleError", "TRACE", "Context",
           "Feat", "ParamRef", "HeadOnly", "Stacked"]
