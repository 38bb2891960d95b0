"""Shape ops for :func:`architectures.from_module`: where the feature dimension goes.

A reshape keeps a space when the feature dimension survives whole: its size and the
product of the dimensions before it are unchanged (``(N, C, 1, 1) → (N, C)`` keeps it);
``(N, C, H, W) → (N, C·H·W)`` with ``H·W > 1`` repeats each channel over the positions (a
repeated edge, :func:`flatten_repeat`; which ops may see such features:
:mod:`architectures.extract.repeat`); other merges or splits are refused. Transposes and permutes move it; indexing along other
dimensions keeps it; concatenation along it lays spaces side by side (slices); along another
dimension it joins them.
"""
from __future__ import annotations

import math

import torch

from architectures.extract.gqa import expand_copies, insert_copies, merge_copies, merge_heads
from architectures.extract.heads import head_reshape
from architectures.extract.rotary import half_slice, join_halves
from architectures.extract.stacked import index_stack, packed_split, permuted, single, unbind
from architectures.extract.state import Feat, ParamRef, Stacked

__all__ = ["SHAPE_FUNCTIONS", "SHAPE_METHODS", "getitem", "move_feature", "map_dim", "flatten_repeat"]


def map_dim(in_shape, dim: int, out_shape) -> int | None:
    """The dimension of ``out_shape`` that holds dimension ``dim`` of ``in_shape`` after a reshape,
    or ``None`` when it does not survive whole."""
    pre, size = math.prod(in_shape[:dim]), in_shape[dim]
    p = 1
    for d, s in enumerate(out_shape):
        if p == pre and s == size:
            return d
        p *= s
        if p > pre and pre > 0:
            return None
    return None


def move_feature(ctx, node, x, *args, **kwargs):
    """Any reshape (view, reshape, flatten, unflatten, squeeze, unsqueeze, contiguous)."""
    out = ctx.shape(node)
    if isinstance(x, Stacked):  # a stack of one: drop its stack dimension, then reshape the item
        if single(x) is None:
            return ctx.opaque(node, "a reshape of a stack of tensors")
        x = single(x)
    if isinstance(x, (Feat, ParamRef)) and tuple(out) == tuple(x.shape):  # a no-op reshape keeps everything
        return x
    if isinstance(x, ParamRef):
        return _move_param(ctx, node, x, out)
    if not isinstance(x, Feat):
        return ctx.opaque(node, "a reshape of something that is not a tensor")
    if x.dim is None:
        return Feat(out)
    if x.rdim is not None:
        return merge_copies(ctx, node, x, out)
    if x.rep is not None and x.hdim is not None:
        return merge_heads(ctx, node, x, out, head_reshape(x, out))
    copies = insert_copies(x, out)
    if copies is not None:
        return copies
    if x.rep is not None:
        return ctx.opaque(node, f"a reshape {x.shape} → {out} of a flatten's features (a channel space repeated "
                                f"over positions)")
    if x.hdim is not None or (map_dim(x.shape, x.dim, out) is None and x.spaced()):
        split = head_reshape(x, out) or (packed_split(ctx, x, out) if x.hdim is None else None)
        if split is not None:
            return split
        merged = flatten_repeat(x, out) if x.hdim is None and x.half is None else None
        if merged is not None:
            return _flattened(ctx, node, x, out, *merged)
        if x.hdim is not None and _interleaves(x, out):
            return interleave(ctx, node, x, "the channels of groups interleaved (a channel shuffle)")
    d = None if x.hdim is not None else map_dim(x.shape, x.dim, out)
    if d is None:
        return ctx.opaque(node, f"a reshape {x.shape} → {out} that splits or interleaves the feature dimension "
                                f"{x.dim} (size {x.shape[x.dim]})")
    return x.moved(out, d)


def flatten_repeat(x: Feat, out) -> tuple[int, tuple[int, int]] | None:
    """``(d, (count, block))`` when reshaping ``x`` to ``out`` merges its feature dimension with the
    dimensions right after it (channel-major: ``(S, 1)``) or right before it (channels-last:
    ``(S, C)``) into dimension ``d``; ``None`` for any other reshape."""
    D, shape, C = x.dim, x.shape, x.shape[x.dim]
    for d in range(len(out)):
        pre = math.prod(out[:d])
        if pre == math.prod(shape[:D]):
            for j in range(D + 2, len(shape) + 1):
                S = math.prod(shape[D + 1:j])
                if S > 1 and out[d] == C * S:
                    return d, (S, 1)
        for i in range(D):
            S = math.prod(shape[i:D])
            if S > 1 and pre == math.prod(shape[:i]) and out[d] == S * C:
                return d, (S, C)
    return None


def _flattened(ctx, node, x: Feat, out, d: int, rep: tuple[int, int]):
    """The features of ``x`` merged with positions into dimension ``d``: each unit repeated ``rep``
    (:mod:`architectures.extract.repeat`); channels-last with the features split into pieces puts
    each piece's copies apart, which no edge expresses."""
    if rep[1] > 1 and len(x.segs) > 1:
        return ctx.opaque(node, f"a channels-last flatten {x.shape} → {out} of features split into pieces")
    return Feat(tuple(out), d, x.segs, rep=rep)


def _interleaves(x: Feat, out) -> bool:
    """``x`` split into groups with the within-group dimension *before* the group one (a transpose of
    ``(…, g, C/g)``), merged back into one dimension: unit ``j·g + i`` is group ``i``'s unit ``j``."""
    if x.hdim != x.dim + 1:
        return False
    pre, size = math.prod(x.shape[:x.dim]), x.shape[x.dim] * x.shape[x.hdim]
    p = 1
    for s in out:
        if p == pre and s == size:
            return True
        p *= s
    return False


def interleave(ctx, node, x: Feat, why: str) -> Feat:
    """A fixed permutation of the units that are not a relabelling any class expresses (a channel
    shuffle): the spaces on both sides keep no symmetry (``why`` is recorded), and the result indexes
    no space — exact, never more."""
    for var, _ in x.segs:
        ctx.state.kill(var, f"{why} at fx node {node.name!r}")
    return Feat(ctx.shape(node))


def _spans(spans) -> tuple | None:
    """``spans`` for a :class:`ParamRef`: ``None`` when no dimension is cut."""
    spans = tuple(spans)
    return None if all(s is None for s in spans) else spans


def _move_param(ctx, node, p: ParamRef, out):
    axes: list[int | None] = [None] * len(out)
    spans: list = [None] * len(out)
    for d, a in enumerate(p.axes):
        if a is None or p.shape[d] == 1:
            continue
        nd = map_dim(p.shape, d, out)
        if nd is None:
            return ctx.opaque(node, f"a reshape of parameter {p.name!r} that splits one of its axes")
        axes[nd], spans[nd] = a, p.span(d)
    return ParamRef(p.name, tuple(out), tuple(axes), _spans(spans))


def _expand(ctx, node, x, *sizes):
    out = ctx.shape(node)
    shift = len(out) - (x.ndim if isinstance(x, Feat) else len(x.shape) if isinstance(x, ParamRef) else 0)
    if isinstance(x, ParamRef):
        kept = [x.shape[d] == out[d + shift] for d in range(len(x.axes))]
        return ParamRef(x.name, tuple(out), (None,) * shift + tuple(a if k else None for a, k in zip(x.axes, kept)),
                        _spans((None,) * shift + tuple(x.span(d) if k else None for d, k in enumerate(kept))))
    if not isinstance(x, Feat):
        return ctx.opaque(node, "expand of something that is not a tensor")
    if x.dim is None:
        return Feat(out)
    if x.rdim is not None:
        return expand_copies(ctx, node, x)
    if x.hdim is not None and (shift or out[x.hdim] != x.shape[x.hdim]):
        return ctx.opaque(node, "an expand of head features other than along positions")
    if out[x.dim + shift] != x.shape[x.dim]:
        return ctx.opaque(node, "expand along the feature dimension")
    return x.moved(out, x.dim + shift)


def _perm(ctx, node, x, order):
    out = ctx.shape(node)
    order = [d % len(order) for d in order]
    if isinstance(x, Stacked):
        return permuted(x, order, out)
    if isinstance(x, ParamRef):
        return ParamRef(x.name, tuple(out), tuple(x.axes[d] for d in order), _spans(x.span(d) for d in order))
    if not isinstance(x, Feat):
        return ctx.opaque(node, "a permutation of dimensions of something that is not a tensor")
    if x.dim is None:
        return Feat(out)
    if x.rdim is not None:
        return ctx.opaque(node, "moving dimensions of key/value heads before their copies are merged")
    return Feat(out, order.index(x.dim), x.segs, None if x.hdim is None else order.index(x.hdim), rep=x.rep)


def _permute(ctx, node, x, *dims, **kwargs):
    dims = kwargs.get("dims", dims)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list, torch.Size)):
        dims = dims[0]
    return _perm(ctx, node, x, list(dims))


def _transpose(ctx, node, x, a=None, b=None, **kwargs):
    if not isinstance(x, (Feat, ParamRef, Stacked)):
        return ctx.opaque(node, "a transpose of something that is not a tensor")
    nd = len(x.shape)
    if nd < 2:
        return x
    a, b = kwargs.get("dim0", a), kwargs.get("dim1", b)
    if a is None:  # .t()
        a, b = 0, 1
    order = list(range(nd))
    order[a % nd], order[b % nd] = order[b % nd], order[a % nd]
    return _perm(ctx, node, x, order)


def _items(index, ndim: int) -> list:
    """``index`` as one entry per input dimension (``None`` entries insert dimensions)."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is Ellipsis for i in items):
        k = items.index(Ellipsis)
        used = sum(1 for i in items if i is not None and i is not Ellipsis)
        items[k:k + 1] = [slice(None)] * (ndim - used)
    return items + [slice(None)] * (ndim - sum(1 for i in items if i is not None))


def _getitem_param(ctx, node, p: ParamRef, index):
    """Basic indexing of a parameter (``pos_embed[:, :T]``, ``bias[:8]``): an axis cut to a
    contiguous slice keeps its axis and records the slice (an add along the features then claims
    that slice of the tensor); a strided or reversed slice of an axis is refused."""
    axes: list[int | None] = []
    spans: list = []
    d = 0
    for item in _items(index, len(p.shape)):
        if item is None:
            axes.append(None)
            spans.append(None)
        elif isinstance(item, int):
            d += 1
        elif isinstance(item, slice):
            r = range(p.shape[d])[item]
            if r == range(p.shape[d]) or p.axes[d] is None:
                axes.append(p.axes[d])
                spans.append(p.span(d))
            elif r.step != 1 and len(r) > 1:
                return ctx.opaque(node, f"a strided slice of parameter {p.name!r}")
            else:
                base = 0 if p.span(d) is None else p.span(d)[0]
                start = base + (r.start if len(r) else 0)
                axes.append(p.axes[d])
                spans.append((start, start + len(r)))
            d += 1
        else:
            return ctx.opaque(node, f"advanced indexing of parameter {p.name!r}")
    return ParamRef(p.name, ctx.shape(node), tuple(axes), _spans(spans))


def getitem(ctx, node, x, index):
    """``x[index]``: elements of tuples (attention outputs), or basic indexing of a tensor along
    dimensions other than the features."""
    if isinstance(x, (tuple, list)):
        return x[index]
    if isinstance(x, ParamRef):
        return _getitem_param(ctx, node, x, index)
    if isinstance(x, Stacked):
        return index_stack(ctx, node, x, _items(index, x.ndim), lambda item, rest: getitem(ctx, node, item, rest))
    if not isinstance(x, Feat):
        return ctx.value(node)
    out = ctx.shape(node)
    if x.dim is None:
        return Feat(out)
    items = _items(index, x.ndim)
    if x.hdim is not None:
        copies = insert_copies(x, out) if all(i is None or i == slice(None) for i in items) else None
        return copies if copies is not None else half_slice(ctx, node, x, items)
    d_in, d_out = 0, 0
    for item in items:
        if item is None:
            d_out += 1
            continue
        if d_in == x.dim:
            if not (isinstance(item, slice) and range(x.shape[x.dim])[item] == range(x.shape[x.dim])):
                return ctx.opaque(node, f"indexing the feature dimension {x.dim} with {item!r}")
            return x.moved(out, d_out)
        if isinstance(item, int):
            d_in += 1
        elif isinstance(item, slice):
            d_in, d_out = d_in + 1, d_out + 1
        else:
            return ctx.opaque(node, f"advanced indexing with {type(item).__name__}")
    return ctx.opaque(node, "indexing that loses the feature dimension")


def _getattr(ctx, node, x, attr):
    """Attributes of a traced tensor: ``.T``/``.mT`` transpose, ``.data`` is the tensor itself."""
    if attr in ("T", "mT") and isinstance(x, (Feat, ParamRef)):
        return _transpose(ctx, node, x, -2, -1)
    if attr == "data":
        return _contiguous(ctx, node, x)
    value = ctx.value(node)
    if isinstance(value, torch.Tensor):
        return ctx.opaque(node, f"the attribute {attr!r} of a tensor")
    return value


def _contiguous(ctx, node, x, *args, **kwargs):
    return x if isinstance(x, (Feat, ParamRef, Stacked)) else ctx.opaque(node, "not a tensor")


def _unbind(ctx, node, x, dim=0):
    return unbind(ctx, node, x, dim)


def _cat(ctx, node, tensors, dim=0, **kwargs):
    """Concatenation: along the features, spaces side by side; along another dimension, one space."""
    dim = kwargs.get("axis", dim)
    out = ctx.shape(node)
    d = dim % len(out)
    spaced = [t for t in tensors if isinstance(t, Feat) and t.spaced()]
    if not spaced:
        ctx.poison([t.name for t in tensors if isinstance(t, ParamRef)], node)
        return Feat(out)
    if len({t.dim for t in spaced}) > 1:
        return ctx.opaque(node, "concatenation of tensors whose features lie on different dimensions")
    D = spaced[0].dim
    if any(t.hdim is not None for t in spaced):
        return join_halves(ctx, node, tensors, d)
    if d == D:
        segs = []
        for t in tensors:
            if isinstance(t, Feat) and t.spaced():
                segs += list(t.segs)
            else:
                if isinstance(t, ParamRef):
                    ctx.poison([t.name], node)
                segs.append((None, t.shape[d]))
        return Feat(out, D, tuple(segs))
    base = spaced[0]
    for t in tensors:
        if isinstance(t, ParamRef):
            ctx.attach(node, base, t, D, len(out))
        elif t is not base:
            ctx.join(node, base, t)
    return base.moved(out, D)


SHAPE_METHODS = {m: move_feature for m in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
                                            "view_as", "reshape_as")}
SHAPE_METHODS.update({"contiguous": _contiguous, "to": _contiguous, "float": _contiguous, "double": _contiguous,
                      "type_as": _contiguous, "clone": _contiguous, "detach": _contiguous,
                      "expand": _expand, "expand_as": _expand, "permute": _permute, "transpose": _transpose,
                      "t": _transpose, "unbind": _unbind})
SHAPE_FUNCTIONS = {torch.flatten: move_feature, torch.reshape: move_feature, torch.squeeze: move_feature,
                   torch.unsqueeze: move_feature, torch.permute: _permute, torch.transpose: _transpose,
                   torch.t: _transpose, torch.cat: _cat, torch.concat: _cat, getattr: _getattr, torch.unbind: _unbind}
