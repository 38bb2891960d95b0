"""Hugging Face Llama, Mistral and Qwen2 (tiny configs, random weights) through architectures.hf_llama:
the HF logits are unchanged by random transforms of every admitted class, the own module computes
the same function, the fold works from an HF model, and weight matching aligns two seeds."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import architectures
from architectures.llama import GQA
import solvers
import symmetries as sy

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=13, hidden_size=16, num_attention_heads=4, num_hidden_layers=2, intermediate_size=24,
            max_position_embeddings=32)
CASES = {
    "llama-gqa": ("llama", dict(num_key_value_heads=2)),
    "llama-mha-bias": ("llama", dict(num_key_value_heads=4, attention_bias=True, mlp_bias=True)),
    "llama-tied": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral-window": ("mistral", dict(num_key_value_heads=2, sliding_window=4)),
    "qwen2": ("qwen2", dict(num_key_value_heads=4)),
    "qwen2-gqa": ("qwen2", dict(num_key_value_heads=1)),
}
IDS = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def exact_hf(monkeypatch):
    """HF upcasts RMSNorm (and eager softmax) to float32; for float64 checks to 1e-10 keep the model's
    dtype in the norm (same formula) and use SDPA attention (float64 throughout on CPU)."""
    from transformers.models.llama import modeling_llama
    from transformers.models.mistral import modeling_mistral
    from transformers.models.qwen2 import modeling_qwen2

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    for mod, name in ((modeling_llama, "LlamaRMSNorm"), (modeling_mistral, "MistralRMSNorm"),
                      (modeling_qwen2, "Qwen2RMSNorm")):
        monkeypatch.setattr(getattr(mod, name), "forward", forward)


def make(case, **kw):
    family, extra = CASES[case]
    return architectures.hf_llama(family=family, **BASE, **extra, **kw)


def state(arch, seed):
    """Random weights with non-trivial RMSNorm gains (HF initialises them to 1)."""
    m = arch.module(seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 100)
    return {k: (v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) if k.endswith("norm.weight") else v)
            .detach().clone() for k, v in m.state_dict().items()}


def logits(arch, params, sdpa=False):
    m = arch.module(dtype=torch.float64)
    if sdpa:
        m.set_attn_implementation("sdpa")
    m.load_state_dict(params)
    with torch.no_grad():
        return m(IDS).logits


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1))
def test_hf_logits_unchanged_by_every_admitted_class(case, seed, exact_hf):
    for gqa in GQA:
        arch = make(case, gqa=gqa)
        p = state(arch, 0)
        y = logits(arch, p, sdpa=True)
        t = sy.random_transforms(arch.graph, seed=seed)
        err = float((logits(arch, sy.apply(arch.graph, p, t), sdpa=True) - y).abs().max())
        assert err < 1e-10 * (1 + float(y.abs().max())), (case, gqa, err)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stock_hf_and_the_own_module(case):
    """Stock HF (float32 norms and softmax) is invariant to float32 round-off, and architectures.llama
    on the same state dict computes the same logits."""
    arch = make(case)
    p = state(arch, 1)
    y = logits(arch, p)
    moved = sy.apply(arch.graph, p, sy.random_transforms(arch.graph, seed=3))
    assert float((logits(arch, moved) - y).abs().max()) < 1e-5 * (1 + float(y.abs().max()))
    cfg = dict(arch.config["llama"])
    cfg.pop("kind")
    own = architectures.llama(cfg.pop("vocab_size"), cfg.pop("d_model"), cfg.pop("n_heads"), cfg.pop("n_kv_heads"),
                              cfg.pop("n_layers"), cfg.pop("d_mlp"), cfg.pop("context"), **cfg)
    m = own.module(dtype=torch.float64)
    m.load_state_dict({k: v for k, v in p.items() if k in own.graph})
    with torch.no_grad():
        assert float((m(IDS) - y).abs().max()) < 1e-5 * (1 + float(y.abs().max()))


@pytest.mark.parametrize("case", ["llama-gqa", "qwen2", "llama-tied"])
def test_fold_from_hf(case, exact_hf):
    arch = make(case)
    p = state(arch, 2)
    y = logits(arch, p, sdpa=True)
    folded, fp = architectures.fold_rmsnorm(arch, p)
    m = folded.module(dtype=torch.float64)
    m.load_state_dict(sy.apply(folded.graph, fp, {"residual": sy.Orthogonal().random(16, seed=5)}))
    with torch.no_grad():
        assert float((m(IDS) - y).abs().max()) < 1e-10 * (1 + float(y.abs().max()))


@pytest.mark.parametrize("case, gqa", [("llama-gqa", "grouped"), ("llama-gqa", "heads"), ("llama-mha-bias", "grouped"),
                                       ("mistral-window", "grouped"), ("qwen2-gqa", "grouped")])
def test_weight_matching_aligns_two_seeds(case, gqa, exact_hf):
    arch = make(case, gqa=gqa)
    a, b = state(arch, 0), state(arch, 1)
    sol = solvers.solve("weight_matching", arch.graph, a, b, seed=0)
    assert sol.objective_after < sol.objective_before
    aligned = sy.apply(arch.graph, b, sol.transforms)
    yb = logits(arch, b, sdpa=True)
    assert float((logits(arch, aligned, sdpa=True) - yb).abs().max()) < 1e-12 * (1 + float(yb.abs().max()))


def test_refusals():
    with pytest.raises(ValueError, match="hidden_act"):
        architectures.hf_llama(**BASE, hidden_act="gelu")
    with pytest.raises(ValueError, match="model types"):
        architectures.hf_llama(family="gpt2")
    arch = make("llama-gqa", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(ValueError, match="rope_type"):
        architectures.fold_rmsnorm(arch, state(arch, 0))
