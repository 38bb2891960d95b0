"""Functions and tensor methods for :func:`architectures.from_module` (modules are in
:mod:`architectures.extract.ops`).

Activations by function or method use the activation registry; other elementwise functions
commute with permutations (odd ones with signed permutations); ``F.linear``, ``F.conv*``,
``F.embedding``, ``F.layer_norm`` with the module's parameters act like their modules; a
reduction over the features is invariant only under the maps that keep it (sums: columns summing
to one; ``‖y‖²`` and ``‖y‖₂``: orthogonal maps).
"""
from __future__ import annotations

import operator
from numbers import Number

import torch
import torch.nn.functional as F

from symmetries.classes import Orthogonal, SemiPermutation, SignedPermutation

from architectures.extract.binary import BINARY_FUNCTIONS, BINARY_METHODS
from architectures.extract.heads import HEAD_FUNCTIONS, HEAD_METHODS
from architectures.extract import activation_rules as _activation_rules  # noqa: F401  (registers them)
from architectures.extract import grouped as _grouped  # noqa: F401  (convolutions, GroupNorm, channel shuffle)
from architectures.extract.ops import (PERM, RELU_LIKE, _embedding, _linear, _passthrough, _pool, _softmax,
                                       last_dim_norm, vector)
from architectures.extract.rules import register_rule
from architectures.extract.shapes import SHAPE_FUNCTIONS, SHAPE_METHODS, getitem
from architectures.extract.state import Feat, ParamRef, hint_of

__all__: list[str] = []

def _f_linear(ctx, node, x, weight, bias=None):
    if not isinstance(weight, ParamRef) or weight.axes != (0, 1) or not weight.whole or not vector(bias):
        return ctx.opaque(node, "F.linear with weights that are not parameters of the module")
    return _linear(ctx, node, x, weight.name, None if bias is None else bias.name, hint_of(weight.name))


def _f_layer_norm(ctx, node, x, shape, weight=None, bias=None, eps=1e-5):
    if not (vector(weight) and vector(bias)):
        return ctx.opaque(node, "F.layer_norm with gains that are not parameters of the module")
    tensors = [(None if t is None else t.name, "out") for t in (weight, bias)]
    return last_dim_norm(ctx, node, x, shape, "layer normalisation", tensors, PERM)


def _f_embedding(ctx, node, idx, weight, *args, **kwargs):
    if not isinstance(weight, ParamRef) or weight.axes != (0, 1) or not weight.whole \
            or kwargs.get("max_norm") is not None:
        return ctx.opaque(node, "F.embedding with a table that is not a parameter of the module")
    return _embedding(ctx, node, idx, weight.name, hint_of(weight.name))


def _norm2(ctx, node, x, *args, **kwargs):
    """``‖y‖₂`` over the features is invariant under orthogonal maps (rectangular ones included).
    Arguments after the tensor are ``(p or ord, dim, keepdim)`` for every norm function."""
    if not isinstance(x, Feat):
        return ctx.opaque(node, "a norm of something that is not a tensor")
    p = kwargs.get("p", kwargs.get("ord", args[0] if args else 2))
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if x.dim is None or not x.spaced():
        return Feat(ctx.shape(node))
    dims = None if dim is None else {d % x.ndim for d in ((dim,) if isinstance(dim, int) else dim)}
    if p in (2, 2.0, None, "fro") and dims == {x.dim} and x.hdim is None:
        for var, _ in x.segs:
            ctx.state.restrict(var, (Orthogonal(),))
        return Feat(ctx.shape(node))
    return ctx.opaque(node, "a norm that is not the 2-norm over the features alone")


def _pad(ctx, node, x, pad, mode="constant", value=None):
    """Padding of dimensions other than the features: linear (zeros) or per-channel (reflect,
    replicate, circular); a non-zero constant commutes with permutations only."""
    if not isinstance(x, Feat):
        return ctx.opaque(node, "padding something that is not a tensor")
    padded = {x.ndim - 1 - i // 2 for i, n in enumerate(pad) if n}
    if x.dim is not None and x.spaced() and x.dim in padded:
        return ctx.opaque(node, "padding the feature dimension")
    if mode == "constant" and value not in (None, 0, 0.0):
        for var, _ in x.segs:
            ctx.state.restrict(var, PERM)
    return x.moved(ctx.shape(node), x.dim)


def _is_square(n) -> bool:
    """Whether fx node ``n`` is ``y ** 2`` (``y.pow(2)``, ``torch.pow(y, 2)``)."""
    return (getattr(n, "op", None) in ("call_method", "call_function")
            and (n.target == "pow" or n.target in (torch.pow, operator.pow)) and len(n.args) > 1 and n.args[1] == 2)


def _reduces_features(user, dim: int, ndim: int) -> bool:
    if not (user.target in ("sum", "mean") or user.target in (torch.sum, torch.mean)):
        return False
    d = user.kwargs.get("dim", user.args[1] if len(user.args) > 1 else None)
    dims = () if d is None else (d,) if isinstance(d, int) else tuple(d)
    return len(dims) == 1 and dims[0] % ndim == dim


def _pow(ctx, node, x, exponent, *args, **kwargs):
    """``y ** 2`` summed over the features is a squared norm (handled by the reduction); any other
    power is an elementwise nonlinearity (permutations only)."""
    if not isinstance(x, Feat) or not isinstance(exponent, Number):
        return ctx.opaque(node, "a power that is not a tensor raised to a number")
    if not (exponent == 2 and x.dim is not None and node.users
            and all(_reduces_features(u, x.dim, x.ndim) for u in node.users)):
        for var, _ in x.segs:
            ctx.state.restrict(var, PERM)
    return x.moved(ctx.shape(node), x.dim)


def _reduce(ctx, node, x, *args, **kwargs):
    """sum/mean over dimensions: over the features, the result is invariant only under permutations
    (sums also under semi-permutations, whose columns sum to one); a sum of squares ‖y‖² under
    orthogonal maps (rectangular ones included), a mean of squares under signed permutations."""
    if not isinstance(x, Feat):
        return ctx.opaque(node, "a reduction of something that is not a tensor")
    dims = kwargs.get("dim", args[0] if args else None)
    keep = kwargs.get("keepdim", args[1] if len(args) > 1 else False)
    dims = tuple(range(x.ndim)) if dims is None else (dims,) if isinstance(dims, int) else tuple(dims)
    dims = {d % x.ndim for d in dims}
    out = ctx.shape(node)
    if x.dim is None or not x.spaced():
        return Feat(out)
    if x.dim in dims:
        exact = (SemiPermutation(),) if _name(node) == "sum" else PERM
        if _is_square(node.args[0]) and len(dims) == 1:
            exact = (Orthogonal(),) if _name(node) == "sum" else (SignedPermutation(),)
        for var, _ in x.segs:
            ctx.state.restrict(var, exact)
        return Feat(out)
    return x.moved(out, x.dim if keep else x.dim - sum(d < x.dim for d in dims))


def _pool_function(classes, spatial: int):
    """``F.*_pool{spatial}d``: average pooling (``classes`` empty) is linear, max pooling ReLU-like."""
    return lambda ctx, node, x, *a, **k: _pool(ctx, node, x, classes, spatial)


def _name(node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


for _target, _rule in {
        F.linear: _f_linear, torch.pow: _pow, operator.pow: _pow, F.dropout: _passthrough,
        torch.sum: _reduce, torch.mean: _reduce, F.softmax: _softmax, torch.softmax: _softmax, F.log_softmax: _softmax,
        F.adaptive_avg_pool2d: _pool_function((), 2), F.avg_pool2d: _pool_function((), 2),
        F.adaptive_avg_pool1d: _pool_function((), 1), F.avg_pool1d: _pool_function((), 1),
        F.max_pool2d: _pool_function(RELU_LIKE, 2), F.max_pool1d: _pool_function(RELU_LIKE, 1),
        operator.getitem: getitem, F.layer_norm: _f_layer_norm, F.embedding: _f_embedding, F.pad: _pad,
        F.interpolate: lambda ctx, node, x, *a, **k: _pool(ctx, node, x, (), None),
        torch.norm: _norm2, torch.linalg.vector_norm: _norm2, torch.linalg.norm: _norm2,
        "sum": _reduce, "mean": _reduce, "softmax": _softmax, "pow": _pow, "norm": _norm2,
        **SHAPE_FUNCTIONS, **BINARY_FUNCTIONS, **HEAD_FUNCTIONS, **SHAPE_METHODS, **BINARY_METHODS,
        **HEAD_METHODS}.items():
    register_rule(_target, _rule)
