"""Grouped-query attention through extraction (:mod:`architectures.extract.gqa`): ``repeat_kv`` and
SDPA's ``enable_gqa`` make one query/key space and one value space of ``G·d`` units per layer
(``HeadStructured(G, ·)``), the query rows and the output columns connected with ``repeat=(R, d)`` —
the graph ``architectures.hf_llama`` declares — for a hand-written attention (fx) and for HF Llama,
Mistral and Qwen2 built from tiny configs (``torch.export``), eager and SDPA; every claimed class keeps
the output, weight matching of two seeds keeps the logits, and departures from the pattern (a tile
``k.repeat``, queries repeated, values repeated otherwise than keys) are refused naming the node."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import architectures
import solvers
import symmetries as sy
from architectures import ExtractionError, from_module
from symmetries.testing import check_invariance


def repeat_kv(x, n):
    b, g, t, d = x.shape
    return x[:, :, None, :, :].expand(b, g, n, t, d).reshape(b, g * n, t, d)


class GQA(nn.Module):
    """One attention block with ``heads`` query heads over ``kv`` key/value heads; ``variant`` picks
    how the keys and values reach the queries (or departs from repeat_kv on purpose)."""

    def __init__(self, d=12, heads=4, kv=2, dh=3, variant="repeat_kv"):
        super().__init__()
        self.h, self.kv, self.dh, self.variant = heads, kv, dh, variant
        self.inp, self.out = nn.Linear(5, d), nn.Linear(d, 3)
        self.q, self.o = nn.Linear(d, heads * dh), nn.Linear(heads * dh, d)
        self.k, self.v = nn.Linear(d, kv * dh), nn.Linear(d, kv * dh)

    def forward(self, x):
        b, n, _ = x.shape
        h = torch.tanh(self.inp(x))
        q = self.q(h).view(b, n, self.h, self.dh).transpose(1, 2)
        k = self.k(h).view(b, n, self.kv, self.dh).transpose(1, 2)
        v = self.v(h).view(b, n, self.kv, self.dh).transpose(1, 2)
        r = self.h // self.kv
        if self.variant == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            if self.variant == "tile":  # head h reads kv head h mod G: not repeat_kv's layout
                k, v = k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)
            elif self.variant == "values-twice":  # values repeated 2R times over half the heads: refused
                k, v = repeat_kv(k, r), repeat_kv(v, r)
                v = v + repeat_kv(v[:, :1], self.h)
            else:
                k, v = repeat_kv(k, r), repeat_kv(v, r)
            att = torch.softmax(q @ k.transpose(-2, -1) / self.dh ** 0.5, dim=-1)
            a = att @ v
        return self.out(torch.tanh(self.o(a.transpose(1, 2).reshape(b, n, -1))))


X = torch.randn(2, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _edges(g):
    return sorted((e.parameter, e.axis, str(e.role), e.slice or (), e.repeat or ()) for s in g.spaces()
                  for e in g.edges_at(s.name))


@pytest.mark.parametrize("variant", ["repeat_kv", "sdpa"])
def test_hand_written_grouped_query_attention(variant):
    torch.manual_seed(0)
    m = GQA(variant=variant).double().eval()
    g = from_module(m, X)
    spaces = {s.name: s for s in g.spaces()}
    qk = next(s for n, s in spaces.items() if n.endswith(".qk"))
    vo = next(s for n, s in spaces.items() if n.endswith(".vo"))
    assert (qk.size, qk.classes, vo.size, vo.classes) == (6, (sy.HeadStructured(2, sy.Invertible()),),
                                                         6, (sy.HeadStructured(2, sy.Invertible()),))
    assert qk.head_group == vo.head_group is not None
    rep = {(e.parameter, e.axis, str(e.role)): e.repeat for s in (qk, vo) for e in g.edges_at(s.name)}
    assert rep == {("q.weight", 0, "out"): (2, 3), ("q.bias", 0, "out"): (2, 3), ("k.weight", 0, "in"): None,
                   ("k.bias", 0, "in"): None, ("v.weight", 0, "out"): None, ("v.bias", 0, "out"): None,
                   ("o.weight", 1, "in"): (2, 3)}
    report = check_invariance(m, g, X, examples=3)
    assert report.passed, [str(c) for c in report.failures]
    # the grouping is needed: a map on query head 1 alone (group 0, copy 1), undone on key head 0, keeps
    # head 1's scores but changes those of head 0, which reads the same key head
    M = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 2 * torch.eye(3)
    with torch.no_grad():
        y = m(X)
        m.q.weight[3:6] = M @ m.q.weight[3:6]
        m.q.bias[3:6] = M @ m.q.bias[3:6]
        m.k.weight[0:3] = torch.linalg.inv(M).T @ m.k.weight[0:3]
        m.k.bias[0:3] = torch.linalg.inv(M).T @ m.k.bias[0:3]
        assert float((m(X) - y).abs().max()) > 1e-3


@settings(max_examples=8, deadline=None)
@given(shape=st.sampled_from([(4, 2), (6, 2), (6, 3), (6, 6)]), dh=st.sampled_from([2, 3]),
       variant=st.sampled_from(["repeat_kv", "sdpa"]), seed=st.integers(0, 2**16))
def test_random_transforms_keep_the_function(shape, dh, variant, seed):
    heads, kv = shape
    torch.manual_seed(seed % 97)
    m = GQA(d=8, heads=heads, kv=kv, dh=dh, variant=variant).double().eval()
    g = from_module(m, X)
    r = heads // kv
    assert {e.repeat for e in g.edges_at(next(s.name for s in g.spaces() if s.name.endswith(".qk")))} == \
        ({None, (r, dh)} if r > 1 else {None})
    p = dict(m.state_dict())
    with torch.no_grad():
        y = m(X)
        m.load_state_dict(sy.apply(g, p, sy.random_transforms(g, seed=seed)))
        assert float((m(X) - y).abs().max()) < 1e-9 * (1 + float(y.abs().max()))


def test_the_two_forms_extract_the_same_graph():
    torch.manual_seed(0)
    a = from_module(GQA().double().eval(), X)
    b = from_module(GQA(variant="sdpa").double().eval(), X)
    assert architectures.graphs_equivalent(a, b) and _edges(a) == _edges(b)


def test_weight_matching_of_two_seeds_keeps_the_function():
    torch.manual_seed(0)
    ma, mb = GQA().double().eval(), GQA().double().eval()
    g = from_module(ma, X)
    pb = dict(mb.state_dict())
    sol = solvers.solve("weight_matching", g, dict(ma.state_dict()), pb, seed=0)
    with torch.no_grad():
        y = mb(X)
        mb.load_state_dict(sy.apply(g, pb, sol.transforms))
        assert float((mb(X) - y).abs().max()) < 1e-12 * (1 + float(y.abs().max()))
    assert sol.objective_after < sol.objective_before


@pytest.mark.parametrize("variant,node", [("tile", "repeat"), ("values-twice", "getitem")])
def test_departures_from_repeat_kv_are_refused_naming_the_node(variant, node):
    m = GQA(variant=variant).double().eval()
    with pytest.raises(ExtractionError) as info:
        from_module(m, X)
    assert info.value.node and info.value.node.startswith(node), (info.value.node, str(info.value))
    g = from_module(m, X, unknown="fixed")
    assert not any(s.head_group for s in g.spaces())
    report = check_invariance(m, g, X, examples=2)
    assert report.passed, [str(c) for c in report.failures]


@pytest.mark.parametrize("variant", ["repeat_kv", "sdpa"])
def test_one_key_value_head_is_refused_naming_the_node(variant):
    """Multi-query attention (``G = 1``): ``view(b, n, 1, d)`` is not read as a split into heads, so
    the keys meet the queries' heads unsplit — refused at the pairing, never guessed."""
    m = GQA(heads=4, kv=1, variant=variant).double().eval()
    with pytest.raises(ExtractionError) as info:
        from_module(m, X)
    assert info.value.node in ("matmul", "scaled_dot_product_attention"), info.value.node


# -- Hugging Face Llama, Mistral and Qwen2 with grouped queries, through from_hf ---------------------------
T = pytest.importorskip("transformers")
from hf_tiny_llama import IDS, exact_rmsnorm, tiny  # noqa: E402,F401 - a fixture, used by name


def hf(family, seed, impl="sdpa"):
    return tiny(family, seed, kv=2, impl=impl)


@pytest.mark.parametrize("family,impl", [("llama", "sdpa"), ("llama", "eager"), ("mistral", "sdpa"),
                                         ("qwen2", "eager")])
def test_hf_grouped_query_models_extract_as_the_hand_written_binding(family, impl, exact_rmsnorm):
    m = hf(family, 0, impl)
    g = architectures.from_hf(m, IDS)
    hand = architectures.hf_llama(m.config).graph
    assert architectures.graphs_equivalent(g, hand) and _edges(g) == _edges(hand)
    assert {str(c) for s in g.spaces() for c in s.classes} >= {"HeadStructured(2, Rotary())",
                                                               "HeadStructured(2, Invertible())"}
    report = check_invariance(m, g, IDS, examples=2)
    assert report.passed, [str(c) for c in report.failures]
    b = hf(family, 1, impl)
    pb = dict(b.state_dict())
    sol = solvers.solve("weight_matching", g, dict(m.state_dict()), pb, seed=0)
    with torch.no_grad():
        y = b(IDS).logits
        b.load_state_dict(sy.apply(g, pb, sol.transforms))
        kept = float((b(IDS).logits - y).abs().max())
    assert kept < 1e-12 * (1 + float(y.abs().max()))
    assert sol.objective_after < sol.objective_before


def test_hf_sdpa_with_enable_gqa_extracts_the_same(monkeypatch, exact_rmsnorm):
    """Transformers passes ``enable_gqa=True`` to SDPA when it may (no mask; forced here)."""
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("enable_gqa", False))
        return real(*args, **kwargs)
    m = hf("llama", 0)
    with monkeypatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        m(IDS)
    assert seen and all(seen)
    g = architectures.from_hf(m, IDS)
    assert _edges(g) == _edges(architectures.hf_llama(m.config).graph)
    report = check_invariance(m, g, IDS, examples=2)
    assert report.passed, [str(c) for c in report.failures]
