"""timm-style fused q/k/v through from_module (issue #13 §2): ``qkv(x).reshape(B, N, 3, H, d)
.permute(2, 0, 3, 1, 4)`` then ``q, k, v = qkv.unbind(0)`` (or ``qkv[0], qkv[1], qkv[2]``) and
``F.scaled_dot_product_attention`` or the written-out softmax. The reshape cuts the qkv space into
three pieces split into heads (a stack of three tensors); unbinding it gives q, k, v, which pair
into HeadStructured(H, Invertible) query/key and value/output spaces sharing one head permutation.
A local copy of timm's ``Attention`` (timm is not installed here). Random transforms of every
admitted class keep the output to float64 round-off; a map mixing heads changes it; a per-head
normalisation of q and k is refused; weight matching undoes a planted transform."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from arch_checks import output_change, planted_alignment
from symmetries.testing import check_invariance

D, H = 8, 2


class Attention(nn.Module):
    """A copy of timm.models.vision_transformer.Attention (timm 1.0), plus ``indexing``: the older
    ``q, k, v = qkv[0], qkv[1], qkv[2]``."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_norm=False, fused_attn=True, indexing=False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn, self.indexing = fused_attn, indexing
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[0], qkv[1], qkv[2]) if self.indexing else qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class Block(nn.Module):
    """A pre-norm ViT block (timm's ``Block`` without layer scale): attention and a GELU MLP."""

    def __init__(self, **kwargs):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attention(D, H, **kwargs)
        self.fc1, self.fc2 = nn.Linear(D, 12), nn.Linear(12, D)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, depth=2, **kwargs):
        super().__init__()
        self.embed, self.head = nn.Linear(5, D), nn.Linear(D, 3)
        self.blocks = nn.Sequential(*(Block(**kwargs) for _ in range(depth)))

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


def _inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _model(seed: int = 0, **kwargs) -> ViT:
    torch.manual_seed(seed)
    return ViT(**kwargs).double().eval()


@settings(max_examples=8, deadline=None)
@given(fused=st.booleans(), indexing=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fused_qkv_extracts_tied_heads(fused, indexing, bias, seed):
    model = _model(seed, fused_attn=fused, indexing=indexing, qkv_bias=bias)
    g = architectures.from_module(model, _inputs())
    heads = (sy.HeadStructured(H, sy.Invertible()),)
    for i in range(2):
        attn = f"blocks.{i}.attn.qkv"
        assert g.head_groups()[attn] == [f"{attn}.qk", f"{attn}.vo"]
        assert g.space(f"{attn}.qk").classes == g.space(f"{attn}.vo").classes == heads
        weight = {(e.space, e.role.value, e.slice) for e in g.edges()
                  if e.parameter == f"{attn}.weight" and e.axis == 0}
        assert weight == {(f"{attn}.qk", "out", (0, D)), (f"{attn}.qk", "in", (D, 2 * D)),
                          (f"{attn}.vo", "out", (2 * D, 3 * D))}
        assert (f"blocks.{i}.attn.proj.weight", 1, "in") in {(e.parameter, e.axis, e.role.value)
                                                              for e in g.edges_at(f"{attn}.vo")}
    report = check_invariance(model, g, _inputs(seed + 1), examples=3, seed=seed)
    assert report.passed, report


def test_a_map_mixing_heads_changes_the_output():
    model, x = _model(1), _inputs(2)
    g = architectures.from_module(model, _inputs())
    qk = "blocks.0.attn.qkv.qk"
    heads = sy.HeadStructured(H, sy.Invertible()).random(D, seed=0, cond=3)
    assert output_change(model, g, x, sy.tie_heads(g, {qk: heads})) < 1e-11
    assert output_change(model, g, x, {qk: sy.Invertible().random(D, seed=0, cond=3)}) > 1e-6


class KV(nn.Module):
    """Separate query projection and a fused key/value one: ``kv(x).reshape(B, N, 2, H, d)``."""

    def __init__(self):
        super().__init__()
        self.inp, self.q, self.kv, self.proj = nn.Linear(5, D), nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, 3)

    def forward(self, x):
        x = self.inp(x)
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, H, C // H).permute(0, 2, 1, 3)
        k, v = self.kv(x).reshape(B, N, 2, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C)).mean(1)


def test_fused_key_value_with_a_separate_query():
    torch.manual_seed(2)
    model = KV().double().eval()
    g = architectures.from_module(model, _inputs())
    assert g.head_groups() == {"q.heads": ["q.heads.qk", "q.heads.vo"]}
    assert {(e.parameter, e.role.value, e.slice) for e in g.edges_at("q.heads.qk") if e.axis == 0} >= {
        ("q.weight", "out", None), ("kv.weight", "in", (0, D))}
    assert check_invariance(model, g, _inputs(1), examples=3).passed


def test_per_head_normalisation_of_queries_and_keys_is_refused():
    model = _model(0, qk_norm=True)
    with pytest.raises(architectures.ExtractionError, match="heads") as err:
        architectures.from_module(model, _inputs())
    assert err.value.node == "blocks_0_attn_q_norm"


def test_other_ops_on_the_stack_are_refused():
    class Summed(Attention):
        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
            return self.proj(qkv.sum(2).reshape(B, N, C))  # adds q, k and v: three different spaces

    model = nn.Sequential(nn.Linear(5, D), Summed(D, H)).double()
    with pytest.raises(architectures.ExtractionError, match="stack"):
        architectures.from_module(model, _inputs())


def test_weight_matching_undoes_a_planted_transform():
    model, x = _model(4), _inputs(3)
    g = architectures.from_module(model, _inputs())
    ratio, change = planted_alignment(model, g, x, seed=2)
    assert ratio < 1e-20 and change < 1e-10


@pytest.mark.parametrize("kwargs", [{}, {"fused_attn": False}, {"indexing": True}])
def test_torch_export_gives_the_same_spaces(kwargs):
    """``architectures.from_hf`` (torch.export's ATen graph: view, permute, unbind or select) gives the
    same spaces, classes and edges (its q_norm identity leaves no trace, hence no activation name)."""
    model = _model(0, **kwargs)
    exported, traced = architectures.from_hf(model, _inputs()), architectures.from_module(model, _inputs())
    assert [(s.name, s.classes, s.head_group) for s in exported.spaces()] == \
        [(s.name, s.classes, s.head_group) for s in traced.spaces()]
    assert sorted(map(repr, exported.edges())) == sorted(map(repr, traced.edges()))
    assert check_invariance(model, exported, _inputs(1), examples=2).passed
