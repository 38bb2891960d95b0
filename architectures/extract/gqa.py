"""Grouped-query attention for :func:`architectures.from_module`: ``G`` key/value heads serving
``R = H/G`` query heads each.

Hugging Face's ``repeat_kv`` — ``k[:, :, None].expand(B, G, R, L, d).reshape(B, G·R, L, d)`` — and
``F.scaled_dot_product_attention(…, enable_gqa=True)`` make query head ``h = g·R + r`` read key and
value head ``g``. The walk follows the copies (:class:`~architectures.extract.state.Feat` ``rdim``,
then ``rep = (R, d)``): the pairing ``q @ k_repᵀ`` makes one query/key space of ``G·d`` units, the
key's, with ``HeadStructured(G, ·)``: the key producers take role ``in`` as for ``G = H``, and the
query producers role ``out`` with ``repeat=(R, d)`` (a map ``A`` of the group space acts on each of
its ``R`` query heads alike, ``W_Q ← A_rep W_Q``, so ``q_h·k_g`` is kept); ``att @ v_rep`` ties the
value space (``G·d``) to the same group permutation, its readers (``o_proj`` columns) with
``repeat=(R, d)`` through the merged output heads.
"""
from __future__ import annotations

from dataclasses import replace

from symmetries.classes import HeadStructured, Invertible, Trivial
from symmetries.roles import Role

from architectures.extract.state import _BLOCK_CLOSED, Claim, Feat, HeadOnly, common_prefix, meet_sets

__all__ = ["insert_copies", "expand_copies", "merge_copies", "merge_heads", "pair_grouped", "grouped_values",
           "gqa_inputs"]


def insert_copies(x: Feat, out) -> Feat | None:
    """``k[:, :, None]`` / ``k.unsqueeze(hdim + 1)`` of head features ``(…, G, …, d)``: a dimension of one
    copy right after the heads, or ``None`` for another reshape."""
    if x.hdim is None or x.rep is not None or x.rdim is not None or x.half is not None or x.dim < x.hdim:
        return None
    h = x.hdim + 1
    if tuple(out) != (*x.shape[:h], 1, *x.shape[h:]):
        return None
    return Feat(tuple(out), x.dim + 1, x.segs, x.hdim, rdim=h)


def expand_copies(ctx, node, x: Feat):
    """``expand`` of the copies' dimension (size 1 → ``R``), nothing else."""
    out = ctx.shape(node)
    if len(out) != x.ndim or any(o != s for k, (o, s) in enumerate(zip(out, x.shape)) if k != x.rdim) \
            or x.shape[x.rdim] != 1:
        return ctx.opaque(node, "an expand of repeated key/value heads other than of the copies' dimension")
    return Feat(tuple(out), x.dim, x.segs, x.hdim, rdim=x.rdim)


def merge_copies(ctx, node, x: Feat, out):
    """``(…, G, R, …, d) → (…, G·R, …, d)``: head ``g·R + r`` is copy ``r`` of head ``g`` — ``rep = (R, d)``."""
    h, r = x.hdim, x.rdim
    R, d = x.shape[r], x.shape[x.dim]
    if r != h + 1 or tuple(out) != (*x.shape[:h], x.shape[h] * R, *x.shape[r + 1:]):
        return ctx.opaque(node, f"a reshape {x.shape} → {tuple(out)} of repeated key/value heads other than "
                                f"merging the copies into the heads (repeat_kv)")
    return Feat(tuple(out), x.dim - 1, x.segs, h, rep=None if R == 1 else (R, d))


def merge_heads(ctx, node, x: Feat, out, merged: Feat | None):
    """Attention output heads of grouped queries merged back, ``(…, H, d) → (…, H·d)``: the value
    space repeated ``(R, d)`` (its reader, ``o_proj``, connects with that repeat)."""
    if merged is None or merged.hdim is not None:
        return ctx.opaque(node, f"a reshape {x.shape} → {tuple(out)} of attention heads of grouped queries "
                                f"other than merging the heads")
    return replace(merged, rep=x.rep)


def _grouped_classes(classes, H: int, G: int):
    """The classes of the ``G·d`` group space whose repeat ``(R, d)`` lies in ``classes`` (of ``H·d``):
    ``HeadStructured(H, X)`` → ``HeadStructured(G, X)`` (a group permutation moves whole query heads),
    block-closed classes stay (a block-diagonal repeat of one), anything else keeps nothing."""
    out = []
    for c in classes:
        if isinstance(c, HeadStructured):
            c = HeadStructured(G, c.inner) if c.num_heads == H else Trivial()
        elif not isinstance(c, _BLOCK_CLOSED):
            c = Trivial()
        out.append(c)
    return tuple(out)


def pair_grouped(ctx, node, q: Feat, kt: Feat):
    """``q @ k_repᵀ``: the query space (``H·d``) folds into the key space (``G·d``) — its edges move
    there with ``repeat=(R, d)`` and role ``out``, the key's take role ``in`` — one space of
    ``HeadStructured(G, ·)``, sealed in a head group; the scores carry ``rep = R``."""
    R, d = kt.rep
    H = q.shape[q.hdim]
    st = ctx.state
    qa, ka = st.find(q.segs[0][0]), st.find(kt.segs[0][0])
    vq, vk = st.vars[qa], st.vars[ka]
    if H % R or vq.size != H * d or vk.size != (H // R) * d or q.shape[q.dim] != d:
        return ctx.opaque(node, "grouped queries whose heads do not match the repeated keys")
    if qa == ka or vq.sealed or vk.sealed or any(e.role is not Role.OUT for e in vk.edges) \
            or any(e.role is not Role.OUT or e.repeat is not None for e in vq.edges):
        return ctx.opaque(node, "query/key features that are also used elsewhere")
    if vq.head_group is not None or vk.head_group is not None:
        return ctx.opaque(node, "query/key features already tied to other heads")
    G = H // R
    vk.edges = [e._replace(role=Role.IN) for e in vk.edges]
    vk.edges += [Claim(e.param, e.axis, Role.OUT, e.span, (R, d)) for e in vq.edges]
    vk.classes = meet_sets(meet_sets(vk.classes, _grouped_classes(vq.classes, H, G)),
                           (HeadStructured(G, Invertible()),))
    vk.activations += [a for a in vq.activations if a not in vk.activations]
    vk.dead = vk.dead or vq.dead
    del st.vars[qa]
    st.parent[qa] = ka  # later uses of the query features meet the sealed space (refused)
    group = common_prefix(vq.hint, vk.hint)
    vk.head_group, vk.hint, vk.sealed = group, f"{group}.qk", True
    return HeadOnly(ctx.shape(node), q.hdim, ka, R)


def grouped_values(ctx, node, s: HeadOnly, v: Feat):
    """``att @ v_rep``: the value space (``G·d``) joins the scores' group with
    ``HeadStructured(G, Invertible())``; the output heads are its copies ``rep = (R, d)``."""
    R, d = v.rep
    st = ctx.state
    qk, va = st.var(s.var), st.find(v.segs[0][0])
    vv = st.vars[va]
    G = s.shape[s.hdim] // R
    if s.rep != R or vv.size != G * d:
        return ctx.opaque(node, "attention weights applied to values repeated otherwise than the keys")
    if vv.sealed or (vv.head_group is not None and vv.head_group != qk.head_group):
        return ctx.opaque(node, "values already tied to other heads")
    st.restrict(va, (HeadStructured(G, Invertible()),))
    vv.head_group, vv.hint = qk.head_group, f"{qk.head_group}.vo"
    return Feat(ctx.shape(node), v.dim, v.segs, v.hdim, rep=v.rep)


def gqa_inputs(q: Feat, k: Feat, v: Feat):
    """SDPA's ``enable_gqa=True``: keys and values of ``G`` heads read as repeated to the queries' ``H``
    (``(k, v)``), or ``None`` when they cannot be (then the caller refuses)."""
    H, G = q.shape[q.hdim], k.shape[k.hdim]
    if G == H:
        return k, v
    if H % G or any(t.rep is not None or t.rdim is not None or t.hdim != q.hdim or t.dim != t.ndim - 1
                    for t in (k, v)):
        return None

    def rep(t: Feat) -> Feat:
        shape = list(t.shape)
        shape[t.hdim] = H
        return replace(t, shape=tuple(shape), rep=(H // G, t.shape[t.dim]))
    return rep(k), rep(v)
