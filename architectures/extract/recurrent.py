"""Recurrent layers for :func:`architectures.from_module`: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``.

Layer ``k`` (direction ``d``) has a hidden space of ``H`` units. Its gates (LSTM: i, f, g, o; GRU:
r, z, n; RNN: one) are row slices ``[j·H, (j+1)·H)`` of ``weight_ih_l{k}``, ``weight_hh_l{k}`` and the
biases, all indexing that space (``out``); ``weight_hh_l{k}``'s columns read it back (``in``), so
``W_hh ← T W_hh T⁻¹`` per gate. The gates are sigmoids and tanhs of their slices and the state is
updated unit by unit, so a permutation ``T`` of the hidden units keeps every step (with the zero
initial state): LSTM and GRU hidden spaces admit ``Permutation()`` (a sign flip would act on the
tanh slice only, which one space cannot say); an ``nn.RNN`` with tanh admits signed permutations,
with ReLU positive scalings. ``proj_size = P``: the cell space (``H``) is read by
``weight_hr_l{k}`` (``in``), whose rows produce the state space (``P`` units, linear: invertible
maps), read by ``weight_hh_l{k}``'s columns and the next layer.

The output ``out`` carries the last layer's spaces on its last dimension (two pieces when
bidirectional); the final states ``h_n`` (and the LSTM's ``c_n``) are a
:class:`~architectures.extract.state.Stacked` value: ``h_n[-1]`` is the last layer's state. An
initial state passed in (other than zeros made in ``forward``) is refused: it would have to move
with the hidden space.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from symmetries.classes import PermutationScaling, SignedPermutation

from architectures.extract.ops import PERM
from architectures.extract.rules import register_rule
from architectures.extract.state import Feat, Stacked

__all__: list[str] = []

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
_ZEROS = {torch.zeros, torch.zeros_like}


def _classes(mod):
    if isinstance(mod, nn.RNN) and not isinstance(mod, (nn.LSTM, nn.GRU)):
        return (SignedPermutation(),) if mod.nonlinearity == "tanh" else (PermutationScaling(),)
    return PERM


def _zero_state(ctx, arg) -> bool:
    """Whether the initial state ``arg`` (fx nodes) is zeros made in ``forward``: by ``zeros``/``zeros_like``/
    ``new_zeros`` on traced values, or a constant tensor of zeros (made from known shapes while tracing)."""
    nodes = []
    fx.node.map_arg(arg, nodes.append)
    return all((n.op == "call_function" and n.target in _ZEROS) or (n.op == "call_method" and n.target == "new_zeros")
               or (n.op == "get_attr" and n.target not in ctx.tensors and isinstance(ctx.value(n), torch.Tensor)
                   and not bool(ctx.value(n).any()))
               for n in nodes)


def _module_recurrent(ctx, node, mod, x, hx=None):
    """An ``nn.LSTM``/``nn.GRU``/``nn.RNN`` called on ``x`` (batched or not, either batch layout)."""
    kind = type(mod).__name__
    if not isinstance(x, Feat):
        return ctx.opaque(node, f"{kind} called on something that is not a tensor (a packed sequence?)")
    if x.spaced() and (x.dim != x.ndim - 1 or x.hdim is not None):
        return ctx.opaque(node, f"{kind} whose input features are not on the last dimension")
    given = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
    if hx is not None and not _zero_state(ctx, given):
        return ctx.opaque(node, f"{kind} given an initial state, which would have to move with its hidden space")
    st, name = ctx.state, node.target
    D, H, P = 2 if mod.bidirectional else 1, mod.hidden_size, getattr(mod, "proj_size", 0)
    gates, classes = _GATES[next(t for t in _GATES if isinstance(mod, t))], _classes(mod)
    layer_in, states = x, []
    for k in range(mod.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{k}{'_reverse' if d else ''}"
            w_ih, w_hh = ctx.param(name, f"weight_ih{sfx}"), ctx.param(name, f"weight_hh{sfx}")
            biases = [ctx.param(name, f"bias_{b}{sfx}", mod.bias) for b in ("ih", "hh")]
            cell = st.new(H, f"{name}.l{k}{'_reverse' if d else ''}", classes)
            for j in range(gates):
                for t in (w_ih, w_hh, *biases):
                    if t is not None:
                        st.connect(cell, t, 0, "out", (j * H, (j + 1) * H))
            ctx.follow(layer_in, [(w_ih, "in")], 1)
            h = cell
            if P:
                w_hr = ctx.param(name, f"weight_hr{sfx}")
                st.connect(cell, w_hr, 1, "in")
                h = st.new(P, f"{name}.l{k}{'_reverse' if d else ''}.proj")
                st.connect(h, w_hr, 0, "out")
            st.connect(h, w_hh, 1, "in")
            outs.append((h, P or H))
            states.append((h, cell))
        layer_in = Feat(layer_in.shape, layer_in.ndim - 1, tuple(outs))
    value = ctx.value(node)
    out_shape = tuple(value[0].shape)
    out = Feat(out_shape, len(out_shape) - 1, layer_in.segs)
    final = value[1] if isinstance(value[1], tuple) else (value[1],)
    stacks = []
    for t, width, pick in zip(final, (P or H, H), (0, 1)):
        shape = tuple(t.shape)
        stacks.append(Stacked(shape, 0, tuple(Feat(shape[1:], len(shape) - 2, ((s[pick], width),)) for s in states)))
    return (out, tuple(stacks)) if isinstance(mod, nn.LSTM) else (out, stacks[0])


for _t in _GATES:
    register_rule(_t, _module_recurrent)
