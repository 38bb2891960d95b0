"""Rotary position embeddings for :func:`architectures.from_module` and :func:`architectures.from_hf`.

RoPE in Hugging Face's ``rotate_half`` layout computes, per head, ``q·cos + rotate_half(q)·sin`` with
``rotate_half(q) = cat(−q[…, d/2:], q[…, :d/2])`` and ``cos``, ``sin`` equal on the pairs
``(i, i + d/2)``. Per pair that is ``[[c, −s], [s, c]]``: multiplying by a pair-constant factor is
``c·I`` and ``rotate_half`` is the quarter turn ``J`` on every pair. A map of the head's features
commutes with both for every position exactly when it is a scaled rotation per pair —
:class:`~symmetries.classes.Rotary` — so each step restricts the space to
``HeadStructured(H, Rotary())`` (a head permutation keeps it as long as the factor is the same in
every head). The rules:

* slicing the within-head dimension of head features at exactly ``[:d/2]`` or ``[d/2:]`` gives a
  *half* (``Feat.half``); a half may only be negated and concatenated back (any other use of it is
  refused by the walk), as ``cat(−upper, lower)`` (``J``) or ``cat(lower, upper)`` (the identity);
* head features times a tensor of fixed values (``cos``, ``sin``, a mask): a factor constant over the
  within-head dimension commutes with every per-head map; one that is equal on the pairs
  ``(i, i + d/2)`` (checked on the example values) with ``Rotary`` only; either must be the same in
  every head. Anything else is opaque.

Other layouts (GPT-J's interleaved pairs ``(2i, 2i + 1)``, partial rotary) are refused at the op that
departs from these patterns, never guessed.
"""
from __future__ import annotations

import operator

import torch

from symmetries.classes import HeadStructured, Rotary

from architectures.extract.state import Feat

__all__ = ["half_slice", "join_halves", "head_factor", "HALF_OPS"]

#: ops (by their torch-level equivalent) a half of each head's features may enter.
HALF_OPS = {operator.neg, torch.neg, torch.cat, torch.concat, "neg"}


def _rotary(ctx, x: Feat, heads: int) -> None:
    for var, _ in x.segs:
        ctx.state.restrict(var, (HeadStructured(heads, Rotary()),))


def half_slice(ctx, node, x: Feat, items) -> Feat:
    """``x[…, :d/2]`` or ``x[…, d/2:]`` of head features (``items``: one entry per dimension): a half."""
    d = x.shape[x.dim]
    whole = len(items) == x.ndim and all(isinstance(i, slice) and range(x.shape[k])[i] == range(x.shape[k])
                                         for k, i in enumerate(items) if k != x.dim)
    item = items[x.dim] if len(items) == x.ndim else None
    if not whole or not isinstance(item, slice) or d % 2 or len(x.segs) != 1 or x.half is not None:
        return ctx.opaque(node, "indexing features split into attention heads (only rotate_half's halves "
                                "x[..., :d/2] and x[..., d/2:] of the within-head dimension are understood)")
    span = range(d)[item]
    if item.step not in (None, 1) or span not in (range(0, d // 2), range(d // 2, d)):
        return ctx.opaque(node, f"indexing the within-head dimension with {item!r} (only its halves [:{d // 2}] "
                                f"and [{d // 2}:] are understood: rotate_half)")
    return Feat(ctx.shape(node), x.dim, x.segs, x.hdim, (0 if span.start == 0 else 1, 1))


def join_halves(ctx, node, tensors, d: int):
    """``cat(−upper, lower)`` (rotate_half: the quarter turn on every pair) or ``cat(lower, upper)``
    along the within-head dimension ``d``: the head features again (``Rotary`` for the turn)."""
    halves = [t for t in tensors if isinstance(t, Feat) and t.half is not None]
    if len(tensors) != 2 or len(halves) != 2:
        return ctx.opaque(node, "concatenating halves of head features with something else")
    lo, hi = tensors
    if lo.dim != d or hi.dim != d or lo.segs != hi.segs or lo.hdim != hi.hdim:
        return ctx.opaque(node, "concatenating halves of different head features, or along another dimension")
    turn = (lo.half, hi.half) == ((1, -1), (0, 1))
    if not turn and (lo.half, hi.half) != ((0, 1), (1, 1)):
        return ctx.opaque(node, f"concatenating halves of head features as {lo.half}, {hi.half}: only "
                                f"cat(-x[..., d/2:], x[..., :d/2]) (rotate_half) and cat(x[..., :d/2], x[..., d/2:]) "
                                f"are understood")
    out = ctx.shape(node)
    x = Feat(out, d, lo.segs, lo.hdim)
    if turn:
        _rotary(ctx, x, out[x.hdim])
    return x


def head_factor(ctx, node, kind: str, x: Feat, value, out) -> Feat:
    """Head features ``x`` times (or over) a tensor of fixed ``value`` (broadcast to ``out``)."""
    if kind not in ("mul", "div") or not isinstance(value, torch.Tensor) or x.half is not None:
        return ctx.opaque(node, f"an elementwise {kind} of features split into heads with a tensor")
    D, H = x.dim + len(out) - x.ndim, x.hdim + len(out) - x.ndim
    v = value.expand(out) if value.dim() <= len(out) else None
    if v is None or not torch.equal(v, v.narrow(H, 0, 1).expand(out)):
        return ctx.opaque(node, f"an elementwise {kind} of head features by a factor that differs between heads")
    if value.dim() + D < len(out) or value.shape[D - len(out) + value.dim()] == 1:
        return x.moved(out, D)  # constant over the within-head dimension: commutes with every per-head map
    d = out[D]
    if d % 2 or not torch.equal(v.narrow(D, 0, d // 2), v.narrow(D, d // 2, d // 2)):
        return ctx.opaque(node, f"an elementwise {kind} of head features by a factor that varies within each "
                                f"head and is not equal on the rotary pairs (i, i + d/2)")
    _rotary(ctx, x, out[H])
    return x.moved(out, D)
