"""nn.MultiheadAttention, nn.TransformerEncoderLayer / nn.TransformerEncoder (and the decoder
modules) through from_module (issue #13 §2). The transformer modules are traced into (rule TRACE:
in eval mode on traced values their fused fast path is not taken), so each attention is
nn.MultiheadAttention's rule — the packed in_proj_weight cut into q, k, v; per head W_Qᵀ W_K and
W_O W_V, so the query/key and value/output spaces are HeadStructured(H, Invertible) sharing one
head permutation — and the residual stream goes through LayerNorms (permutations). batch_first and
norm_first both ways, masks given as data. Random transforms of every admitted class keep the
output to float64 round-off; untying the head permutation changes it; weight matching undoes a
planted transform."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from arch_checks import output_change, perturb_norms, planted_alignment
from symmetries.testing import check_invariance

D, HEADS = 8, 2


class Encoder(nn.Module):
    """Linear in → nn.TransformerEncoder (``layers`` × nn.TransformerEncoderLayer, final LayerNorm) →
    linear out."""

    def __init__(self, batch_first: bool, norm_first: bool, layers: int = 2, activation: str = "relu",
                 masked: bool = False):
        super().__init__()
        self.inp, self.out = nn.Linear(3, D), nn.Linear(D, 2)
        layer = nn.TransformerEncoderLayer(D, HEADS, 12, dropout=0.1, activation=activation, batch_first=batch_first,
                                           norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(D), enable_nested_tensor=False)
        self.batch_first, self.masked = batch_first, masked

    def forward(self, x):
        mask = None
        if self.masked:
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1 if self.batch_first else 0],
                                                                  dtype=x.dtype)
        return self.out(self.enc(self.inp(x), mask=mask))


def _inputs(batch_first: bool, seed: int = 0) -> torch.Tensor:
    shape = (3, 4, 3) if batch_first else (4, 3, 3)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _model(seed: int, *args, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return perturb_norms(Encoder(*args, **kwargs).double().eval())  # LayerNorm gains away from 1


@settings(max_examples=8, deadline=None)
@given(batch_first=st.booleans(), norm_first=st.booleans(), activation=st.sampled_from(["relu", "gelu"]),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def test_encoder_layers_extract_tied_heads_and_an_exact_stream(batch_first, norm_first, activation, masked, seed):
    model = _model(seed, batch_first, norm_first, activation=activation, masked=masked)
    g = architectures.from_module(model, _inputs(batch_first))
    heads = sy.HeadStructured(HEADS, sy.Invertible())
    for i in range(2):
        attn = f"enc.layers.{i}.self_attn"
        assert g.head_groups()[attn] == [f"{attn}.qk", f"{attn}.vo"]
        assert g.space(f"{attn}.qk").classes == g.space(f"{attn}.vo").classes == (heads,)
        spans = {(e.role.value, e.slice) for e in g.edges_at(f"{attn}.qk") if e.parameter == f"{attn}.in_proj_weight"}
        assert spans == {("out", (0, D)), ("in", (D, 2 * D))}
    assert g.space("inp").classes == (sy.Permutation(),)  # the residual stream, through LayerNorms
    assert {"enc.layers.0.norm1.weight", "enc.layers.1.self_attn.out_proj.bias", "enc.norm.bias"} <= \
        {e.parameter for e in g.edges_at("inp")}
    report = check_invariance(model, g, _inputs(batch_first, seed + 1), examples=3, seed=seed)
    assert report.passed, report


def test_a_head_permutation_of_one_space_alone_changes_the_output():
    model, x = _model(0, True, False), _inputs(True, 1)
    g = architectures.from_module(model, _inputs(True))
    qk = "enc.layers.0.self_attn.qk"
    el = sy.HeadStructured(HEADS, sy.Permutation()).random(D, seed=0)
    el = sy.HeadElement(torch.tensor([1, 0]), el.inner)  # a real head swap
    assert output_change(model, g, x, sy.tie_heads(g, {qk: el})) < 1e-12
    assert output_change(model, g, x, {qk: el}) > 1e-6  # the value/output heads left in place


class Seq2Seq(nn.Module):
    """nn.Transformer: encoder and decoder (cross-attention reads the encoder's stream)."""

    def __init__(self):
        super().__init__()
        self.src, self.tgt, self.out = nn.Linear(5, D), nn.Linear(3, D), nn.Linear(D, 2)
        self.t = nn.Transformer(D, HEADS, 1, 1, 12, batch_first=True)

    def forward(self, x, y):
        return self.out(self.t(self.src(y), self.tgt(x)))


def test_nn_transformer_with_cross_attention():
    torch.manual_seed(0)
    model = Seq2Seq().double().eval()
    x, y = _inputs(True), torch.randn(3, 6, 5, dtype=torch.float64)
    g = architectures.from_module(model, (x, y))
    assert len(g.head_groups()) == 3  # encoder self-, decoder self- and cross-attention
    # the packed in_proj_weight reads queries (decoder stream) and keys/values (encoder stream) on one
    # axis: the two streams are one space
    assert {"src.weight", "tgt.weight"} <= {e.parameter for e in g.edges_at("src")}
    assert check_invariance(model, g, (x, y), examples=2).passed


class Attention(nn.Module):
    """nn.MultiheadAttention alone, with separate key/value widths (q, k, v weights separate) or packed."""

    def __init__(self, batch_first: bool, kdim: int | None):
        super().__init__()
        self.inp, self.out = nn.Linear(3, D), nn.Linear(D, 2)
        self.kv = nn.Linear(3, kdim or D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=batch_first, kdim=kdim, vdim=kdim)

    def forward(self, x):
        q, kv = self.inp(x), torch.tanh(self.kv(x))
        a, _ = self.attn(q, kv, kv)
        return self.out(a + q)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kdim", [None, 5])
def test_multihead_attention_both_layouts(batch_first, kdim):
    torch.manual_seed(1)
    model = Attention(batch_first, kdim).double().eval()
    g = architectures.from_module(model, _inputs(batch_first))
    assert set(g.head_groups()) == {"attn"}
    # widen=0: nn.MultiheadAttention asserts its embedding width (an AssertionError, which the wide
    # trials of check_invariance do not read as "the module rejects wider weights")
    assert check_invariance(model, g, _inputs(batch_first, 2), examples=3, widen=0).passed


def test_weight_matching_undoes_a_planted_transform():
    model, x = _model(3, True, True), _inputs(True, 2)
    g = architectures.from_module(model, _inputs(True))
    ratio, change = planted_alignment(model, g, x, seed=1)
    assert ratio < 1e-20 and change < 1e-10
