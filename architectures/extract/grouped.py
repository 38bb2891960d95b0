"""Channel groups for :func:`architectures.from_module`: convolutions (plain, depthwise, grouped,
transposed, ``F.conv*``), GroupNorm and channel shuffles.

* A convolution with ``g`` groups maps input group ``k`` (``C_in/g`` channels) to output group ``k``
  only: ``y_k = W_k * x_k``, with ``W`` of shape ``(C_out, C_in/g, …)``. Moving whole groups is a
  symmetry when input and output groups move *together*: the two spaces share one group permutation
  (a head group). Inside a group, the output channels may be mixed by any invertible map (it acts on
  ``W``'s rows of that group: ``HeadStructured(g, Invertible())``), but a map inside an input group
  would act on ``W``'s axis 1 differently for each group's rows, which no edge expresses: the input
  space keeps ``HeadStructured(g, Trivial())`` — whole groups moved, nothing inside.
  A transposed convolution (``W`` of shape ``(C_in, C_out/g, …)``) is the mirror image: the input
  space is ``HeadStructured(g, Invertible())`` (``W``'s axis 0, role ``in``), the output space
  ``HeadStructured(g, Trivial())``. Depthwise (``g = C_in = C_out``): one space, permutations.
* GroupNorm normalises each group of ``C/G`` channels with its own mean and variance: permutations of
  whole groups and inside groups keep them — ``HeadStructured(G, Permutation())`` (a scale changes
  the statistics through ε); the gain and bias follow the channels.
* A channel shuffle (``nn.ChannelShuffle``; ``view(B, g, C/g, …)`` → ``transpose(1, 2)`` → ``view(B, C,
  …)``) is a fixed interleaving of the channels: the spaces on both sides would be conjugate by it,
  which no class expresses, so both keep no symmetry (exact, never more).

Every rule is registered through :func:`architectures.register_rule`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from symmetries.classes import HeadStructured, Invertible, Permutation, Trivial

from architectures.extract.ops import PERM, _channel_map, _unbatched, vector
from architectures.extract.rules import register_rule
from architectures.extract.shapes import interleave
from architectures.extract.state import Feat, ParamRef, hint_of

__all__ = ["conv", "group_norm"]


def conv(ctx, node, x, weight: str, bias: str | None, groups: int, hint: str, spatial: int, transposed: bool):
    """A (transposed) convolution over ``spatial`` dimensions with ``groups`` groups, input channels
    on dimension 1: ``weight``/``bias`` are state-dict names."""
    what = "a transposed convolution" if transposed else "a convolution"
    if not isinstance(x, Feat) or (x.spaced() and x.dim != 1):
        return ctx.opaque(node, f"{what} whose input channels are not on dimension 1")
    why = _unbatched(x, spatial, what)
    if why:
        return ctx.opaque(node, why)
    if groups == 1:
        consumed, produced = (0, 1) if transposed else (1, 0)
        return _channel_map(ctx, node, x, weight, bias, hint, consumed=consumed, produced=produced)
    out = ctx.shape(node)
    if x.shape[1] == out[1] == groups:  # depthwise: each channel's filter follows it (axis 0 either way)
        return ctx.per_feature(node, x, [(weight, "out"), (bias, "out")], PERM, what=f"a depthwise {what[2:]}")
    return _grouped(ctx, node, x, weight, bias, groups, hint, transposed)


def _grouped(ctx, node, x: Feat, weight, bias, g: int, hint: str, transposed: bool):
    """``g > 1`` groups: a new output space tied to the input space by one group permutation."""
    out = ctx.shape(node)
    st = ctx.state
    inner_x, inner_y = (Invertible(), Trivial()) if transposed else (Trivial(), Invertible())
    y = st.new(out[1], hint, (HeadStructured(g, inner_y),))
    for name in (None if transposed else weight, bias):
        if name is not None:
            st.connect(y, name, 0, "out")
    if transposed:
        ctx.follow(x, [(weight, "in")], 0)
    result = Feat(out, 1, ((y, out[1]),))
    if len(x.segs) != 1 or x.segs[0][0] is None:
        why = (f"the grouped {'transposed ' if transposed else ''}convolution at fx node {node.name!r} reads "
               f"{'features of no space' if not x.spaced() else 'features of several spaces'}, whose groups "
               f"cannot move together with its output groups")
        for var, _ in x.segs:
            st.kill(var, why)
        st.kill(y, why)
        return result
    v = st.var(x.segs[0][0])
    if v.head_group is not None and v.head_group not in st.open_groups:
        return ctx.opaque(node, "a grouped convolution of attention-head features")
    st.restrict(x.segs[0][0], (HeadStructured(g, inner_x),))
    group = v.head_group
    if group is None:
        used = {w.head_group for w in st.vars.values()}
        group = f"{hint}.groups"
        while group in used:
            group += "'"
        v.head_group = group
        st.open_groups.add(group)
    st.var(y).head_group = group
    return result


def _module_conv(ctx, node, mod, x, *args, **kwargs):
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    return conv(ctx, node, x, ctx.param(node.target, "weight"), ctx.param(node.target, "bias", mod.bias),
                mod.groups, node.target, len(mod.kernel_size), transposed)


def _f_conv(transposed: bool):
    def rule(ctx, node, x, weight, bias=None, *args, **kwargs):
        """``F.conv*d`` / ``F.conv_transpose*d`` with a parameter as the kernel: groups are the 4th
        argument after ``bias`` in both signatures."""
        groups = kwargs.get("groups", args[3] if len(args) > 3 else 1)
        bias = kwargs.get("bias", bias)
        if not isinstance(weight, ParamRef) or weight.axes != tuple(range(len(weight.shape))) or not weight.whole \
                or not vector(bias) or not isinstance(groups, int):
            return ctx.opaque(node, "a functional convolution whose kernel or bias is not a parameter of the module")
        return conv(ctx, node, x, weight.name, None if bias is None else bias.name, groups, hint_of(weight.name),
                    len(weight.shape) - 2, transposed)
    return rule


def group_norm(ctx, node, x, groups: int, tensors):
    """GroupNorm with ``groups`` groups over the channels (dimension 1) and per-channel ``tensors``
    ``[(name, role)]``: each space keeps permutations of its whole groups and inside them. A space
    holding part of the channels keeps them when its channels are whole groups, else no symmetry."""
    if not isinstance(x, Feat):
        return ctx.opaque(node, "group normalisation of something that is not a tensor")
    if not x.spaced():
        ctx.poison([t for t, _ in tensors if t is not None], node)
        return Feat(ctx.shape(node))
    if x.dim != 1:
        return ctx.opaque(node, f"group normalisation whose channels are not on dimension 1 (dimension {x.dim})")
    ctx.follow(x, tensors)
    per, pos = x.shape[1] // groups, 0
    for var, n in x.segs:
        if var is None:
            pass
        elif per == 1 or groups == 1 or n == per and pos % per == 0:
            ctx.state.restrict(var, PERM)
        elif pos % per or n % per:
            ctx.state.kill(var, f"group normalisation at fx node {node.name!r} has groups straddling its channels")
        else:
            ctx.state.restrict(var, (HeadStructured(n // per, Permutation()),))
        pos += n
    return x.moved(ctx.shape(node), 1)


def _module_group_norm(ctx, node, mod, x):
    tensors = [(ctx.param(node.target, name, mod.affine), "out") for name in ("weight", "bias")]
    return group_norm(ctx, node, x, mod.num_groups, tensors)


def _f_group_norm(ctx, node, x, num_groups, weight=None, bias=None, eps=1e-5):
    if not (vector(weight) and vector(bias)) or not isinstance(num_groups, int):
        return ctx.opaque(node, "F.group_norm whose gain or bias is not a parameter of the module")
    return group_norm(ctx, node, x, num_groups, [(None if t is None else t.name, "out") for t in (weight, bias)])


def _channel_shuffle(ctx, node, x, groups=None, *args, **kwargs):
    if not isinstance(x, Feat) or (x.spaced() and x.dim != 1):
        return ctx.opaque(node, "a channel shuffle whose channels are not on dimension 1")
    return interleave(ctx, node, x, "a channel shuffle (the channels of groups interleaved)")


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_rule(_t, _module_conv)
for _f in (F.conv1d, F.conv2d, F.conv3d):
    register_rule(_f, _f_conv(False))
for _f in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):
    register_rule(_f, _f_conv(True))
register_rule(nn.GroupNorm, _module_group_norm)
register_rule(F.group_norm, _f_group_norm)
register_rule(nn.ChannelShuffle, lambda ctx, node, mod, x: _channel_shuffle(ctx, node, x))
for _f in {torch.channel_shuffle, F.channel_shuffle, torch.native_channel_shuffle}:
    register_rule(_f, _channel_shuffle)
