"""Extraction: the weight graph of a ``torch.nn.Module``, by torch.fx tracing (:func:`from_module`).

Its rules — what each module type, function and tensor method does to the candidate spaces —
sit in one registry that :func:`register_rule` extends; a rule receives a :class:`Context` and
what each argument carries (:class:`Feat`, :class:`ParamRef`, :class:`HeadOnly` or a plain value).
"""
from architectures.extract.context import Context
from architectures.extract.rules import RuleError, register_rule, unregister_rule
from architectures.extract.state import ExtractionError, Feat, HeadOnly, ParamRef
from architectures.extract.walk import from_module

__all__ = ["from_module", "ExtractionError", "register_rule", "unregister_rule", "RuleError", "Context", "Feat",
           "ParamRef", "HeadOnly"]
