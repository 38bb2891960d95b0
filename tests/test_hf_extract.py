"""Hugging Face models as users hold them (from configs, random weights) through ``architectures.from_hf``:
every admitted class keeps the output to float64 round-off, weight matching aligns two seeds with the
function kept to 1e-12, Llama's grouped-query attention extracts as ``architectures.hf_llama`` declares
it. Also the rules added for it, used through ``from_module``: ``F.batch_norm``, dropout
variants (identity unless active) and a no-op reshape of attention heads."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import architectures
import solvers
import symmetries as sy
from symmetries.testing import check_invariance

T = pytest.importorskip("transformers")

IDS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
PIXELS = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=16)


def _bert_eager():
    m = T.BertForSequenceClassification(T.BertConfig(**BERT))
    m.set_attn_implementation("eager")
    return m


MODELS = {
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                                    bos_token_id=0, eos_token_id=0)), IDS),
    "bert": (lambda: T.BertForSequenceClassification(T.BertConfig(**BERT)), IDS),
    "bert-eager": (_bert_eager, IDS),
    "bert-automodel": (lambda: T.AutoModel.from_config(T.BertConfig(**BERT)), IDS),
    "distilbert": (lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
        vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=24, max_position_embeddings=16)), IDS),
    "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, num_labels=5)), PIXELS),
}


def build(case, seed):
    torch.manual_seed(seed)
    return MODELS[case][0]().double().eval()


def outputs(model, x, params):
    model.load_state_dict(params)
    with torch.no_grad():
        out = model(x)
    return torch.cat([t.flatten() for t in torch.utils._pytree.tree_leaves(dict(out)) if isinstance(t, torch.Tensor)])


@pytest.fixture(scope="module")
def graphs():
    return {case: architectures.from_hf(build(case, 0), MODELS[case][1]) for case in MODELS}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_every_admitted_class_keeps_the_output(case, graphs):
    model, x, g = build(case, 0), MODELS[case][1], graphs[case]
    heads = [s for s in g.spaces() if s.head_group is not None]
    assert heads and all(isinstance(s.classes[0], sy.HeadStructured) for s in heads), case
    assert any(s.activation for s in g.spaces()), case  # the MLP spaces
    report = check_invariance(model, g, x, examples=2)
    assert report.passed, [str(c) for c in report.failures]
    assert {str(c.cls) for c in report.checks} >= {"Permutation", "HeadStructured(2, Invertible())"}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_weight_matching_aligns_two_seeds_keeping_the_function(case, graphs):
    g, x = graphs[case], MODELS[case][1]
    a, b = build(case, 0), build(case, 1)
    pa, pb = dict(a.state_dict()), dict(b.state_dict())
    sol = solvers.solve("weight_matching", g, pa, pb, seed=0)
    moved = sy.apply(g, pb, sol.transforms)
    y = outputs(b, x, pb)
    assert float((outputs(b, x, moved) - y).abs().max()) < 1e-12 * (1 + float(y.abs().max()))
    assert sol.objective_after < sol.objective_before  # the seeds were really moved towards each other


def test_a_class_the_graph_does_not_admit_changes_the_output(graphs):
    """The checks can fail: an invertible map of GPT-2's residual stream (LayerNorm admits permutations)."""
    model, g = build("gpt2", 0), graphs["gpt2"]
    residual = next(s.name for s in g.spaces() if any(e.parameter == "transformer.wte.weight" for e in g.edges_at(s.name)))
    p = dict(model.state_dict())
    y = outputs(model, IDS, p)
    t = sy.random_transforms(g, seed=0)
    t = {**dict(t), residual: sy.Invertible().random(16, seed=1)}
    moved = sy.apply(g, p, t, check=False)
    assert float((outputs(model, IDS, moved) - y).abs().max()) > 1e-3


def _shape(g):
    """Spaces as (classes, edges without roles): the tie rule may add the opposite role on a tied axis."""
    return sorted((tuple(map(str, s.classes)),
                   tuple(sorted({(e.parameter, e.axis, e.slice or (0, s.size)) for e in g.edges_at(s.name)})))
                  for s in g.spaces())


def test_gpt2_extraction_matches_the_hand_written_binding():
    arch = architectures.hf_gpt2(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                 bos_token_id=0, eos_token_id=0)
    g = architectures.from_hf(arch.module(seed=0, dtype=torch.float64))
    assert _shape(g) == _shape(arch.graph)
    assert {p.name for p in g.parameters() if p.fixed} == {p.name for p in arch.graph.parameters() if p.fixed}


def test_default_example_inputs_come_from_the_config():
    m = build("vit", 0)
    (x,) = architectures.hf_example_inputs(m)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float64
    assert _shape(architectures.from_hf(m)) == _shape(architectures.from_hf(m, PIXELS))
    assert architectures.hf_example_inputs(build("gpt2", 0))[0].dtype == torch.int64


def test_training_flags_are_restored():
    m = build("distilbert", 0).train()
    architectures.from_hf(m, IDS)
    assert all(mod.training for mod in m.modules())


# -- Llama with grouped queries: extracts as architectures.hf_llama declares it ------------------------
from hf_tiny_llama import IDS as LLAMA_IDS, exact_rmsnorm, tiny  # noqa: E402,F401 - a fixture, used by name


def llama(seed):
    return tiny("llama", seed, kv=2)


def test_llama_grouped_query_attention_extracts_as_hf_llama(exact_rmsnorm):
    m = llama(0)
    g = architectures.from_hf(m, LLAMA_IDS)
    assert architectures.graphs_equivalent(g, architectures.hf_llama(m.config).graph)
    assert {e.repeat for s in g.spaces() for e in g.edges_at(s.name)} == {None, (2, 4)}
    report = check_invariance(m, g, LLAMA_IDS, examples=2)
    assert report.passed, [str(c) for c in report.failures]


def test_llama_fixed_extracts_the_same_and_stays_exact(exact_rmsnorm):
    m = llama(0)
    g = architectures.from_hf(m, LLAMA_IDS, unknown="fixed")
    assert architectures.graphs_equivalent(g, architectures.from_hf(m, LLAMA_IDS))
    b = llama(1)
    pb = dict(b.state_dict())
    sol = solvers.solve("weight_matching", g, dict(m.state_dict()), pb, seed=0)
    y = outputs(b, LLAMA_IDS, pb)
    kept = float((outputs(b, LLAMA_IDS, sy.apply(g, pb, sol.transforms)) - y).abs().max())
    assert kept < 1e-12 * (1 + float(y.abs().max()))


# -- the rules added for these models, through from_module ------------------------------------------------
class FunctionalBN(nn.Module):
    """timm-style ``F.batch_norm`` with the module's own buffers, and dropout variants."""

    def __init__(self, active_dropout=False):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.gain, self.shift = nn.Parameter(torch.rand(6) + 0.5), nn.Parameter(torch.randn(6))
        self.register_buffer("mean", torch.randn(6))
        self.register_buffer("var", torch.rand(6) + 0.5)
        self.drop = nn.AlphaDropout(0.3)
        self.active = active_dropout

    def forward(self, x):
        h = F.batch_norm(self.a(x), self.mean, self.var, self.gain, self.shift, training=False)
        h = F.dropout1d(torch.relu(h).unsqueeze(-1), 0.2, training=self.active or self.training).squeeze(-1)
        return self.b(self.drop(F.alpha_dropout(h, 0.1, training=self.training)))


def test_functional_batch_norm_and_dropout_variants():
    model, x = FunctionalBN().double(), torch.randn(5, 4, dtype=torch.float64)
    g = architectures.from_module(model, x)
    assert g.space("a").classes == (sy.Permutation(),)
    assert {(e.parameter, str(e.role)) for e in g.edges_at("a")} >= {("gain", "out"), ("mean", "out"), ("var", "var")}
    assert check_invariance(model, g, x, examples=3).passed
    with pytest.raises(architectures.ExtractionError) as info:
        architectures.from_module(FunctionalBN(active_dropout=True).double(), x)
    assert info.value.node == "dropout1d"


class NoOpReshapeAttention(nn.Module):
    """SDPA followed by a reshape to the same shape (what HF's attention does after SDPA)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.o, self.head = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, 2, 4).transpose(1, 2) for z in self.qkv(x).split(8, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.reshape(o.shape).transpose(1, 2).reshape(b, t, 8)
        return self.head(torch.relu(self.o(o)))


def test_a_no_op_reshape_of_heads_keeps_them():
    model, x = NoOpReshapeAttention().double(), torch.randn(2, 5, 8, dtype=torch.float64)
    g = architectures.from_module(model, x)
    assert {str(s.classes[0]) for s in g.spaces() if s.head_group} == {"HeadStructured(2, Invertible())"}
    assert check_invariance(model, g, x, examples=3).passed
