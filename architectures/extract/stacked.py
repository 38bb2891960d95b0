"""Stacks of separately described tensors, for :func:`architectures.from_module`.

A :class:`~architectures.extract.state.Stacked` value is one tensor whose dimension ``sdim``
indexes tensors that index different spaces:

* fused q/k/v: ``qkv(x).reshape(B, N, 3, H, d)`` cuts the features ``p·C + h·d + j`` into three
  pieces (three spaces: ``q``, ``k``, ``v``), each split into ``H`` heads of ``d`` units; after
  ``permute(2, 0, 3, 1, 4)``, ``unbind(0)`` or ``[i]`` gives back ``q``, ``k``, ``v`` (timm's
  ``Attention``);
* a recurrent layer's final states ``h_n`` of shape ``(layers·directions, B, H)``: ``h_n[-1]`` is
  the last layer's state, in that layer's hidden space.

Moving dimensions, copies, indexing or unbinding ``sdim``, and dropping it when it has one entry,
know the stack; the walk refuses every other op on it (:func:`stack_aware`).
"""
from __future__ import annotations

import math
import operator

import torch

from architectures.extract.heads import _pieces, cut
from architectures.extract.state import Feat, Stacked

__all__ = ["stack_aware", "packed_split", "permuted", "index_stack", "unbind", "single"]

_METHODS = {"permute", "transpose", "unbind", "contiguous", "clone", "detach", "to", "float", "double", "type_as",
            "view", "reshape", "squeeze", "flatten"}
_FUNCTIONS = {operator.getitem, torch.permute, torch.transpose, torch.unbind, torch.squeeze, torch.reshape,
              torch.flatten}


def stack_aware(node) -> bool:
    """Whether fx ``node``'s rule knows :class:`Stacked` values (else the walk refuses the node)."""
    from architectures.extract.aten import equivalent
    target = equivalent(node.target) if node.op == "call_function" else node.target
    if node.op == "call_method" or isinstance(target, str):
        return target in _METHODS
    try:
        return node.op == "call_function" and target in _FUNCTIONS
    except TypeError:
        return False


def _drop(shape, d: int) -> tuple[int, ...]:
    return tuple(s for i, s in enumerate(shape) if i != d)


def packed_split(ctx, x: Feat, out) -> Stacked | None:
    """``(…, P·H·d, …) → (…, P, H, d, …)``: the features cut into ``P`` pieces (one space each), each
    split into ``H`` heads of ``d`` units; ``None`` if the reshape is not of that form."""
    if x.dim is None or x.hdim is not None or not x.spaced():
        return None
    pre, size, post = math.prod(x.shape[:x.dim]), x.shape[x.dim], math.prod(x.shape[x.dim + 1:])
    p = 1
    for d in range(len(out) - 2):
        if p == pre and out[d] * out[d + 1] * out[d + 2] == size and out[d] > 1 \
                and math.prod(out[d + 3:]) == post:
            pieces, width = out[d], size // out[d]
            segs = cut(ctx, x, [width * k for k in range(1, pieces)])
            item_shape = _drop(out, d)
            return Stacked(tuple(out), d, tuple(Feat(item_shape, d + 1, piece, d)
                                                for piece in _pieces(segs, [width] * pieces)))
        p *= out[d]
    return None


def permuted(x: Stacked, order, out) -> Stacked:
    """``x.permute(order)``: the stack dimension and each item's dimensions move with it."""
    sdim = order.index(x.sdim)
    item_order = [o - (o > x.sdim) for o in order if o != x.sdim]
    item_shape = _drop(out, sdim)
    move = lambda d: None if d is None else item_order.index(d)  # noqa: E731
    items = tuple(f if f.dim is None else Feat(item_shape, move(f.dim), f.segs, move(f.hdim)) for f in x.items)
    return Stacked(tuple(out), sdim, items)


def single(x: Stacked) -> Feat | None:
    """The one item of a stack of length 1 (its stack dimension can be dropped), else ``None``."""
    return x.items[0] if x.shape[x.sdim] == 1 else None


def index_stack(ctx, node, x: Stacked, items, rest_getitem):
    """``x[index]`` with ``index`` as one entry per dimension (``items``): an integer or a contiguous
    slice at the stack dimension; the other entries go to ``rest_getitem(item, rest)`` (indexing
    one item) when the stack dimension is an integer, and must be full slices otherwise."""
    if any(i is None for i in items):
        return ctx.opaque(node, "indexing that inserts dimensions into a stack of tensors")
    at = items[x.sdim]
    rest = tuple(i for d, i in enumerate(items) if d != x.sdim)
    full = all(isinstance(i, slice) and i == slice(None) for i in rest)
    if isinstance(at, int):
        item = x.items[at]
        return item if full and ctx.shape(node) == item.shape else rest_getitem(item, rest)
    if isinstance(at, slice) and full and range(x.shape[x.sdim])[at].step == 1:
        return Stacked(ctx.shape(node), x.sdim, tuple(x.items[k] for k in range(x.shape[x.sdim])[at]))
    return ctx.opaque(node, f"indexing a stack of tensors with {at!r}")


def unbind(ctx, node, x, dim=0):
    """``x.unbind(dim)``: a stack's items along its stack dimension; a tensor of features split along
    another dimension (each piece keeps the features); anything else is refused."""
    if isinstance(x, Stacked):
        if dim % x.ndim != x.sdim:
            return ctx.opaque(node, "unbinding a stack of tensors along another dimension")
        return tuple(x.items)
    if not isinstance(x, Feat):
        return ctx.opaque(node, "unbinding something that is not a tensor")
    d = dim % x.ndim
    shape = _drop(x.shape, d)
    if x.dim is None or not x.spaced():
        return tuple(Feat(shape) for _ in range(x.shape[d]))
    if d in (x.dim, x.hdim):
        return ctx.opaque(node, f"unbinding the feature dimension {d}")
    move = lambda k: None if k is None else k - (k > d)  # noqa: E731
    return tuple(Feat(shape, move(x.dim), x.segs, move(x.hdim)) for _ in range(x.shape[d]))
