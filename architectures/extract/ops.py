"""How each module touches candidate spaces, for :func:`architectures.from_module`.

Every handler takes the walk's context, the fx node and its arguments (fx nodes replaced by
what they carry: ``Feat``, ``ParamRef`` or a Python value) and returns what the node carries.
Parameterised ops (Linear, Conv, Embedding, attention) create spaces and connect their tensors
(``out`` on the produced axis, ``in`` on the consumed one); normalisations and activations
restrict the classes to those exact across them; adds join spaces; reshapes move the feature
dimension where it stays unambiguous. Anything else goes to ``ctx.opaque`` (an error naming the
node, or an explicitly fixed region).
"""
from __future__ import annotations

from torch import nn

from symmetries.classes import (HeadStructured, Invertible, Permutation, PermutationScaling, SemiPermutation,
                                SignedPermutation, Trivial)

from architectures.extract.heads import softmax_heads
from architectures.extract.rules import register_rule
from architectures.extract.shapes import move_feature
from architectures.extract.state import Feat, HeadOnly, ParamRef, piece_classes

__all__ = ["PERM", "RELU_LIKE", "last_dim_norm", "vector"]

PERM = (Permutation(),)
RELU_LIKE = (PermutationScaling(), SemiPermutation())


def vector(t) -> bool:
    """``t`` is absent or a whole one-axis parameter seen as it is (a bias, a gain)."""
    return t is None or (isinstance(t, ParamRef) and t.axes == (0,) and t.whole)


# -- parameterised ops -----------------------------------------------------------------------------
def _consume(ctx, x: Feat, param: str, axis: int) -> None:
    """``param``'s ``axis`` reads the features of ``x``: role ``in`` on each segment."""
    ctx.follow(x, [(param, "in")], axis)


def _produce(ctx, node, size: int, hint: str, tensors) -> int:
    """A new candidate space of ``size`` units produced by ``tensors`` = [(name, axis)] (role out)."""
    v = ctx.state.new(size, hint)
    for name, axis in tensors:
        if name is not None:
            ctx.state.connect(v, name, axis, "out")
    return v


def _linear(ctx, node, x, weight: str, bias: str | None, hint: str):
    """``y = x Wᵀ + b``: W (out, in) — axis 1 consumes x's space, axis 0 and b produce a new one."""
    if not isinstance(x, Feat):
        return ctx.opaque(node, "a linear map of something that is not a tensor")
    if x.spaced() and x.dim != x.ndim - 1:
        return ctx.opaque(node, f"a linear map over dimension {x.ndim - 1} while the features are on {x.dim}")
    _consume(ctx, x, weight, 1)
    out = ctx.shape(node)
    v = _produce(ctx, node, out[-1], hint, [(weight, 0), (bias, 0)])
    return Feat(out, len(out) - 1, ((v, out[-1]),))


def _module_linear(ctx, node, mod, x):
    return _linear(ctx, node, x, ctx.param(node.target, "weight"), ctx.param(node.target, "bias", mod.bias),
                   node.target)


def _channel_map(ctx, node, x, weight: str, bias: str | None, hint: str, consumed: int, produced: int):
    """A (transposed) convolution with input channels on dimension 1: the weight's axis ``consumed``
    reads them; its axis ``produced`` and the bias produce a new channel space on dimension 1."""
    _consume(ctx, x, weight, consumed)
    out = ctx.shape(node)
    v = _produce(ctx, node, out[1], hint, [(weight, produced), (bias, 0)])
    return Feat(out, 1, ((v, out[1]),))


def _module_embedding(ctx, node, mod, idx):
    """Embedding weight (num, dim): axis 1 produces the embedding space."""
    if mod.max_norm is not None:
        return ctx.opaque(node, "an embedding with max_norm (renormalises rows)")
    return _embedding(ctx, node, idx, ctx.param(node.target, "weight"), node.target)


def _embedding(ctx, node, idx, weight: str, hint: str):
    """A table looked up by ``idx``: the table's axis 1 produces the embedding space."""
    if isinstance(idx, Feat) and idx.spaced():
        return ctx.opaque(node, "an embedding looked up by transformed values")
    out = ctx.shape(node)
    v = _produce(ctx, node, out[-1], hint, [(weight, 1)])
    return Feat(out, len(out) - 1, ((v, out[-1]),))


def last_dim_norm(ctx, node, x, normalized_shape, what: str, tensors, classes):
    """A norm over the last dimension (LayerNorm, RMSNorm): exact for ``classes`` when it normalises
    exactly the features, with ``tensors`` following them."""
    if isinstance(x, Feat) and x.spaced() and tuple(normalized_shape) != (x.shape[-1],):
        return ctx.opaque(node, f"{what} over dimensions other than the features (dimension {x.dim})")
    return ctx.per_feature(node, x, tensors, classes, what=what, dim=-1)


def _module_batchnorm(ctx, node, mod, x):
    """Eval-mode BatchNorm: weight, bias, running_mean follow the channel (out), running_var by
    squares (var); exact for permutations only (ε breaks scalings, the affine gain breaks signs)."""
    p = lambda n, present=True: ctx.param(node.target, n, present)  # noqa: E731
    stats = mod.track_running_stats and mod.running_mean is not None
    why = isinstance(x, Feat) and _unbatched(x, _INSTANCE_NORM_SPATIAL.get(type(mod)), "instance normalisation")
    if why:
        return ctx.opaque(node, why)
    tensors = [(p("weight", mod.affine), "out"), (p("bias", mod.affine), "out"),
               (p("running_mean", stats), "out"), (p("running_var", stats), "var")]
    return ctx.per_feature(node, x, tensors, PERM, what="batch normalisation", dim=1)


def _module_layernorm(ctx, node, mod, x):
    """LayerNorm over the last dimension commutes with permutations whose gain and bias follow."""
    affine = mod.elementwise_affine
    tensors = [(ctx.param(node.target, "weight", affine), "out"),
               (ctx.param(node.target, "bias", affine and getattr(mod, "bias", None) is not None), "out")]
    return last_dim_norm(ctx, node, x, mod.normalized_shape, "layer normalisation", tensors, PERM)


def _module_rmsnorm(ctx, node, mod, x):
    """``nn.RMSNorm`` divides by the root *mean* square, which depends on the width: gain-free it
    commutes with square orthogonal maps but not widening ones, so signed permutations are claimed
    (a sum-based norm with a constant, ``y / √(‖y‖²/D₀ + ε)``, admits ``Orthogonal``); with a gain,
    permutations."""
    gain = mod.weight is not None
    return last_dim_norm(ctx, node, x, mod.normalized_shape, "RMS normalisation",
                         [(ctx.param(node.target, "weight", gain), "out")], PERM if gain else (SignedPermutation(),))


def _module_mha(ctx, node, mod, query, key, value, *rest, **kwargs):
    """``nn.MultiheadAttention``: per head h, scores use W_Q,hᵀ W_K,h and outputs W_O,h W_V,h, so the
    query/key space and the value/output space are head-structured (a head permutation shared by
    both, one invertible map per head); Q and the query bias are ``out``, K and the key bias ``in``."""
    if mod.bias_k is not None or not all(isinstance(t, Feat) for t in (query, key, value)):
        return ctx.opaque(node, "multi-head attention with add_bias_kv or non-tensor inputs")
    if any(isinstance(m, (Feat, ParamRef)) and (isinstance(m, ParamRef) or m.spaced())
           for m in (*rest, *kwargs.values())):
        return ctx.opaque(node, "multi-head attention with masks that depend on transformed features")
    if any(t.spaced() and t.dim != t.ndim - 1 for t in (query, key, value)):
        return ctx.opaque(node, "multi-head attention whose inputs do not carry features on the last dimension")
    E, H, name = mod.embed_dim, mod.num_heads, node.target
    heads = (HeadStructured(H, Invertible()),)
    qk = ctx.state.new(E, f"{name}.qk", heads, head_group=name)
    vo = ctx.state.new(E, f"{name}.vo", heads, head_group=name)
    bias = ctx.param(name, "in_proj_bias", mod.in_proj_bias)
    if mod._qkv_same_embed_dim:
        w = ctx.param(name, "in_proj_weight")
        ctx.join(node, query, key)  # the packed weight's input axis is shared by Q, K and V
        ctx.join(node, query, value)
        _consume(ctx, query, w, 1)
        specs = [(qk, w, "out", (0, E)), (qk, w, "in", (E, 2 * E)), (vo, w, "out", (2 * E, 3 * E))]
    else:
        ws = [ctx.param(name, f"{k}_proj_weight") for k in "qkv"]
        for t, w in zip((query, key, value), ws):
            _consume(ctx, t, w, 1)
        specs = [(qk, ws[0], "out", None), (qk, ws[1], "in", None), (vo, ws[2], "out", None)]
    for i, (var, w, role, span) in enumerate(specs):
        ctx.state.connect(var, w, 0, role, span)
        if bias is not None:
            ctx.state.connect(var, bias, 0, role, (i * E, (i + 1) * E))
    ow = ctx.param(name, "out_proj.weight")
    ctx.state.connect(vo, ow, 1, "in")
    out_shape = tuple(ctx.value(node)[0].shape)
    v = _produce(ctx, node, E, name, [(ow, 0), (ctx.param(name, "out_proj.bias", mod.out_proj.bias), 0)])
    weights = ctx.value(node)[1]
    if weights is not None and weights.dim() == query.ndim + 1:  # per-head weights: indexed by the heads
        weights = HeadOnly(tuple(weights.shape), weights.dim() - 3, qk)
    elif weights is not None:  # averaged over the heads: invariant
        weights = Feat(tuple(weights.shape))
    return (Feat(out_shape, len(out_shape) - 1, ((v, E),)), weights)


# -- elementwise ops ----------------------------------------------------------------------------------
def _module_prelu(ctx, node, mod, x):
    """PReLU: one shared slope is positively homogeneous and linearly decomposable (the slope is
    fixed); per-channel slopes follow the channel (``out``), which only permutations leave exact."""
    w = ctx.param(node.target, "weight")
    if mod.num_parameters == 1 or not (isinstance(x, Feat) and x.spaced()):
        ctx.poison([w], node)
        return ctx.elementwise(node, x, "prelu", RELU_LIKE)
    return ctx.per_feature(node, x, [(w, "out")], PERM, what="a per-channel PReLU", dim=0 if x.ndim == 1 else 1)


def _passthrough(ctx, node, x, *args, **kwargs):
    """Identity in eval mode (dropout)."""
    if isinstance(x, HeadOnly):
        return x
    if not isinstance(x, Feat):
        return ctx.opaque(node, "dropout of something that is not a tensor")
    return x


def _unbatched(x: Feat, spatial: int | None, what: str) -> str | None:
    """Why an op over ``spatial`` dimensions (a 1-d, 2-d or 3-d pool, conv or instance norm) must not
    be given ``x``, or ``None``: torch reads a ``spatial + 1``-D input as one unbatched sample
    ``(C, *spatial)``, whose dimension 1 — the features — is then one the op slides over."""
    if spatial is None or not x.spaced() or x.ndim != spatial + 1:
        return None
    return (f"{what} over {spatial} dimension(s) of a {x.ndim}-D tensor: torch reads it as one unbatched "
            f"sample, so the op runs across dimension 1 (the features)")


def _pool(ctx, node, x, classes, spatial: int | None):
    """Pooling over ``spatial`` dimensions, channel by channel (dimension 1). ``spatial`` is ``None``
    for interpolation, which runs over every dimension after the channels and has no unbatched form."""
    if not isinstance(x, Feat) or (x.spaced() and x.dim != 1):
        return ctx.opaque(node, "pooling whose channels are not on dimension 1")
    why = _unbatched(x, spatial, "pooling")
    if why:
        return ctx.opaque(node, why)
    for var, _ in x.segs:
        if classes:  # average pooling is linear: no restriction
            ctx.state.restrict(var, classes)
    return x.moved(ctx.shape(node), x.dim)


def _softmax(ctx, node, x, *args, **kwargs):
    if isinstance(x, HeadOnly):  # attention weights: per head, over the keys
        res = softmax_heads(ctx, node, x, *args, **kwargs)
        return res if res is not NotImplemented else ctx.opaque(node, "a softmax over the heads")
    if isinstance(x, Feat) and x.hdim is not None and x.spaced():
        return _softmax_split(ctx, node, x, kwargs.get("dim", args[0] if args else None))
    return ctx.elementwise(node, x, "softmax", PERM)


def _softmax_split(ctx, node, x: Feat, dim):
    """A softmax of features split into ``H`` groups (``view(…, H, d)``): over the within-group
    dimension it normalises each group apart — whole groups and units inside each may move,
    ``HeadStructured(H, Permutation())``; over the group dimension it normalises across groups unit
    by unit — whole groups may move, nothing inside (``HeadStructured(H, Trivial())``); over any
    other dimension it acts unit by unit (permutations). A space holding part of the features keeps
    the whole groups it holds (:func:`~architectures.extract.state.piece_classes`)."""
    if dim is None:
        return ctx.opaque(node, "a softmax without a dimension of features split into groups")
    d, H = dim % x.ndim, x.shape[x.hdim]
    inner = {x.dim: Permutation(), x.hdim: Trivial()}.get(d)
    pos, size = 0, H * x.shape[x.dim]
    for var, n in x.segs:
        classes = PERM if inner is None else piece_classes((HeadStructured(H, inner),), size, pos, n)
        ctx.state.restrict(var, classes, "softmax")
        pos += n
    return x.moved(ctx.shape(node), x.dim)


def _pool_module(classes, spatial: int):
    return lambda ctx, node, mod, x: _pool(ctx, node, x, classes, spatial)


#: Instance norms accept an unbatched input (BatchNorm does not): how many spatial dimensions each has.
_INSTANCE_NORM_SPATIAL = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2}
for _types, _rule in [
    (nn.Linear, _module_linear),
    (nn.PReLU, _module_prelu),
    (nn.Upsample, lambda ctx, node, mod, x: _pool(ctx, node, x, (), None)),
    (nn.Embedding, _module_embedding),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d), _module_batchnorm),
    (nn.LayerNorm, _module_layernorm),
    (getattr(nn, "RMSNorm", ()), _module_rmsnorm),
    (nn.MultiheadAttention, _module_mha),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d), lambda ctx, node, mod, x, *a, **k: _passthrough(ctx, node, x)),
    ((nn.AvgPool1d, nn.AdaptiveAvgPool1d), _pool_module((), 1)),  # average pooling is linear
    ((nn.AvgPool2d, nn.AdaptiveAvgPool2d), _pool_module((), 2)),
    ((nn.MaxPool1d, nn.AdaptiveMaxPool1d), _pool_module(RELU_LIKE, 1)),
    ((nn.MaxPool2d, nn.AdaptiveMaxPool2d), _pool_module(RELU_LIKE, 2)),
    ((nn.Softmax, nn.LogSoftmax), lambda ctx, node, mod, x: _softmax(ctx, node, x)),
    ((nn.Flatten, nn.Unflatten), lambda ctx, node, mod, x: move_feature(ctx, node, x)),
]:
    for _t in _types if isinstance(_types, tuple) else (_types,):
        register_rule(_t, _rule)
