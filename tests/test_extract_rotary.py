"""Rotary position embeddings through extraction (:mod:`architectures.extract.rotary`): the query/key
space of a RoPE head extracts as ``HeadStructured(H, Rotary())`` — through ``from_module`` on a
hand-written attention and through ``from_hf`` on Llama, Mistral and Qwen2 built from tiny configs —
every admitted class keeps the output, a larger class does not, and every departure from the
rotate_half pattern (interleaved pairs, another concatenation order, a factor that is not equal on the
pairs or differs between heads, a half used elsewhere) is refused naming the node."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import architectures
import solvers
import symmetries as sy
from architectures import ExtractionError, from_module
from symmetries.testing import check_invariance


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def tables(n, d, base=10000.0, pair_equal=True):
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    f = torch.outer(torch.arange(n, dtype=torch.float64), inv)
    emb = torch.cat((f, f), dim=-1) if pair_equal else torch.cat((f, 1.7 * f + 0.3), dim=-1)
    return emb.cos(), emb.sin()


class RopeAttention(nn.Module):
    """One pre-norm-free attention block with RoPE; ``variant`` departs from rotate_half on purpose."""

    def __init__(self, d=16, heads=4, variant="rope"):
        super().__init__()
        self.h, self.variant = heads, variant
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=i != 3) for i in range(4))
        self.inp, self.out = nn.Linear(5, d), nn.Linear(d, 3)

    def rope(self, x, cos, sin):
        if self.variant == "interleaved":  # GPT-J pairs (2i, 2i + 1)
            x1, x2 = x[..., ::2], x[..., 1::2]
            return torch.stack((x1 * cos[..., ::2] - x2 * sin[..., ::2], x2 * cos[..., ::2] + x1 * sin[..., ::2]),
                               -1).flatten(-2)
        if self.variant == "swapped":  # cat(x2, x1): not a rotation of the pairs
            h = x.shape[-1] // 2
            return x * cos + torch.cat((x[..., h:], x[..., :h]), dim=-1) * sin
        if self.variant == "half-elsewhere":
            h = x.shape[-1] // 2
            return x * cos + torch.cat((-torch.relu(x[..., h:]), x[..., :h]), dim=-1) * sin
        if self.variant == "per-head":  # a factor that differs between heads
            scale = torch.arange(1, self.h + 1, dtype=x.dtype).view(1, self.h, 1, 1)
            return x * (cos * scale) + rotate_half(x) * sin
        return x * cos + rotate_half(x) * sin

    def forward(self, x):
        b, n, _ = x.shape
        h = self.inp(x)
        split = lambda t: t.view(b, n, self.h, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        cos, sin = tables(n, q.shape[-1], pair_equal=self.variant != "unpaired")
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, n, -1)
        return self.out(h + self.o(y))


X = torch.randn(2, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_hand_written_rope_attention_extracts_rotary_heads():
    torch.manual_seed(0)
    m = RopeAttention().double().eval()
    g = from_module(m, X)
    qk = next(s for s in g.spaces() if s.name.endswith("qk"))
    assert qk.classes == (sy.HeadStructured(4, sy.Rotary()),)
    report = check_invariance(m, g, X, examples=3)
    assert report.passed, [str(c) for c in report.failures]
    # the restriction is needed: a general per-head map of the query/key space changes the output
    p = dict(m.state_dict())
    with torch.no_grad():
        y = m(X)
    t = {qk.name: sy.HeadStructured(4, sy.Invertible()).random(16, seed=3)}
    m.load_state_dict(sy.apply(g, p, t, check=False))
    with torch.no_grad():
        assert float((m(X) - y).abs().max()) > 1e-3


@pytest.mark.parametrize("variant,node", [
    ("interleaved", "getitem"), ("swapped", "cat"), ("half-elsewhere", "relu"), ("unpaired", "mul"),
    ("per-head", "mul"),
])
def test_departures_from_rotate_half_are_refused_naming_the_node(variant, node):
    m = RopeAttention(variant=variant).double().eval()
    with pytest.raises(ExtractionError) as info:
        from_module(m, X)
    assert info.value.node and info.value.node.startswith(node), (variant, info.value.node, str(info.value))
    # and with unknown="fixed" no query/key symmetry is claimed
    g = from_module(m, X, unknown="fixed")
    assert not any(isinstance(c, sy.HeadStructured) and str(c.inner) == "Rotary()" for s in g.spaces()
                   for c in s.classes)
    report = check_invariance(m, g, X, examples=2)
    assert report.passed, [str(c) for c in report.failures]


# -- Hugging Face Llama, Mistral and Qwen2 through from_hf -------------------------------------------------
T = pytest.importorskip("transformers")
from hf_tiny_llama import FAMILIES, IDS, exact_rmsnorm, tiny as hf  # noqa: E402,F401 - a fixture, used by name


def _shape(g):
    return sorted((tuple(map(str, s.classes)), tuple(sorted({(e.parameter, e.axis, e.slice or (0, s.size))
                                                              for e in g.edges_at(s.name)})))
                  for s in g.spaces())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hf_rotary_models_extract_as_the_hand_written_binding(family, exact_rmsnorm):
    m = hf(family, 0)
    g = architectures.from_hf(m, IDS)
    assert _shape(g) == _shape(architectures.hf_llama(m.config).graph)
    report = check_invariance(m, g, IDS, examples=2)
    assert report.passed, [str(c) for c in report.failures]
    assert "HeadStructured(4, Rotary())" in {str(c.cls) for c in report.checks}
    b = hf(family, 1)
    pb = dict(b.state_dict())
    sol = solvers.solve("weight_matching", g, dict(m.state_dict()), pb, seed=0)
    with torch.no_grad():
        y = b(IDS).logits
        b.load_state_dict(sy.apply(g, pb, sol.transforms))
        kept = float((b(IDS).logits - y).abs().max())
    assert kept < 1e-12 * (1 + float(y.abs().max()))
    assert sol.objective_after < sol.objective_before


def test_grouped_query_attention_extracts_and_a_departure_names_hf_llama(monkeypatch):
    """Grouped queries extract (tests/test_extract_repeat_gqa.py); a refusal inside a Llama-family
    model names the hand-written binding."""
    g = architectures.from_hf(hf("llama", 0, kv=2), IDS)
    assert {str(c) for s in g.spaces() for c in s.classes} >= {"HeadStructured(2, Rotary())"}
    from transformers.integrations import sdpa_attention
    from transformers.models.llama import modeling_llama

    for module in (modeling_llama, sdpa_attention):  # a tile (head h reads key head h mod G): refused
        monkeypatch.setattr(module, "repeat_kv", lambda x, n: x.repeat(1, n, 1, 1))
    with pytest.raises(ExtractionError) as info:
        architectures.from_hf(hf("llama", 0, kv=2), IDS)
    assert info.value.node, str(info.value)
    assert "architectures.hf_llama" in str(info.value)
