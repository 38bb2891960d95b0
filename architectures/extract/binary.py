"""Binary ops for :func:`architectures.from_module`: adds, products, quotients, matrix products.

* ``x + y`` with both in spaces: one space (residual streams; union-find). A parameter added
  along the features is a bias (``out``); a value constant across the features (a scalar, a
  broadcast tensor) commutes with permutations only; a tensor of fixed features kills the space.
* ``x * y``: a scalar or a per-example factor constant across the features commutes with every
  linear map; a per-feature gain (parameter, ``out``) or a product of two spaced tensors only
  with permutations.
* ``A @ x`` with data ``A`` acting on another dimension (graph convolutions) keeps the space;
  ``x @ W`` with a parameter ``W`` (in, out) is a linear layer.
"""
from __future__ import annotations

import operator
from numbers import Number

import torch
import torch.fx as fx

from symmetries.classes import Permutation

from architectures.extract.heads import bilinear, head_only_op, scores_times_values
from architectures.extract.rotary import head_factor
from architectures.extract.state import Feat, HeadOnly, ParamRef, hint_of

__all__ = ["BINARY_FUNCTIONS", "BINARY_METHODS"]

PERM = (Permutation(),)


def _at(o, D: int, N: int, out) -> str:
    """How operand ``o`` meets output dimension ``D``: 'full' (indexed along it) or 'broadcast'."""
    shape = o.shape if isinstance(o, (Feat, ParamRef)) else ()
    od = D - (N - len(shape))
    if od < 0 or (shape[od] == 1 and out[D] != 1):
        return "broadcast"
    if isinstance(o, ParamRef) and o.axes[od] is None:
        return "broadcast"
    return "full"


def binary(ctx, node, kind: str, a, b):
    """``kind`` ∈ add, sub, mul, div (``a ∘ b``)."""
    value = ctx.value(node)
    if not isinstance(value, torch.Tensor):
        return value
    if isinstance(a, HeadOnly) or isinstance(b, HeadOnly):
        res = head_only_op(ctx, node, [a, b])
        return res if res is not None else ctx.opaque(node, f"an elementwise {kind} of attention scores")
    out = tuple(value.shape)
    N = len(out)
    ops = [a, b]
    spaced = [o for o in ops if isinstance(o, Feat) and o.spaced()]
    if not spaced:
        ctx.poison([o.name for o in ops if isinstance(o, ParamRef)], node)
        return Feat(out)
    dims = {o.dim + N - o.ndim for o in spaced}
    if len(dims) > 1:
        return ctx.opaque(node, "an elementwise op between tensors whose features lie on different dimensions")
    D = dims.pop()
    base = spaced[0]
    if len(spaced) == 2:
        if spaced[1].shape[spaced[1].dim] != base.shape[base.dim]:
            return ctx.opaque(node, "an elementwise op broadcasting a spaced tensor along its features")
        ctx.join(node, base, spaced[1])
        if kind in ("mul", "div"):
            _restrict(ctx, base, PERM)
        return base.moved(out, D)
    other_first = ops[0] is not base
    other = ops[0] if other_first else ops[1]
    if base.hdim is not None and not isinstance(other, Number):  # cos/sin of rotary embeddings, masks
        if other_first and kind == "div" or not isinstance(other, Feat):
            return ctx.opaque(node, f"an elementwise {kind} of features split into heads with a tensor")
        arg = node.args[0 if other_first else 1] if len(node.args) == 2 else None
        return head_factor(ctx, node, kind, base, ctx.value(arg) if isinstance(arg, fx.Node) else arg, out)
    # the spaced operand is a denominator: 1/x is a nonlinearity, exact under permutations only
    nonlinear = kind == "div" and other_first
    if isinstance(other, Number) or (isinstance(other, torch.Tensor) and other.dim() == 0):
        if kind in ("add", "sub") and other != 0:
            _restrict(ctx, base, PERM)
        elif nonlinear:
            _restrict(ctx, base, PERM)
        return base.moved(out, D)
    if isinstance(other, ParamRef):
        if _at(other, D, N, out) == "full":
            ctx.attach(node, base, other, D, N)
            if kind in ("mul", "div"):  # a per-feature gain: γ ⊙ x commutes with permutations only
                _restrict(ctx, base, PERM)
            return base.moved(out, D)
        ctx.poison([other.name], node)
        if kind in ("add", "sub") or nonlinear:
            _restrict(ctx, base, PERM)
        return base.moved(out, D)
    if isinstance(other, Feat):
        if _at(other, D, N, out) == "full":
            for var, _ in base.segs:
                ctx.state.kill(var, f"combined elementwise at fx node {node.name!r} with a tensor of fixed features")
            return base.moved(out, D)
        if kind in ("add", "sub") or nonlinear:
            _restrict(ctx, base, PERM)
        return base.moved(out, D)
    return ctx.opaque(node, f"an elementwise {kind} with {type(other).__name__}")


def _restrict(ctx, x: Feat, classes) -> None:
    for var, _ in x.segs:
        ctx.state.restrict(var, classes)


def _neg(ctx, node, x):
    if not isinstance(x, Feat):
        return ctx.opaque(node, "negation")
    y = x.moved(ctx.shape(node), x.dim)
    return y if x.half is None else Feat(y.shape, y.dim, y.segs, y.hdim, (x.half[0], -x.half[1]))


def matmul(ctx, node, a, b):
    """``a @ b``: data times features (graph propagation) or features times a parameter (a layer)."""
    out = ctx.shape(node)
    flat = [isinstance(t, Feat) and t.rep is not None and t.hdim is None for t in (a, b)]  # a flatten's repeats
    if flat[1] or flat[0] and not (isinstance(b, ParamRef) and b.whole and len(b.shape) == 2 and None not in b.axes):
        return ctx.opaque(node, "a matrix product of a flatten's repeated features with something other than a "
                                "weight matrix")
    if isinstance(a, HeadOnly) and isinstance(b, Feat):
        return scores_times_values(ctx, node, a, b)
    if isinstance(a, Feat) and isinstance(b, Feat) and a.spaced() and b.spaced():
        return bilinear(ctx, node, a, b)
    if isinstance(b, ParamRef) and isinstance(a, Feat) and a.hdim is None and len(b.shape) == 2 and None not in b.axes \
            and b.whole:
        if a.spaced() and a.dim != a.ndim - 1:
            return ctx.opaque(node, "a matrix product over a dimension that is not the features")
        for var, span, repeat in a.pieces():  # features of no space pin the axis
            ctx.state.connect(var, b.name, b.axes[0], "in", span, repeat)
        v = ctx.state.new(out[-1], hint_of(b.name))
        ctx.state.connect(v, b.name, b.axes[1], "out")
        return Feat(out, len(out) - 1, ((v, out[-1]),))
    if isinstance(a, Feat) and isinstance(b, Feat) and not a.spaced():
        if not b.spaced():
            return Feat(out)
        if b.dim == b.ndim - 1 and b.ndim >= 2 and b.hdim is None:
            return b.moved(out, len(out) - 1)
    return ctx.opaque(node, "a matrix product that mixes the features with something other than a parameter")


def _bin(kind):
    def handler(ctx, node, a, b, *args, **kwargs):  # torch.add's alpha scales b: still linear
        return binary(ctx, node, kind, a, b)
    return handler


BINARY_FUNCTIONS = {
    operator.add: _bin("add"), operator.iadd: _bin("add"), torch.add: _bin("add"),
    operator.sub: _bin("sub"), operator.isub: _bin("sub"), torch.sub: _bin("sub"),
    operator.mul: _bin("mul"), operator.imul: _bin("mul"), torch.mul: _bin("mul"),
    operator.truediv: _bin("div"), operator.itruediv: _bin("div"), torch.div: _bin("div"),
    operator.neg: _neg, torch.neg: _neg,
    operator.matmul: matmul, torch.matmul: matmul, torch.mm: matmul, torch.bmm: matmul,
    torch.sparse.mm: matmul,
}
BINARY_METHODS = {"add": _bin("add"), "add_": _bin("add"), "sub": _bin("sub"), "mul": _bin("mul"),
                  "mul_": _bin("mul"), "div": _bin("div"), "matmul": matmul, "neg": _neg}
