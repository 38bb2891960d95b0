"""from_module: extracted graphs equal the builders' graphs, and the graphs of models no builder
knows are exact (hypothesis invariance in float64) and maximal where it matters; unsupported ops
raise an error naming the fx node, or become an explicitly fixed region."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from architectures import ExtractionError, assert_graphs_equivalent, from_module, graphs_equivalent
from conftest import RTOL
from symmetries.strategies import mlp_architectures, seeds, transform_sets


# -- models no builder knows ---------------------------------------------------------------------------
class TwoBranch(nn.Module):
    """Two branches (GELU and ReLU) added, then tanh: the branch outputs share one space."""

    def __init__(self):
        super().__init__()
        self.inp, self.a1, self.a2 = nn.Linear(5, 8), nn.Linear(8, 6), nn.Linear(6, 7)
        self.b1, self.b2, self.head = nn.Linear(8, 9), nn.Linear(9, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.head(torch.tanh(self.a2(F.gelu(self.a1(h))) + self.b2(torch.relu(self.b1(h)))))


class ResMLP(nn.Module):
    """A residual MLP with pre-LayerNorm blocks: one stream space for every writer."""

    def __init__(self, d=6, n=2):
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 10), nn.GELU(), nn.Linear(10, d))
                                    for _ in range(n))
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class ConvBN(nn.Module):
    """Conv–BN–ReLU twice with max pooling, global average pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.bn2 = nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
        x = F.relu(self.bn2(self.c2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyTransformer(nn.Module):
    """Embedding + learned positions, a pre-LN attention block with nn.MultiheadAttention, a
    SiLU MLP and an unembedding tied to the embedding."""

    def __init__(self, vocab=11, d=8, heads=2, length=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, length, d))
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 12), nn.Linear(12, d)
        self.unembed = nn.Linear(d, vocab, bias=False)
        self.unembed.weight = self.emb.weight

    def forward(self, idx):
        x = self.emb(idx) + self.pos
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        x = x + self.fc2(F.silu(self.fc1(self.ln2(x))))
        return self.unembed(self.lnf(x))


class HandAttention(nn.Module):
    """Hand-written attention (packed QKV cut by ``chunk``, heads by ``view``) between sum-based
    gain-free RMS norms: the stream admits orthogonal maps, the heads per-head invertible ones."""

    def __init__(self, d=6, heads=3, d_head=2):
        super().__init__()
        self.h, self.dh = heads, d_head
        self.inp, self.qkv = nn.Linear(5, d), nn.Linear(d, 3 * heads * d_head)
        self.o, self.out = nn.Linear(heads * d_head, d), nn.Linear(d, 2)

    @staticmethod
    def norm(x):
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / 6 + 1e-5)

    def forward(self, x):
        x = self.inp(x)
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.h, self.dh).transpose(1, 2) for z in (q, k, v))
        w = (q @ k.transpose(-2, -1) * self.dh ** -0.5).softmax(dim=-1)
        x = x + self.o((w @ v).transpose(1, 2).reshape(b, t, self.h * self.dh))
        return self.out(self.norm(x))


class MobileBlock(nn.Module):
    """Pointwise conv, depthwise conv, InstanceNorm, per-channel PReLU, torch-only activations."""

    def __init__(self):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
        self.dw, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6)
        self.project, self.inorm = nn.Conv2d(6, 4, 1), nn.InstanceNorm2d(4, affine=True)
        self.prelu, self.fc = nn.PReLU(4), nn.Linear(4, 2)
        self.act1, self.act2 = nn.ReLU6(), nn.Hardswish()

    def forward(self, x):
        x = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x))))))
        x = self.prelu(self.inorm(self.project(x)))
        return self.fc(x.mean((2, 3)))


class OddMLP(nn.Module):
    """A shared-slope PReLU (scalings and splits), Softsign and a symmetric Hardtanh (odd)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 5), nn.Linear(5, 6), nn.Linear(6, 5), nn.Linear(5, 2)
        self.prelu, self.soft, self.hard = nn.PReLU(), nn.Softsign(), nn.Hardtanh(-0.5, 0.5)

    def forward(self, x):
        return self.d(self.hard(self.c(self.soft(self.b(self.prelu(self.a(x)))))))


class Functional(nn.Module):
    """Raw parameters through F.embedding, F.layer_norm, F.conv1d, a 2-norm and elementwise
    functions outside the activation registry."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(7, 6))
        self.gain, self.shift = nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(6))
        self.kernel = nn.Parameter(torch.randn(5, 6, 3))
        self.w = nn.Parameter(torch.randn(5, 4))
        self.out = nn.Linear(4, 2)

    def forward(self, idx):
        x = F.layer_norm(F.embedding(idx, self.table), (6,), self.gain, self.shift)   # (B, T, 6)
        h = F.conv1d(x.transpose(1, 2), self.kernel, padding=1).transpose(1, 2)      # (B, T, 5)
        h = torch.erf(h)                                                               # odd
        h = torch.exp(h @ self.w) / (h @ self.w).norm(dim=-1, keepdim=True)          # (B, T, 4)
        return self.out(h)


class Decoder(nn.Module):
    """Upsampling (interpolate, transposed conv) with reflect and zero padding."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(5, 2, 3)
        self.up = nn.ConvTranspose2d(4, 5, 2, stride=2)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = F.pad(F.interpolate(h, scale_factor=2), (1, 1, 1, 1), mode="reflect")
        return self.c2(F.pad(F.silu(self.up(h)), (1, 1, 1, 1)))


class NanoAttention(nn.Module):
    """nanoGPT-style: packed ``c_attn`` split, heads by view/transpose, causal
    ``F.scaled_dot_product_attention``, dropout modules, an Embedding stream."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.h, self.wte, self.ln = heads, nn.Embedding(11, d), nn.LayerNorm(d)
        self.c_attn, self.c_proj, self.drop = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Dropout(0.1)
        self.head = nn.Linear(d, 11, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        b, t, c = x.size()
        q, k, v = self.c_attn(self.ln(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.drop(self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))))


class Concat(nn.Module):
    """Two branches concatenated along the features: the reader's columns are two slices."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=-1))


class HandGCN(nn.Module):
    """A graph convolution written with a raw parameter: ``Â (x W) + b``, twice."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(6))
        self.w2 = nn.Parameter(torch.randn(6, 3))

    def forward(self, x, a_hat):
        h = F.elu(a_hat @ (x @ self.w1) + self.b1)
        return a_hat @ (h @ self.w2)


class Rule(nn.Module):
    """``b(rule(a(x), x))`` for a few small rules of the walk."""
    RULES = {
        "plus_one": lambda h, x: torch.relu(h) + 1.0,
        "times_two": lambda h, x: torch.relu(h) * 2.0,
        "per_example": lambda h, x: torch.relu(h) * x.norm(dim=-1, keepdim=True),
        "centred": lambda h, x: h - h.mean(-1, keepdim=True),
        "softmax": lambda h, x: torch.softmax(h, -1),
        "plus_input": lambda h, x: h + x,
        "square": lambda h, x: h * h,
        "transpose": lambda h, x: torch.tanh(h.t()).t().contiguous(),
    }

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.RULES[self.rule](self.a(x), x))


RULE_CLASSES = {"plus_one": (sy.Permutation(),), "times_two": (sy.PermutationScaling(), sy.SemiPermutation()),
                "per_example": (sy.PermutationScaling(), sy.SemiPermutation()), "centred": (sy.Permutation(),),
                "softmax": (sy.Permutation(),), "plus_input": None, "square": (sy.Permutation(),),
                "transpose": (sy.SignedPermutation(),)}


def _inputs(name):
    g = torch.Generator().manual_seed(7)
    return {
        "two_branch": (torch.randn(6, 5, generator=g, dtype=torch.float64),),
        "res_mlp": (torch.randn(6, 4, generator=g, dtype=torch.float64),),
        "conv_bn": (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64),),
        "transformer": (torch.randint(0, 11, (3, 5), generator=g),),
        "nano_attention": (torch.randint(0, 11, (3, 5), generator=g),),
        "concat": (torch.randn(6, 4, generator=g, dtype=torch.float64),),
        "hand_attention": (torch.randn(2, 4, 5, generator=g, dtype=torch.float64),),
        "mobile": (torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64),),
        "functional": (torch.randint(0, 7, (3, 4), generator=g),),
        "decoder": (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),),
        "gcn": (torch.randn(5, 4, generator=g, dtype=torch.float64),
                torch.rand(5, 5, generator=g, dtype=torch.float64)),
    }.get(name, (torch.randn(6, 4, generator=g, dtype=torch.float64),))


MODELS = {"two_branch": TwoBranch, "res_mlp": ResMLP, "conv_bn": ConvBN, "transformer": TinyTransformer,
          "concat": Concat, "gcn": HandGCN, "hand_attention": HandAttention, "mobile": MobileBlock,
          "odd_mlp": OddMLP, "functional": Functional, "decoder": Decoder, "nano_attention": NanoAttention}
MODELS.update({f"rule:{r}": (lambda r=r: Rule(r)) for r in Rule.RULES})


def _model(name, seed=0):
    torch.manual_seed(seed)
    m = MODELS[name]().double().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong action on them shows
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
                mod.bias.normal_()
    return m


def _run(model, params, inputs):
    m = copy.deepcopy(model)
    m.load_state_dict(params)
    with torch.no_grad():
        return m(*inputs)


def _cond(transforms) -> float:
    worst = 1.0
    for el in transforms.values():
        s = torch.linalg.svdvals(el.as_matrix())
        worst *= float(s[0] / s[-1])
    return worst


GRAPHS = {name: from_module(_model(name), _inputs(name)) for name in MODELS}


# -- exactness of the extracted graphs ------------------------------------------------------------------
@settings(max_examples=150)
@given(st.sampled_from(sorted(MODELS)), st.data(), st.integers(0, 1000),
       st.sampled_from([torch.float64, torch.float32]))
def test_extracted_graphs_are_exact(name, data, seed, dtype):
    """Transforms drawn from the extracted graph's own classes leave every model's outputs
    unchanged: float64 to ~1e-10 relative, float32 to round-off (scaled by the maps' conditioning)."""
    g = GRAPHS[name]
    T = data.draw(transform_sets(g), label="transforms")
    model, inputs = _model(name, seed).to(dtype), tuple(x.to(dtype) if x.is_floating_point() else x
                                                         for x in _inputs(name))
    params = model.state_dict()
    y, y2 = _run(model, params, inputs), _run(model, sy.apply(g, params, T), inputs)
    tol = RTOL[dtype] * 10 * _cond(T) * max(1.0, float(y.abs().max()))
    assert float((y - y2).abs().max()) <= tol


@settings(max_examples=10)
@given(st.sampled_from(["res_mlp", "transformer", "two_branch"]), seeds)
def test_a_class_the_graph_does_not_admit_changes_the_function(name, seed):
    """The invariance check can fail: orthogonal maps on every non-head space break these models."""
    g = GRAPHS[name]
    classes = {s.name: sy.Orthogonal() for s in g.spaces() if s.head_group is None}
    assert not all(g.admits(s, c) for s, c in classes.items())
    T = sy.random_transforms(g, seed, classes=classes, strict=False)
    model, inputs = _model(name), _inputs(name)
    params = model.state_dict()
    y, y2 = _run(model, params, inputs), _run(model, sy.apply(g, params, T), inputs)
    assert float((y - y2).abs().max()) > 1e-6 * max(1.0, float(y.abs().max()))


@pytest.mark.parametrize("rule", sorted(RULE_CLASSES))
def test_small_rules(rule):
    g = GRAPHS[f"rule:{rule}"]
    expected = RULE_CLASSES[rule]
    if expected is None:
        assert g.spaces() == [] and all(p.fixed for p in g.parameters())
    else:
        assert [s.classes for s in g.spaces()] == [expected]


@pytest.mark.parametrize("name,cls", [("conv_bn", sy.PositiveScaling()), ("conv_bn", sy.SignFlip()),
                                      ("mobile", sy.SignFlip()), ("odd_mlp", sy.Orthogonal()),
                                      ("rule:plus_one", sy.PositiveScaling()), ("rule:centred", sy.PositiveScaling()),
                                      ("rule:square", sy.SignFlip()), ("transformer", sy.SignFlip())])
def test_classes_refused_by_the_walk_are_not_exact(name, cls):
    """What the walk refuses (scaling across BatchNorm's ε, signs across a product…) does change outputs."""
    g = GRAPHS[name]
    classes = {s.name: cls for s in g.spaces() if s.head_group is None}
    assert not any(g.admits(s, cls) for s in classes)
    T = sy.random_transforms(g, 0, classes=classes, strict=False)
    model, inputs = _model(name), _inputs(name)
    params = model.state_dict()
    y, y2 = _run(model, params, inputs), _run(model, sy.apply(g, params, T, check=False), inputs)
    assert float((y - y2).abs().max()) > 1e-8 * max(1.0, float(y.abs().max()))


def test_two_branch_graph():
    g = GRAPHS["two_branch"]
    spaces = {s.name: s for s in g.spaces()}
    assert spaces["inp"].classes == (sy.PermutationScaling(), sy.SemiPermutation())
    assert spaces["a1"].classes == (sy.Permutation(),) and spaces["a1"].activation == "gelu"
    merged = spaces["a2"]  # both branch outputs write one space: SignFlip × Permutation across tanh
    assert merged.classes == (sy.SignedPermutation(),)
    writers = {e.parameter for e in g.edges_at("a2") if e.role is sy.Role.OUT}
    assert writers == {"a2.weight", "a2.bias", "b2.weight", "b2.bias"}
    assert [p.name for p in g.parameters() if p.fixed] == ["head.bias"]


def test_residual_stream_through_layernorm_is_one_permutation_space():
    g = GRAPHS["res_mlp"]
    stream = g.space("inp")
    assert stream.classes == (sy.Permutation(),)
    params = {e.parameter for e in g.edges_at("inp")}
    assert {"blocks.0.0.weight", "blocks.1.3.bias", "out.weight", "inp.bias"} <= params
    assert len(g.spaces()) == 3


def test_batchnorm_edges_and_fixed_counters():
    g = GRAPHS["conv_bn"]
    roles = {(e.parameter, str(e.role)) for e in g.edges_at("c1")}
    assert {("bn1.running_mean", "out"), ("bn1.running_var", "var"), ("c2.weight", "in")} <= roles
    assert g.space("c2").classes == (sy.Permutation(),)
    assert {p.name for p in g.parameters() if p.fixed} == {"bn1.num_batches_tracked", "bn2.num_batches_tracked",
                                                            "fc.bias"}


def test_attention_heads_and_tied_embedding():
    g = GRAPHS["transformer"]
    assert g.head_groups() == {"attn": ["attn.qk", "attn.vo"]}
    assert g.space("attn.qk").classes == (sy.HeadStructured(2, sy.Invertible()),)
    qk = {(e.parameter, str(e.role), e.slice) for e in g.edges_at("attn.qk")}
    assert ("attn.in_proj_weight", "out", (0, 8)) in qk and ("attn.in_proj_weight", "in", (8, 16)) in qk
    stream = g.space("emb")
    assert stream.classes == (sy.Permutation(),)
    tied = {(e.parameter, str(e.role)) for e in g.edges_at("emb") if e.parameter in ("emb.weight", "unembed.weight")}
    assert tied == {(n, r) for n in ("emb.weight", "unembed.weight") for r in ("out", "in")}
    assert ("pos", "out") in {(e.parameter, str(e.role)) for e in g.edges_at("emb")}
    assert g.space("fc1").activation == "silu"


def test_hand_written_attention():
    g = GRAPHS["hand_attention"]
    assert g.space("inp").classes == (sy.Orthogonal(),)  # ‖y‖² is invariant under orthogonal maps
    assert g.head_groups() == {"qkv": ["qkv.qk", "qkv.vo"]}
    heads = (sy.HeadStructured(3, sy.Invertible()),)
    assert g.space("qkv.qk").classes == heads and g.space("qkv.vo").classes == heads
    qk = sorted((e.parameter, str(e.role), e.slice) for e in g.edges_at("qkv.qk"))
    assert qk == [("qkv.bias", "in", (6, 12)), ("qkv.bias", "out", (0, 6)),
                  ("qkv.weight", "in", (6, 12)), ("qkv.weight", "out", (0, 6))]
    assert ("o.weight", "in", None) in {(e.parameter, str(e.role), e.slice) for e in g.edges_at("qkv.vo")}


def test_scaled_dot_product_attention():
    g = GRAPHS["nano_attention"]
    assert g.head_groups() == {"c_attn": ["c_attn.qk", "c_attn.vo"]}
    assert g.space("wte").classes == (sy.Permutation(),)
    vo = {(e.parameter, str(e.role), e.slice) for e in g.edges_at("c_attn.vo")}
    assert vo == {("c_attn.weight", "out", (16, 24)), ("c_attn.bias", "out", (16, 24)), ("c_proj.weight", "in", None)}


def test_a_restricted_key_space_keeps_its_heads():
    """ReLU on the keys before the scores: per head, scalings (and splits) stay exact — the meet
    with a head-structured class is taken head by head, never a class without heads in a group."""
    class ReluKeys(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.qkv, self.o, self.out = nn.Linear(3, 8), nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            b, t = x.shape[:2]
            q, k, v = self.qkv(self.inp(x)).split(8, dim=-1)
            q, k, v = (z.view(b, t, 2, 4).transpose(1, 2) for z in (q, torch.relu(k), v))
            y = F.scaled_dot_product_attention(q, k, v)
            return self.out(self.o(y.transpose(1, 2).reshape(b, t, 8)))

    m = ReluKeys().double()
    g = from_module(m, torch.randn(2, 5, 3, dtype=torch.float64))
    assert g.space("qkv.qk").classes == (sy.HeadStructured(2, sy.PermutationScaling()),
                                         sy.HeadStructured(2, sy.SemiPermutation()))
    x = torch.randn(3, 4, 3, dtype=torch.float64)
    for seed in range(3):
        T = sy.random_transforms(g, seed)
        torch.testing.assert_close(_run(m, m.state_dict(), (x,)), _run(m, sy.apply(g, m.state_dict(), T), (x,)),
                                   rtol=1e-9, atol=1e-9)


def test_query_reused_after_the_scores_is_refused():
    class Reuse(HandAttention):
        def forward(self, x):
            x = self.inp(x)
            b, t, _ = x.shape
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            qh, kh, vh = (z.view(b, t, self.h, self.dh).transpose(1, 2) for z in (q, k, v))
            w = (qh @ kh.transpose(-2, -1)).softmax(dim=-1)
            y = (w @ vh).transpose(1, 2).reshape(b, t, self.h * self.dh)
            return self.out(x + self.o(y + k))  # k read again: its space is paired with q

    with pytest.raises(ExtractionError, match="fx node 'add'"):
        from_module(Reuse(), torch.randn(2, 4, 5))
    g = from_module(Reuse().double(), torch.randn(2, 4, 5, dtype=torch.float64), unknown="fixed")
    assert g.head_groups() == {} and all(s.head_group is None for s in g.spaces())


def test_per_head_attention_weights_reaching_the_output_freeze_the_heads():
    class Weights(nn.Module):
        def __init__(self, average):
            super().__init__()
            self.average = average
            self.inp = nn.Linear(3, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            h = self.inp(x)
            y, w = self.attn(h, h, h, average_attn_weights=self.average)
            return y.sum(-1), w

    x = torch.randn(2, 4, 3)
    per_head = from_module(Weights(False), x)
    assert per_head.head_groups() == {}  # the head permutation would permute the returned weights
    averaged = from_module(Weights(True), x)
    assert averaged.head_groups() == {"attn": ["attn.qk", "attn.vo"]}


def test_a_module_called_twice_is_one_space():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.f, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

        def forward(self, x):
            h = torch.tanh(self.inp(x))
            return self.out(torch.tanh(self.f(torch.tanh(self.f(h)))))

    m = Twice().double()
    g = from_module(m, torch.randn(2, 3, dtype=torch.float64))
    # f writes and reads one space, so inp's space, f's output and out's input are all the same
    assert [s.classes for s in g.spaces()] == [(sy.SignedPermutation(),)]
    x = torch.randn(6, 3, dtype=torch.float64)
    for seed in range(5):
        T = sy.random_transforms(g, seed)
        y, y2 = _run(m, m.state_dict(), (x,)), _run(m, sy.apply(g, m.state_dict(), T), (x,))
        torch.testing.assert_close(y, y2, rtol=1e-10, atol=1e-10)


def test_arguments_left_at_their_defaults_are_traced_as_defaults():
    class Optional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x, gate=None, *, shift=0.0):
            h = torch.relu(self.a(x))
            if gate is not None:
                h = h * gate
            return self.b(h + shift)

    relu = (sy.PermutationScaling(), sy.SemiPermutation())
    assert [s.classes for s in from_module(Optional(), torch.randn(2, 3)).spaces()] == [relu]
    gated = from_module(Optional(), (torch.randn(2, 3), torch.randn(2, 1)))  # a per-example factor
    assert [s.classes for s in gated.spaces()] == [relu]
    assert from_module(Optional(), (torch.randn(2, 3), torch.randn(2, 4))).spaces() == []  # a fixed gate

    class Variadic(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x, *args, **kwargs):
            return self.b(torch.relu(self.a(x)))

    assert [s.classes for s in from_module(Variadic(), torch.randn(2, 3)).spaces()] == [relu]


def test_depthwise_instance_norm_prelu_and_torch_activations():
    g = GRAPHS["mobile"]
    assert [(s.name, s.classes, s.activation) for s in g.spaces()] == [
        ("expand", (sy.Permutation(),), "relu6+hardswish"), ("project", (sy.Permutation(),), None)]
    roles = {(e.parameter, str(e.role)) for e in g.edges_at("expand")}
    assert {("dw.weight", "out"), ("dw.bias", "out"), ("bn2.running_var", "var"), ("project.weight", "in")} <= roles
    assert ("prelu.weight", "out") in {(e.parameter, str(e.role)) for e in g.edges_at("project")}
    odd = GRAPHS["odd_mlp"]
    assert [(s.classes, s.activation) for s in odd.spaces()] == [
        ((sy.PermutationScaling(), sy.SemiPermutation()), "prelu"), ((sy.SignedPermutation(),), "softsign"),
        ((sy.SignedPermutation(),), "hardtanh")]
    assert odd.parameter("prelu.weight").fixed


def test_transposed_convolutions_and_upsampling():
    g = GRAPHS["decoder"]
    assert [(s.name, s.classes) for s in g.spaces()] == [("c1", (sy.PermutationScaling(), sy.SemiPermutation())),
                                                         ("up", (sy.Permutation(),))]
    assert {(e.parameter, e.axis, str(e.role)) for e in g.edges_at("up")} == {
        ("up.weight", 1, "out"), ("up.bias", 0, "out"), ("c2.weight", 1, "in")}
    assert ("up.weight", 0, "in") in {(e.parameter, e.axis, str(e.role)) for e in g.edges_at("c1")}


def test_functional_ops_with_raw_parameters():
    g = GRAPHS["functional"]
    assert [(s.name, s.classes, s.activation) for s in g.spaces()] == [
        ("table.units", (sy.Permutation(),), None), ("kernel.units", (sy.SignedPermutation(),), "erf"),
        ("w.units", (sy.Permutation(),), "exp")]  # exp ∩ ‖·‖₂ (orthogonal) = permutations
    assert {(e.parameter, e.axis, str(e.role)) for e in g.edges_at("table.units")} == {
        ("table", 1, "out"), ("gain", 0, "out"), ("shift", 0, "out"), ("kernel", 1, "in")}
    assert {(e.parameter, e.axis, str(e.role)) for e in g.edges_at("w.units")} == {("w", 1, "out"),
                                                                                   ("out.weight", 1, "in")}


def test_sliced_positional_embeddings_follow_the_stream():
    class Positions(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.pos = nn.Embedding(9, 6), nn.Parameter(torch.randn(1, 10, 6))
            self.ln, self.fc, self.out = nn.LayerNorm(6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, idx):
            x = self.emb(idx) + self.pos[:, :idx.shape[1]]
            x = x + self.fc(torch.relu(self.ln(x)))
            return self.out(x)

    m = Positions().double()
    g = from_module(m, torch.randint(0, 9, (2, 4)))
    assert ("pos", 2, "out") in {(e.parameter, e.axis, str(e.role)) for e in g.edges_at("emb")}
    idx = torch.randint(0, 9, (3, 5))
    T = sy.random_transforms(g, 1)
    torch.testing.assert_close(_run(m, m.state_dict(), (idx,)), _run(m, sy.apply(g, m.state_dict(), T), (idx,)),
                               rtol=1e-10, atol=1e-10)

    class Cut(Positions):
        def forward(self, idx):  # positions cut along the features cannot follow the stream
            x = self.fc(self.emb(idx)[..., :3].repeat(1, 1, 2) + self.pos[:, :idx.shape[1], :1])
            return self.out(x + self.pos[:, :idx.shape[1], 3:].repeat(1, 1, 2))

    with pytest.raises(ExtractionError, match="indexing the feature dimension"):
        from_module(Cut(), torch.randint(0, 9, (2, 4)))
    cut = from_module(Cut(), torch.randint(0, 9, (2, 4)), unknown="fixed")
    assert [s.name for s in cut.spaces()] == [] and cut.parameter("pos").fixed


def test_concatenation_gives_slices():
    g = GRAPHS["concat"]
    reads = sorted((e.slice, e.space) for e in g.edges_of("out.weight"))
    assert reads == [((0, 3), "a"), ((3, 8), "b")]
    assert g.space("a").classes == (sy.PermutationScaling(), sy.SemiPermutation())
    assert g.space("b").classes == (sy.SignedPermutation(),)


def test_hand_written_gcn():
    g = GRAPHS["gcn"]
    assert [(e.parameter, e.axis, str(e.role)) for e in g.edges_at("w1.units")] == [
        ("w1", 1, "out"), ("b1", 0, "out"), ("w2", 0, "in")]
    assert g.space("w1.units").classes == (sy.Permutation(),)  # ELU
    assert [p.name for p in g.parameters() if p.fixed] == []


# -- the builders' graphs are reproduced ------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "abs", "tanh", "sin", "gelu", "silu", "sigmoid",
                                        "softplus", "elu", "identity"])
def test_mlp_graphs_are_reproduced(activation):
    for widths, bias in [([3, 4, 5, 2], True), ([3, 4, 5, 2], False), ([3, 2], True), ([3, 6, 2], True)]:
        arch = architectures.mlp(widths, activation=activation, bias=bias)
        g = from_module(arch.module(seed=0), torch.randn(2, widths[0]))
        assert_graphs_equivalent(arch.graph, g)


@settings(max_examples=40)
@given(mlp_architectures(), st.integers(1, 3))
def test_drawn_mlp_graphs_are_reproduced(arch, batch):
    x = torch.randn(batch, arch.config["widths"][0])
    assert_graphs_equivalent(arch.graph, from_module(arch.module(seed=0), x))


def _builders():
    out = [("vgg", lambda: architectures.vgg(), (torch.randn(2, 3, 8, 8),)),
           ("vgg-bn-hidden", lambda: architectures.vgg(batchnorm=True, hidden=(12,)), (torch.randn(2, 3, 8, 8),)),
           ("vgg-tanh", lambda: architectures.vgg(activation="tanh", bias=False), (torch.randn(2, 3, 8, 8),)),
           ("resnet8", lambda: architectures.resnet(8), (torch.randn(2, 3, 8, 8),)),
           ("resnet14-half", lambda: architectures.resnet(14, width=0.5), (torch.randn(2, 3, 8, 8),)),
           ("gcn", lambda: architectures.gcn([4, 6, 5, 3]), (torch.randn(5, 4), torch.rand(5, 5))),
           ("gcn-gelu", lambda: architectures.gcn([4, 6, 3], activation="gelu", bias=False),
            (torch.randn(5, 4), torch.rand(5, 5)))]
    from architectures.transformer import gpt2, vit
    for packed in (False, True):
        for norm in ("layernorm", "rms"):
            out.append((f"gpt2-{norm}{'-packed' if packed else ''}",
                        lambda p=packed, n=norm: gpt2(11, 6, 8, 2, 2, packed_qkv=p, norm=n), None))
            out.append((f"vit-{norm}{'-packed' if packed else ''}",
                        lambda p=packed, n=norm: vit(8, 4, 3, 8, 2, 1, packed_qkv=p, norm=n), None))
    out += [("gpt2-tied", lambda: gpt2(11, 6, 8, 2, 1, tie_embeddings=True), None),
            ("gpt2-tied-rms", lambda: gpt2(11, 6, 8, 2, 1, tie_embeddings=True, norm="rms"), None),
            ("gpt2-head-bias-dhead3", lambda: gpt2(11, 6, 8, 2, 1, head_bias=True, d_head=3), None)]
    return out


@pytest.mark.parametrize("name,build,inputs", _builders(), ids=[b[0] for b in _builders()])
def test_builder_graphs_are_reproduced(name, build, inputs):
    arch = build()
    if inputs is None:
        from architectures.transformer import example_inputs
        inputs = example_inputs(arch)
    assert_graphs_equivalent(arch.graph, from_module(arch.module(seed=0), inputs))


# -- unsupported ops ---------------------------------------------------------------------------------
class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.cumsum(torch.relu(self.a(x)), dim=-1))))


class Interleave(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.conv2 = nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.gn(self.conv(x))))


@pytest.mark.parametrize("model,inputs,node", [
    (Cumsum, torch.randn(3, 4), "cumsum"),
    (Interleave, torch.randn(2, 3, 6, 6), "flatten"),
    (GroupNormNet, torch.randn(2, 3, 5, 5), "gn"),
])
def test_unsupported_ops_name_the_node(model, inputs, node):
    m = model()
    with pytest.raises(ExtractionError, match=f"fx node '{node}'") as info:
        from_module(m, inputs)
    assert info.value.node == node and isinstance(info.value, sy.errors.SymmetryError)
    assert "unknown='fixed'" in str(info.value)


def test_unknown_fixed_makes_the_region_fixed_and_stays_exact():
    m = Cumsum().double()
    g = from_module(m, torch.randn(3, 4, dtype=torch.float64), unknown="fixed")
    assert [s.name for s in g.spaces()] == ["b"]  # the space entering cumsum is gone, the next one stays
    assert {p.name for p in g.parameters() if p.fixed} == {"a.weight", "a.bias", "c.bias"}
    x = torch.randn(7, 4, dtype=torch.float64)
    T = sy.random_transforms(g, 3)
    y, y2 = _run(m, m.state_dict(), (x,)), _run(m, sy.apply(g, m.state_dict(), T), (x,))
    torch.testing.assert_close(y, y2, rtol=1e-10, atol=1e-10)
    gn = from_module(GroupNormNet(), torch.randn(2, 3, 5, 5), unknown="fixed")
    assert gn.spaces() == [] and all(p.fixed for p in gn.parameters())
    with pytest.raises(ValueError, match="unknown must be"):
        from_module(m, torch.randn(3, 4), unknown="ignore")


def test_values_turned_into_constants_are_refused():
    class Leak(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h + torch.from_numpy(np.asarray(h)).sum())  # numpy leaves the traced graph

    with pytest.raises(ExtractionError, match="converted to a constant") as info:
        from_module(Leak(), torch.randn(2, 3))
    assert info.value.node == "relu"
    g = from_module(Leak(), torch.randn(2, 3), unknown="fixed")
    assert g.spaces() == []


def test_the_module_is_left_as_it_was():
    m = _model("conv_bn").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    attrs = set(vars(m))
    x = _inputs("conv_bn")[0].clone()
    from_module(m, x)
    assert m.training and all(mod.training for mod in m.modules())
    assert set(vars(m)) == attrs
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(x, _inputs("conv_bn")[0])


def test_declaring_page_examples_run():
    import contextlib
    import io
    import re
    from pathlib import Path
    page = Path(__file__).resolve().parents[1] / "docs" / "declaring.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 4
    outs = []
    for i, block in enumerate(blocks):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(block, f"declaring.md block {i}", "exec"), {"__name__": f"declaring_{i}"})
        outs.append(buf.getvalue().split())
    assert float(outs[0][-1]) < 1e-12
    assert outs[2] == ["wte.weight", "1", "stream"]
    assert outs[3] == ["cumsum", "['b']"]


# -- graph equivalence ---------------------------------------------------------------------------------
def _renamed(g, mapping):
    h = architectures.WeightGraph(g.name)
    for p in g.parameters():
        h.add_parameter(p.name, p.shape, fixed=p.fixed)
    for s in g.spaces():
        h.add_space(mapping.get(s.name, s.name), s.size, s.classes, activation=s.activation,
                    head_group=None if s.head_group is None else mapping.get(s.head_group, s.head_group))
    for e in g.edges():
        h.connect(e.parameter, mapping.get(e.space, e.space), axis=e.axis, role=e.role, slice=e.slice)
    return h


def test_equivalence_is_up_to_renaming_only():
    g = GRAPHS["transformer"]
    renamed = _renamed(g, {"emb": "stream", "attn.qk": "q", "attn.vo": "v", "attn": "heads0"})
    assert graphs_equivalent(g, renamed)
    assert_graphs_equivalent(g, renamed)
    other = g.with_classes({"fc1": sy.SignedPermutation()})
    assert not graphs_equivalent(g, other)
    with pytest.raises(AssertionError, match="differ in classes"):
        assert_graphs_equivalent(g, other)
    mlp = architectures.mlp([3, 4, 2]).graph
    flipped = architectures.WeightGraph("flipped")
    for p in mlp.parameters():
        flipped.add_parameter(p.name, p.shape, fixed=p.fixed)
    flipped.add_space("h", 4, mlp.space("hidden.0").classes, activation="relu")
    flipped.connect("layers.0.weight", "h", axis=0, role="out")
    flipped.connect("layers.0.bias", "h", axis=0, role="out")
    flipped.connect("layers.1.weight", "h", axis=1, role="out")  # wrong role
    assert not graphs_equivalent(mlp, flipped)
    with pytest.raises(AssertionError, match="no counterpart"):
        assert_graphs_equivalent(mlp, flipped)
    shapes = architectures.mlp([3, 5, 2]).graph
    with pytest.raises(AssertionError, match="shape"):
        assert_graphs_equivalent(mlp, shapes)


def _mutated(g, kind, k):
    """A copy of ``g`` with one thing changed: an edge's role, axis or slice, a class list, an
    activation, or a parameter's fixed flag."""
    h = architectures.WeightGraph(g.name)
    params = g.parameters()
    edges = g.edges()
    target = edges[k % len(edges)] if edges else None
    for p in params:
        h.add_parameter(p.name, p.shape, fixed=p.fixed)
    for sp in g.spaces():
        classes, act = sp.classes, sp.activation
        if target is not None and sp.name == target.space and kind == "classes":
            classes = (sy.Trivial(),) + classes
        if target is not None and sp.name == target.space and kind == "activation":
            act = (act or "") + "?"
        h.add_space(sp.name, sp.size, classes, activation=act, head_group=sp.head_group)
    for e in edges:
        role, sl = e.role, e.slice
        if e is target and kind == "role":
            role = sy.Role.IN if e.role is sy.Role.OUT else sy.Role.OUT
        if e is target and kind == "slice":
            sl = (0, g.space(e.space).size) if e.slice is None else None
        h.connect(e.parameter, e.space, axis=e.axis, role=role, slice=sl)
    return h


@settings(max_examples=60)
@given(st.sampled_from(sorted(GRAPHS)), st.randoms(use_true_random=False),
       st.sampled_from(["role", "slice", "classes", "activation"]), st.integers(0, 10**6))
def test_equivalence_ignores_names_and_sees_every_change(name, rnd, kind, k):
    g = GRAPHS[name]
    names = [sp.name for sp in g.spaces()]
    shuffled = names[:]
    rnd.shuffle(shuffled)
    groups = {grp: f"group{i}" for i, grp in enumerate(g.head_groups())}
    renamed = _renamed(g, {**{a: f"space:{b}" for a, b in zip(names, shuffled)}, **groups})
    assert graphs_equivalent(g, renamed) and architectures.graph_difference(g, renamed) is None
    if not g.edges():
        return
    other = _mutated(g, kind, k)
    assert not graphs_equivalent(g, other) and not graphs_equivalent(renamed, other)
    with pytest.raises(AssertionError, match="differ"):
        assert_graphs_equivalent(renamed, other)


def test_head_groups_must_map_consistently():
    g = architectures.WeightGraph("heads")
    for p in ("w1", "w2"):
        g.add_parameter(p, (4, 3))
    cls = sy.HeadStructured(2, sy.Invertible())
    g.add_space("s1", 4, cls, head_group="A").add_space("s2", 4, cls, head_group="A")
    g.connect("w1", "s1", axis=0, role="out").connect("w2", "s2", axis=0, role="out")
    split = _renamed(g, {})
    split.nx.nodes["s2"]["head_group"] = "B"
    split._cache = None
    assert graphs_equivalent(g, _renamed(g, {"A": "Z"}))
    assert not graphs_equivalent(g, split)
    with pytest.raises(AssertionError, match="head group"):
        assert_graphs_equivalent(g, split)
