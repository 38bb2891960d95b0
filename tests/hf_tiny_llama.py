"""Tiny Llama-family models from Hugging Face configs (import after ``pytest.importorskip("transformers")``):
the builder and the float64 RMSNorm fixture shared by the rotary, grouped-query and from_hf tests."""
from __future__ import annotations

import importlib

import pytest
import torch
import transformers as T

#: family → (config class, model class, modeling module, RMSNorm class)
FAMILIES = {"llama": ("LlamaConfig", "LlamaForCausalLM", "modeling_llama", "LlamaRMSNorm"),
            "mistral": ("MistralConfig", "MistralForCausalLM", "modeling_mistral", "MistralRMSNorm"),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "modeling_qwen2", "Qwen2RMSNorm")}
IDS = torch.randint(0, 13, (2, 9), generator=torch.Generator().manual_seed(0))


def tiny(family: str, seed: int, kv: int = 4, impl: str | None = None):
    """A float64 eval-mode model: d 16, 4 query heads, ``kv`` key/value heads, 2 layers, random RMSNorm gains."""
    conf, cls, _, _ = FAMILIES[family]
    extra = {} if impl is None else {"attn_implementation": impl}
    cfg = getattr(T, conf)(vocab_size=13, hidden_size=16, num_attention_heads=4, num_key_value_heads=kv,
                           num_hidden_layers=2, intermediate_size=24, max_position_embeddings=32, **extra)
    torch.manual_seed(seed)
    m = getattr(T, cls)(cfg).double().eval()
    with torch.no_grad():  # non-trivial RMSNorm gains (HF initialises them to 1)
        for k, v in m.state_dict().items():
            if k.endswith("norm.weight"):
                v.add_(0.3 * torch.randn(v.shape, dtype=v.dtype))
    return m


@pytest.fixture
def exact_rmsnorm(monkeypatch):
    """HF computes RMSNorm in float32 even in a float64 model; keep the model's dtype (same formula), so
    invariance can be checked to float64 round-off."""
    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    for family, (_, _, module, norm) in FAMILIES.items():
        mod = importlib.import_module(f"transformers.models.{family}.{module}")
        monkeypatch.setattr(getattr(mod, norm), "forward", forward)
