"""The weight graph of Hugging Face ``LlamaForCausalLM``, ``MistralForCausalLM`` and ``Qwen2ForCausalLM``.

The three share one layout — the names and the spaces of :func:`architectures.llama` (RMSNorm with
gain, SwiGLU, rotary embeddings in the ``rotate_half`` layout, grouped-query attention): the graph
is :func:`architectures.llama.llama_graph` of the configuration read from the HF config, with
biases and the untied ``lm_head`` read from the model's own state-dict keys (Qwen2's ``q/k/v``
biases, Llama's ``attention_bias`` and ``mlp_bias``). A tied ``lm_head`` listed in the state dict
reads the stream (the residual admits permutations, for which reading and writing agree).
``transformers`` is imported only when :func:`hf_llama` is called (extra ``[hf]``).

HF computes RMSNorm and the attention softmax in float32 even for a float64 model, so its float64
logits carry float32 round-off; :func:`architectures.llama` computes the same function in the
model's dtype. :func:`architectures.fold_rmsnorm` accepts these architectures and returns the
folded :func:`architectures.llama` (its residual admits ``Orthogonal``) for the default rotary
frequencies; other ``rope_type`` values have no counterpart there and are refused.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from symmetries._args import integer, real

from architectures.architecture import Architecture
from architectures.llama import GQA, llama_graph

__all__ = ["hf_llama", "hf_llama_config", "FAMILIES"]

#: ``model_type`` → (config class, causal-LM class) names in ``transformers``.
FAMILIES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
            "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}


def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("architectures.hf_llama needs the optional extra: pip install 'symmetries[hf]'") from err
    return transformers


def hf_llama_config(config: Any = None, family: str = "llama", **overrides):
    """A config of ``family`` (``"llama"``, ``"mistral"``, ``"qwen2"``) from a config, a model, a dict of
    fields or keyword arguments; attention dropout 0 and eager attention (for exact checks)."""
    tf = _transformers()
    if hasattr(config, "config") and hasattr(config, "state_dict"):  # a model
        config = config.config
    if config is not None and not isinstance(config, dict):
        family = getattr(config, "model_type", family)
    if family not in FAMILIES:
        raise ValueError(f"hf_llama supports the model types {sorted(FAMILIES)}, got {family!r}")
    cls = getattr(tf, FAMILIES[family][0])
    if config is None or isinstance(config, dict):
        config = cls(**{**(config or {}), **overrides})
    else:
        config = copy.deepcopy(config)
        for k, v in overrides.items():
            setattr(config, k, v)
    config.attention_dropout = 0.0
    config._attn_implementation = "eager"
    return config


def _model_class(config):
    return getattr(_transformers(), FAMILIES[config.model_type][1])


def _rope(config) -> tuple[float, str]:
    rp = dict(getattr(config, "rope_parameters", None) or {})
    theta = rp.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    if float(rp.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("a partial rotary embedding leaves some units of each head unrotated: not supported")
    return float(theta), str(rp.get("rope_type", "default"))


def _window(config) -> int | None:
    if config.model_type == "qwen2":
        if getattr(config, "use_sliding_window", False):
            raise ValueError("Qwen2 with use_sliding_window=True has no counterpart in architectures.llama")
        return None
    w = getattr(config, "sliding_window", None)
    return None if w is None else int(w)


def hf_llama(config: Any = None, *, family: str = "llama", gqa: str = "grouped", **overrides) -> Architecture:
    """``Architecture`` for the causal LM of ``config`` (a Llama, Mistral or Qwen2 config, a model, a
    dict of fields or keyword arguments of ``family``'s config): its graph on HF's names, and
    ``.module()`` the HF model in eval mode. ``gqa`` as in :func:`architectures.llama`. Activations
    other than SiLU and partial rotary embeddings raise ``ValueError``."""
    config = hf_llama_config(config, family, **overrides)
    if config.hidden_act != "silu":
        raise ValueError(f"hidden_act={config.hidden_act!r}: the Llama-family graph declares SiLU (SwiGLU) units")
    theta, rope_type = _rope(config)
    d, h = integer("hidden_size", config.hidden_size), integer("num_attention_heads", config.num_attention_heads)
    kv = config.num_key_value_heads if getattr(config, "num_key_value_heads", None) is not None else h
    d_head = getattr(config, "head_dim", None) or d // h
    with torch.device("meta"):
        keys = list(_model_class(config)(config).state_dict())
    layer = "model.layers.0"
    cfg = dict(kind="llama", vocab_size=integer("vocab_size", config.vocab_size), d_model=d, n_heads=h,
               n_kv_heads=integer("num_key_value_heads", kv), n_layers=integer("num_hidden_layers",
                                                                           config.num_hidden_layers, 0),
               d_mlp=integer("intermediate_size", config.intermediate_size),
               context=min(int(getattr(config, "max_position_embeddings", 16)), 16),
               d_head=integer("head_dim", d_head), rope_theta=theta, eps=real("rms_norm_eps", config.rms_norm_eps),
               qkv_bias=f"{layer}.self_attn.q_proj.bias" in keys, o_bias=f"{layer}.self_attn.o_proj.bias" in keys,
               mlp_bias=f"{layer}.mlp.gate_proj.bias" in keys, tie_embeddings="lm_head.weight" not in keys,
               norm_gain=True, norm_dim=None, gqa=gqa, sliding_window=_window(config))
    if h % cfg["n_kv_heads"] or cfg["d_head"] % 2 or gqa not in GQA:
        raise ValueError(f"need n_heads % n_kv_heads == 0, an even head_dim and gqa in {GQA}; got "
                         f"{h}, {cfg['n_kv_heads']}, {cfg['d_head']}, {gqa!r}")
    g = llama_graph(cfg, f"hf-{config.model_type}(d={d}, heads={h}/{cfg['n_kv_heads']}, layers={cfg['n_layers']})")
    unknown = set(keys) - {p.name for p in g.parameters()}
    if unknown:
        raise ValueError(f"{FAMILIES[config.model_type][1]} has state-dict entries this graph does not know: "
                         f"{sorted(unknown)}")
    model_cls = _model_class(config)
    n_tokens, vocab = cfg["context"], cfg["vocab_size"]
    return Architecture(g.name, g, lambda: model_cls(config).eval(),
                        dict(kind="hf_llama", config=config.to_dict(), llama=cfg, rope_type=rope_type),
                        inputs=lambda batch, generator, dtype: torch.randint(0, vocab, (batch, n_tokens),
                                                                             generator=generator))
