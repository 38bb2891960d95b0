"""Repeated features for :func:`architectures.from_module`: which ops may see a flatten's features.

Flattening ``C`` channels with ``S`` positions into one feature dimension (``x.flatten(1)`` of
``(N, C, H, W)``, ``S = H·W``) lays out ``S`` copies of each channel: unit ``c`` at entries
``c·S + s`` (channel-major, ``repeat = (S, 1)``) or, after a move of the channels last, at
``s·C + c`` (``repeat = (S, C)``). A Linear reading those features connects its ``in`` axis with
that repeat (:meth:`symmetries.graph.WeightGraph.connect`): the channel map acts on every copy.
The flatten itself is :func:`architectures.extract.shapes.flatten_repeat`.

Only ops that act unit by unit or read the features as a whole may see them (:func:`repeat_aware`):
linear maps (module, ``F.linear``, ``x @ W``, ``aten.addmm``), elementwise activations, dropout,
casts and copies, and a reshape that changes nothing. Anything else (a bias add, a cat, a slice,
another reshape, a norm) is refused naming the node — never a silently wrong graph.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from architectures.activations import ACTIVATIONS
from architectures.extract.aten import equivalent
from architectures.extract.rules import registered_module, rule_for
from architectures.extract.state import Feat

__all__ = ["has_repeats", "repeat_aware", "has_copies", "copies_aware"]


def _flat(a) -> bool:
    return isinstance(a, Feat) and a.rep is not None and a.hdim is None and a.rdim is None


def _copies(a) -> bool:
    return isinstance(a, Feat) and (a.rdim is not None or (a.rep is not None and a.hdim is not None))


def has_repeats(args) -> bool:
    """Some argument carries a flatten's repeated features (or attention output heads merged back)."""
    found = []
    fx.node.map_aggregate(args, lambda a: found.append(a) if _flat(a) else None)
    return bool(found)


def has_copies(args) -> bool:
    """Some argument carries key/value heads repeated for grouped queries (:mod:`architectures.extract.gqa`)."""
    found = []
    fx.node.map_aggregate(args, lambda a: found.append(a) if _copies(a) else None)
    return bool(found)


_COPY_TARGETS = ("transpose", "permute", "view", "reshape", "contiguous", "to", "float", "double", "type_as",
                 "clone", "detach", "expand", "matmul", operator.matmul, torch.matmul, torch.transpose,
                 torch.permute, torch.reshape, F.scaled_dot_product_attention)


def copies_aware(node: fx.Node) -> bool:
    """``node`` may be given grouped-query copies of heads: its rule (as registered now) moves
    dimensions, expands or merges the copies, copies, or is attention (``q @ kᵀ``, ``att @ v``, SDPA)."""
    if node.op not in ("call_function", "call_method"):
        return False
    rule = rule_for(equivalent(node.target))
    return rule is not None and any(rule is rule_for(t) for t in _COPY_TARGETS)


def _allowed_targets():
    targets = [nn.Linear, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
               nn.FeatureAlphaDropout, F.linear, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
               F.feature_alpha_dropout, operator.matmul, torch.matmul, torch.mm, torch.flatten, torch.reshape,
               "matmul", "flatten", "view", "reshape", "contiguous", "to", "float", "double", "type_as", "clone",
               "detach"]
    addmm = getattr(getattr(torch.ops.aten, "addmm", None), "default", None)
    targets += [addmm] if addmm is not None else []
    for act in ACTIVATIONS.values():
        targets += [*act.modules, *act.functions, *act.methods]
    return targets


def repeat_aware(node: fx.Node, root: nn.Module) -> bool:
    """``node`` may be given a flatten's repeated features: a module whose rule is that of one of
    the types above, or a function or method whose rule (as registered now) is one of the rules of
    the targets above — a linear map, an elementwise activation, dropout, a copy, or a reshape
    (which itself refuses one that changes them)."""
    allowed = _allowed_targets()
    if node.op == "call_module":
        return registered_module(root.get_submodule(node.target)) in [t for t in allowed if isinstance(t, type)]
    if node.op not in ("call_function", "call_method"):
        return False
    rule = rule_for(equivalent(node.target))
    return rule is not None and any(rule is rule_for(t) for t in allowed if not isinstance(t, type))
