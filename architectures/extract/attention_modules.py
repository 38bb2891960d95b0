"""``torch.nn``'s transformer modules for :func:`architectures.from_module`: traced into.

``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``, ``nn.TransformerDecoderLayer``,
``nn.TransformerDecoder`` and ``nn.Transformer`` are registered with
:data:`~architectures.extract.rules.TRACE`: tracing goes into their ``forward`` (in eval mode, on
traced values, the fused fast path is not taken — its checks see tensors that override
``__torch_function__`` — so the slow path of submodules is what is recorded), and each submodule
meets its own rule: ``nn.MultiheadAttention`` (packed or separate q/k/v projections; per head
``W_Qᵀ W_K`` and ``W_O W_V``: the query/key and value/output spaces are ``HeadStructured(H,
Invertible())`` sharing one head permutation), the LayerNorms (the residual stream: permutations,
gains and biases following), the feed-forward linears and activation, and dropout (the identity in
eval mode).
"""
from __future__ import annotations

from torch import nn

from architectures.extract.rules import TRACE, register_rule

__all__: list[str] = []

for _t in (nn.TransformerEncoderLayer, nn.TransformerEncoder, nn.TransformerDecoderLayer, nn.TransformerDecoder,
           nn.Transformer):
    register_rule(_t, TRACE)
