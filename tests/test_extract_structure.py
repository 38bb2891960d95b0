"""from_module on models no builder knows: the extracted spaces, edges, heads and ties are the
expected ones (maximal where it matters), and exact on hand-written variants."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import symmetries as sy
from architectures import ExtractionError, from_module
from extract_models import GRAPHS, HandAttention, run_model


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
        torch.testing.assert_close(run_model(m, m.state_dict(), (x,)), run_model(m, sy.apply(g, m.state_dict(), T), (x,)),
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
        y, y2 = run_model(m, m.state_dict(), (x,)), run_model(m, sy.apply(g, m.state_dict(), T), (x,))
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
    torch.testing.assert_close(run_model(m, m.state_dict(), (idx,)), run_model(m, sy.apply(g, m.state_dict(), T), (idx,)),
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
