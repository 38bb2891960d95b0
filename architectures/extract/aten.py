"""Extraction rules for ATen operators: the graphs ``torch.export`` produces (:func:`architectures.from_hf`).

``torch.export`` records a model as ATen calls (``aten.linear.default``, ``aten.view.default``,
``aten.scaled_dot_product_attention.default``…) instead of the ``torch`` functions, modules and
tensor methods that :func:`architectures.from_module`'s tracer sees. Each ATen operator here is
registered through :func:`architectures.register_rule` (an ``OpOverload`` is a function target) by
an adapter that reorders its arguments and hands them to the rule of its ``torch``-level
*equivalent* (looked up when called, so a rule replaced for ``F.linear`` applies to
``aten.linear`` too). Operators that only exist at ATen level get rules of their own:

* ``aten.addmm(b, x, W)`` — ``b + x @ W`` (Hugging Face's ``Conv1D``): ``W`` (in, out) and ``b``
  produce a new space, ``W``'s axis 0 consumes ``x``'s;
* ``aten.dropout(x, p, train)``, ``aten.alpha_dropout``, ``aten.feature_dropout``… — the identity
  when ``train`` is false or ``p = 0``; a dropout that is active is refused;
* ``aten.slice`` / ``aten.select`` — basic indexing along one dimension;
* ``aten.batch_norm`` (``F.batch_norm``) in inference mode — gain, bias and running mean follow the
  channel (``out``), the running variance by squares (``var``): permutations only.

Operators with no rule (mask construction: ``arange``, comparisons, ``cumsum``…) are harmless while
no space flows into them, and refused naming the node otherwise.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from architectures.extract.ops import PERM, _passthrough
from architectures.extract.rules import register_rule, rule_for
from architectures.extract.shapes import getitem
from architectures.extract.state import Feat, HeadOnly, ParamRef, hint_of

__all__ = ["EQUIVALENT", "equivalent"]

aten = torch.ops.aten

#: ATen operator → the torch-level target (a function or a tensor-method name) whose rule it follows.
EQUIVALENT: dict = {}


def equivalent(target):
    """The torch-level target an ATen operator stands for (``target`` itself if none)."""
    try:
        return EQUIVALENT.get(target, target)
    except TypeError:
        return target


def _overloads(name: str, *overloads: str):
    packet = getattr(aten, name, None)
    return [getattr(packet, o) for o in overloads if packet is not None and hasattr(packet, o)]


def _delegate(ops, target, adapt=None):
    """Register, for each ATen operator of ``ops``, an adapter calling ``target``'s rule with the
    arguments ``adapt(*args, **kwargs) -> (args, kwargs)`` (unchanged by default)."""
    def rule(ctx, node, *args, **kwargs):
        inner = rule_for(target)
        if inner is None:
            return NotImplemented
        if adapt is not None:
            args, kwargs = adapt(*args, **kwargs)
        return inner(ctx, node, *args, **kwargs)
    rule.__qualname__ = f"aten rule → {getattr(target, '__name__', target)}"
    for op in ops:
        EQUIVALENT[op] = target
        register_rule(op, rule)


def _first(x, *args, **kwargs):
    return (x,), {}


# -- one-to-one ------------------------------------------------------------------------------------------
_delegate(_overloads("linear", "default"), F.linear)
_delegate(_overloads("conv1d", "default"), F.conv1d)
_delegate(_overloads("conv2d", "default"), F.conv2d)
_delegate(_overloads("conv3d", "default"), F.conv3d)
for _d in (1, 2):  # pooling channel by channel (the variants returning indices are not delegated)
    for _name in ("avg_pool", "max_pool", "adaptive_avg_pool", "_adaptive_avg_pool"):
        _delegate(_overloads(f"{_name}{_d}d", "default"), getattr(F, f"{_name.lstrip('_')}{_d}d"), _first)
for _d in (1, 2, 3):
    _delegate(_overloads(f"conv_transpose{_d}d", "input"), getattr(F, f"conv_transpose{_d}d"))
_delegate(_overloads("group_norm", "default"), F.group_norm,
          lambda x, groups, weight=None, bias=None, eps=1e-5, *a, **k: ((x, groups, weight, bias, eps), {}))
_delegate(_overloads("channel_shuffle", "default") + _overloads("native_channel_shuffle", "default"),
          torch.channel_shuffle)
_delegate(_overloads("layer_norm", "default"), F.layer_norm,
          lambda x, shape, weight=None, bias=None, eps=1e-5, *a, **k: ((x, shape, weight, bias, eps), {}))
_delegate(_overloads("embedding", "default"), F.embedding, lambda weight, idx, *a, **k: ((idx, weight), {}))
_delegate(_overloads("scaled_dot_product_attention", "default"), F.scaled_dot_product_attention)
_delegate(_overloads("matmul", "default") + _overloads("bmm", "default") + _overloads("mm", "default"), torch.matmul)
for _name, _fn in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul), ("div", operator.truediv)):
    _delegate(_overloads(_name, "Tensor", "Scalar"), _fn,
              lambda a, b, *r, alpha=1, **k: ((a, b if alpha == 1 else b * alpha if not isinstance(b, (Feat, ParamRef))
                                                else b), {}))
_delegate(_overloads("rsub", "Scalar", "Tensor"), operator.sub, lambda a, b, *r, **k: ((b, a), {}))
_delegate(_overloads("neg", "default"), operator.neg)
_delegate(_overloads("softmax", "int") + _overloads("_softmax", "default"), F.softmax,
          lambda x, dim, *a, **k: ((x,), {"dim": dim}))
_delegate(_overloads("masked_fill", "Scalar", "Tensor"), torch.masked_fill)
_delegate(_overloads("pow", "Tensor_Scalar"), torch.pow)
_delegate(_overloads("mean", "dim"), torch.mean)
_delegate(_overloads("sum", "dim_IntList"), torch.sum)
for _name in ("view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "flatten", "unflatten"):
    _delegate(_overloads(_name, "default", "dim", "dims", "using_ints", "int"),
              "view" if _name in ("view", "_unsafe_view") else "reshape" if _name == "reshape" else _name, _first)
for _name in ("contiguous", "clone", "alias", "detach", "lift_fresh_copy"):
    _delegate(_overloads(_name, "default"), "contiguous", _first)
_delegate(_overloads("transpose", "int"), "transpose")
_delegate(_overloads("t", "default"), "t")
_delegate(_overloads("permute", "default"), "permute")
_delegate(_overloads("expand", "default"), "expand")
_delegate(_overloads("cat", "default"), torch.cat)
_delegate(_overloads("split", "Tensor") + _overloads("split_with_sizes", "default"), torch.split)
_delegate(_overloads("chunk", "default"), torch.chunk)
_delegate(_overloads("unbind", "int"), torch.unbind)

# elementwise functions of the activation table (gelu's approximation does not change its classes)
for _name, _fn in (("relu", torch.relu), ("gelu", F.gelu), ("silu", F.silu), ("tanh", torch.tanh),
                   ("sigmoid", torch.sigmoid), ("elu", F.elu), ("softplus", F.softplus), ("leaky_relu", F.leaky_relu),
                   *((n, getattr(torch, n)) for n in ("exp", "log", "sqrt", "rsqrt", "reciprocal", "cos", "sin",
                                                      "erf", "abs", "sign", "atan", "sinh", "cosh", "tan"))):
    _delegate(_overloads(_name, "default"), _fn, _first)


# -- ATen-only operators ---------------------------------------------------------------------------------
def _dropout(ctx, node, x, p=0.0, train=False, *args, **kwargs):
    """Dropout variants: the identity in inference (``train`` false) or with ``p = 0``."""
    if train and p:
        return ctx.opaque(node, f"a dropout that is active (p={p}, train=True): random, not a function of the input")
    return _passthrough(ctx, node, x)


for _op in (_overloads("dropout", "default") + _overloads("feature_dropout", "default")
            + _overloads("alpha_dropout", "default") + _overloads("feature_alpha_dropout", "default")):
    EQUIVALENT[_op] = F.dropout
    register_rule(_op, _dropout)


def _slice(ctx, node, x, dim=0, start=None, end=None, step=1):
    n = len(x.shape) if isinstance(x, (Feat, ParamRef)) else 0
    return getitem(ctx, node, x, (slice(None),) * (dim % max(n, 1)) + (slice(start, end, step),))


def _select(ctx, node, x, dim, index):
    n = len(x.shape) if isinstance(x, (Feat, ParamRef)) else 0
    return getitem(ctx, node, x, (slice(None),) * (dim % max(n, 1)) + (index,))


for _op in _overloads("slice", "Tensor"):
    EQUIVALENT[_op] = operator.getitem
    register_rule(_op, _slice)
for _op in _overloads("select", "int"):
    EQUIVALENT[_op] = operator.getitem
    register_rule(_op, _select)


def _addmm(ctx, node, bias, x, weight, *, beta=1, alpha=1):
    """``beta·b + alpha·(x @ W)`` with ``W`` a parameter (in, out) and ``b`` a bias: a linear layer."""
    if not (isinstance(weight, ParamRef) and weight.whole and None not in weight.axes and isinstance(bias, ParamRef)
            and bias.whole and bias.axes == (0,) and len(bias.shape) == 1):
        return ctx.opaque(node, "addmm whose weight and bias are not whole parameters of the module")
    if not isinstance(x, Feat) or x.hdim is not None or (x.spaced() and x.dim != x.ndim - 1):
        return ctx.opaque(node, "addmm over a dimension that is not the features")
    for var, span, repeat in x.pieces():  # features of no space pin the axis
        ctx.state.connect(var, weight.name, weight.axes[0], "in", span, repeat)
    out = ctx.shape(node)
    v = ctx.state.new(out[-1], hint_of(weight.name))
    ctx.state.connect(v, weight.name, weight.axes[1], "out")
    ctx.state.connect(v, bias.name, 0, "out")
    return Feat(out, len(out) - 1, ((v, out[-1]),))


for _op in _overloads("addmm", "default"):
    register_rule(_op, _addmm)


def _cast(ctx, node, x, *args, **kwargs):
    """A dtype or device cast: the same values (up to the rounding of the target dtype), attention
    scores included; as ``x.to(…)`` for traced modules."""
    if isinstance(x, (Feat, ParamRef, HeadOnly)):
        return x
    return ctx.opaque(node, "a cast of something that is not a tensor")


for _op in (_overloads("_to_copy", "default") + _overloads("to", "dtype", "dtype_layout", "device", "other")
            + _overloads("type_as", "default")):
    EQUIVALENT[_op] = "to"
    register_rule(_op, _cast)


def _check(ctx, node, *args, **kwargs):
    """Export's run-time checks of a tensor's metadata: no value, no effect on the features."""
    return None


for _op in _overloads("_assert_tensor_metadata", "default"):
    EQUIVALENT[_op] = "contiguous"  # harmless on attention heads too
    register_rule(_op, _check)
