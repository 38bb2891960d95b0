"""Hand-written attention for :func:`architectures.from_module`.

* ``split``/``chunk`` (and slicing) of the features cut a candidate space into pieces (packed QKV);
* ``view(b, t, H, d)`` splits the features into heads, ``reshape(b, t, H·d)`` merges them back;
* ``q @ kᵀ`` over the within-head dimension pairs the query and key spaces into one space of
  per-head invertible maps (``W_Q ← A W_Q``: the query producers keep role ``out``; the key
  producers take role ``in``, ``W_K ← A⁻ᵀ W_K``) — the scores are then :class:`HeadOnly`;
* ``scores @ v`` ties the value space to the same head permutation (a head group) with per-head
  invertible maps (``W_V ← B W_V``, readers ``W_O ← W_O B⁻¹``).
"""
from __future__ import annotations

import math
from numbers import Number

import torch
import torch.nn.functional as F

from symmetries.classes import HeadStructured, Invertible
from symmetries.roles import Role

from architectures.extract.gqa import gqa_inputs, grouped_values, pair_grouped
from architectures.extract.state import Feat, HeadOnly, common_prefix

__all__ = ["cut", "split_features", "head_reshape", "bilinear", "scores_times_values", "head_only_op", "sdpa",
           "HEAD_FUNCTIONS", "HEAD_METHODS"]


def cut(ctx, x: Feat, bounds) -> tuple:
    """Segments of ``x`` with boundaries at every offset in ``bounds`` (splitting spaces as needed)."""
    out, pos = [], 0
    for var, n in x.segs:
        inner = sorted(b - pos for b in bounds if pos < b < pos + n)
        if var is None or not inner:
            sizes = [n] if not inner else [b - a for a, b in zip([0] + inner, inner + [n])]
            out += [(var, k) for k in sizes] if var is None else [(var, n)]
        else:
            sizes = [b - a for a, b in zip([0] + inner, inner + [n])]
            out += list(zip(ctx.state.refine(var, sizes), sizes))
        pos += n
    return tuple(out)


def _pieces(segs, sizes):
    """Group consecutive segments into pieces of ``sizes``."""
    res, i = [], 0
    for size in sizes:
        group, total = [], 0
        while total < size:
            group.append(segs[i])
            total += segs[i][1]
            i += 1
        res.append(tuple(group))
    return res


def split_features(ctx, node, x, dim=0):
    """``x.split(s, dim)`` / ``x.chunk(n, dim)``: pieces along the features get their own spaces."""
    value = ctx.value(node)
    if not isinstance(x, Feat):
        return ctx.opaque(node, "splitting something that is not a tensor")
    d = dim % x.ndim
    if x.dim is None or not x.spaced() or d != x.dim:
        return tuple(x.moved(tuple(v.shape), x.dim) if x.dim is not None else Feat(tuple(v.shape)) for v in value)
    if x.hdim is not None:
        return ctx.opaque(node, "splitting features that are split into heads")
    sizes = [v.shape[d] for v in value]
    bounds, acc = [], 0
    for n in sizes[:-1]:
        acc += n
        bounds.append(acc)
    segs = cut(ctx, x, bounds)
    return tuple(Feat(tuple(v.shape), d, piece) for v, piece in zip(value, _pieces(segs, sizes)))


def head_reshape(x: Feat, out) -> Feat | None:
    """``(…, C) → (…, H, d)`` (features split into heads, or into channel groups: then ``x`` may
    hold several spaces, which attention refuses) or back; ``None`` if neither applies."""
    if x.hdim is None:
        pre, size = math.prod(x.shape[:x.dim]), x.shape[x.dim]
        p = 1
        for d in range(len(out) - 1):
            if p == pre and out[d] * out[d + 1] == size and out[d] > 1:
                return Feat(tuple(out), d + 1, x.segs, d)
            p *= out[d]
        return None
    if x.hdim != x.dim - 1:
        return None
    pre, size = math.prod(x.shape[:x.hdim]), x.shape[x.hdim] * x.shape[x.dim]
    p = 1
    for d, s in enumerate(out):
        if p == pre and s == size:
            return Feat(tuple(out), d, x.segs)
        p *= s
    return None


def bilinear(ctx, node, q: Feat, kt: Feat):
    """``q @ kᵀ`` per head over the within-head dimension: pair the query and key spaces."""
    if q.hdim is None or kt.hdim is None or q.hdim != kt.hdim or q.ndim != kt.ndim:
        return ctx.opaque(node, "a product of features that are not split into matching heads")
    if q.dim != q.ndim - 1 or kt.dim != kt.ndim - 2 or len(q.segs) != 1 or len(kt.segs) != 1:
        return ctx.opaque(node, "a product of head features that is not q @ kᵀ over the head dimension")
    if q.rep is not None:
        return ctx.opaque(node, "queries repeated for grouped heads (only keys and values are)")
    if kt.rep is not None:
        return pair_grouped(ctx, node, q, kt)
    st = ctx.state
    qa, ka = st.find(q.segs[0][0]), st.find(kt.segs[0][0])
    vq, vk = st.vars[qa], st.vars[ka]
    if qa == ka or vq.sealed or vk.sealed or any(e.role is not Role.OUT for e in vk.edges):
        return ctx.opaque(node, "query/key features that are also used elsewhere")
    if vq.head_group is not None or vk.head_group is not None:
        return ctx.opaque(node, "query/key features already tied to other heads")
    vk.edges = [e._replace(role=Role.IN) for e in vk.edges]
    r = st.union(qa, ka, node.name)
    H = q.shape[q.hdim]
    st.restrict(r, (HeadStructured(H, Invertible()),))
    group = common_prefix(vq.hint, vk.hint)
    v = st.vars[r]
    v.head_group, v.hint, v.sealed = group, f"{group}.qk", True
    return HeadOnly(ctx.shape(node), q.hdim, r)


def scores_times_values(ctx, node, s: HeadOnly, v: Feat):
    """``softmax(scores) @ v`` per head: the value space joins the scores' head group."""
    if v.hdim is None or v.hdim != s.hdim or v.ndim != s.ndim or v.dim != v.ndim - 1 or len(v.segs) != 1:
        return ctx.opaque(node, "attention weights applied to values that are not split into matching heads")
    if v.rep is not None or s.rep != 1:
        return grouped_values(ctx, node, s, v) if v.rep is not None else ctx.opaque(
            node, "attention weights of grouped queries applied to values that are not repeated alike")
    st = ctx.state
    qk, va = st.var(s.var), st.find(v.segs[0][0])
    vv = st.vars[va]
    if vv.sealed or (vv.head_group is not None and vv.head_group != qk.head_group):
        return ctx.opaque(node, "values already tied to other heads")
    st.restrict(va, (HeadStructured(s.shape[s.hdim], Invertible()),))
    vv.head_group = qk.head_group
    vv.hint = f"{qk.head_group}.vo"
    return Feat(ctx.shape(node), v.dim, v.segs, v.hdim)


def head_only_op(ctx, node, args) -> HeadOnly | None:
    """Ops on scores that treat every head alike: a scalar, or a tensor broadcast over the heads."""
    heads = [a for a in args if isinstance(a, HeadOnly)]
    if len(heads) != 1:
        return None
    s = heads[0]
    out = ctx.shape(node)
    if len(out) != s.ndim:
        return None
    for a in args:
        if a is s or a is None or isinstance(a, (Number, str, torch.dtype)):
            continue
        if isinstance(a, Feat) and not a.spaced():
            k = s.hdim - (len(out) - a.ndim)
            if k < 0 or a.shape[k] == 1:
                continue
        return None
    return HeadOnly(out, s.hdim, s.var, s.rep)


def sdpa(ctx, node, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention``: ``softmax(q kᵀ · scale + mask) v`` per head — the same
    pairing of query/key spaces and tie of the value space as the written-out form."""
    if not all(isinstance(t, Feat) for t in (q, k, v)):
        return ctx.opaque(node, "scaled_dot_product_attention with non-tensor inputs")
    if enable_gqa and q.hdim is not None and k.hdim is not None:
        kv = gqa_inputs(q, k, v)
        if kv is None:
            return ctx.opaque(node, "scaled_dot_product_attention with grouped queries whose keys and values are "
                                    "not plain head features")
        k, v = kv
    if isinstance(attn_mask, Feat) and attn_mask.spaced() or not (attn_mask is None or isinstance(attn_mask, Feat)):
        return ctx.opaque(node, "scaled_dot_product_attention with a mask that depends on transformed features")
    if k.hdim is None or k.dim != k.ndim - 1:
        return ctx.opaque(node, "scaled_dot_product_attention on keys that are not split into heads")
    shape = list(k.shape)
    shape[-1], shape[-2] = shape[-2], shape[-1]
    kt = Feat(tuple(shape), k.ndim - 2, k.segs, k.hdim, rep=k.rep)
    scores = bilinear(ctx, node, q, kt)
    if not isinstance(scores, HeadOnly):
        return scores
    if attn_mask is not None:
        k_dim = scores.hdim - (scores.ndim - attn_mask.ndim)
        if k_dim >= 0 and attn_mask.shape[k_dim] != 1:
            return ctx.opaque(node, "scaled_dot_product_attention with a mask that differs between heads")
    return scores_times_values(ctx, node, scores, v)


def _masked_fill(ctx, node, x, mask, value):
    res = head_only_op(ctx, node, [x, mask, value]) if isinstance(x, HeadOnly) else None
    if res is not None:
        return res
    if isinstance(x, Feat) and isinstance(mask, Feat) and not mask.spaced() and not x.spaced():
        return Feat(ctx.shape(node))
    return ctx.opaque(node, "masked_fill of features")


def softmax_heads(ctx, node, x, *args, **kwargs):
    dim = kwargs.get("dim", args[0] if args else None)
    if isinstance(x, HeadOnly) and dim is not None and dim % x.ndim != x.hdim:
        return HeadOnly(ctx.shape(node), x.hdim, x.var, x.rep)
    return NotImplemented


def _split(ctx, node, x, split_size_or_sections, dim=0):
    return split_features(ctx, node, x, dim)


def _chunk(ctx, node, x, chunks, dim=0):
    return split_features(ctx, node, x, dim)


HEAD_METHODS = {"split": _split, "chunk": _chunk, "masked_fill": _masked_fill}
HEAD_FUNCTIONS = {torch.split: _split, torch.chunk: _chunk, torch.masked_fill: _masked_fill,
                  F.scaled_dot_product_attention: sdpa}
