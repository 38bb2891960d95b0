"""The weight graph of Hugging Face ``transformers``' ``GPT2LMHeadModel`` (optional extra ``[hf]``).

Same spaces as :func:`architectures.gpt2`, on HF's parameter names and layouts. HF's ``Conv1D``
stores weights as ``(in, out)``, so the axes swap: ``c_attn.weight`` ``(D, 3D)`` reads the
``residual`` on axis 0 and carries Q (``qk``, out), K (``qk``, in) and V (``vo``, out) as slices
of axis 1; ``attn.c_proj.weight`` ``(D, D)`` reads ``vo`` on axis 0 and writes the stream on axis
1; ``mlp.c_fc`` / ``mlp.c_proj`` likewise. ``lm_head.weight`` (tied to ``wte`` in the module, a
separate state-dict key) reads the stream; ``residual`` admits ``Permutation`` (LayerNorm), for
which reading and writing agree, so the two keys stay equal. Attention mask buffers
(``attn.bias``, ``attn.masked_bias``) are declared fixed when the state dict holds them.
:func:`hf_to_gpt2` moves such a model into :func:`architectures.gpt2` (packed, tied), which is
how :func:`architectures.rewrite_layernorm` rewrites it. ``transformers`` is imported only when
:func:`hf_gpt2` is called.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from symmetries.classes import HeadStructured, Invertible, Permutation

from symmetries._args import integer, real
from architectures.activations import ACTIVATIONS
from architectures.architecture import Architecture
from symmetries.graph import WeightGraph
from architectures.transformer import RESIDUAL, gpt2

__all__ = ["hf_gpt2", "hf_gpt2_config", "hf_to_gpt2"]


def hf_gpt2_config(config: Any = None, **overrides):
    """A ``GPT2Config`` for exact checks: eager attention, every dropout 0 (from a config, a dict
    of its fields, or keyword arguments)."""
    try:
        from transformers import GPT2Config
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("architectures.hf_gpt2 needs the optional extra: pip install 'symmetries[hf]'") from err
    if config is None:
        config = GPT2Config(**overrides)
    elif isinstance(config, dict):
        config = GPT2Config(**{**config, **overrides})
    else:
        config = copy.deepcopy(config)
        for k, v in overrides.items():
            setattr(config, k, v)
    for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"):
        setattr(config, k, 0.0)
    config._attn_implementation = "eager"
    return config


def _state_keys(config) -> list[str]:
    from transformers import GPT2LMHeadModel
    with torch.device("meta"):
        return list(GPT2LMHeadModel(config).state_dict())


def _make(config):
    from transformers import GPT2LMHeadModel
    return GPT2LMHeadModel(config).eval()


def hf_gpt2(config: Any = None, **overrides) -> Architecture:
    """``Architecture`` for ``GPT2LMHeadModel(config)`` (see :func:`hf_gpt2_config`); its
    ``.module()`` is the HF model in eval mode and its state-dict keys are the graph's names.
    The config's sizes must be positive integers (``n_layer`` ≥ 0) and ``layer_norm_epsilon`` ≥ 0
    (``ValueError`` naming the field)."""
    config = hf_gpt2_config(config, **overrides)
    d, h = integer("n_embd", config.n_embd), integer("n_head", config.n_head)
    v, n_positions = integer("vocab_size", config.vocab_size), integer("n_positions", config.n_positions)
    n_layer = integer("n_layer", config.n_layer, 0)
    real("layer_norm_epsilon", config.layer_norm_epsilon)
    if d % h:
        raise ValueError(f"n_embd={d} is not a multiple of n_head={h}")
    d_mlp = integer("n_inner", config.n_inner) if config.n_inner is not None else 4 * d
    act = ACTIVATIONS.get(str(config.activation_function))
    mlp_classes = act.classes if act is not None else (Permutation(),)  # HF's GELU variants: elementwise
    keys = _state_keys(config)

    g = WeightGraph(f"hf-gpt2(d={d}, heads={h}, layers={config.n_layer})")
    g.add_space(RESIDUAL, d, Permutation())

    def param(name, shape, *edges):
        g.add_parameter(name, shape)
        for space, axis, role, sl in edges:
            g.connect(name, space, axis=axis, role=role, slice=sl)

    def norm(prefix):
        param(f"{prefix}.weight", (d,), (RESIDUAL, 0, "out", None))
        param(f"{prefix}.bias", (d,), (RESIDUAL, 0, "out", None))

    param("transformer.wte.weight", (v, d), (RESIDUAL, 1, "out", None))
    param("transformer.wpe.weight", (n_positions, d), (RESIDUAL, 1, "out", None))
    heads = HeadStructured(h, Invertible())
    for i in range(n_layer):
        b = f"transformer.h.{i}"
        qk, vo, mlp = f"{b}.attn.qk", f"{b}.attn.vo", f"{b}.mlp"
        g.add_space(qk, d, heads, head_group=f"{b}.attn")
        g.add_space(vo, d, heads, head_group=f"{b}.attn")
        g.add_space(mlp, d_mlp, mlp_classes, activation=act.name if act is not None else config.activation_function)
        norm(f"{b}.ln_1")
        slices = [(qk, "out", (0, d)), (qk, "in", (d, 2 * d)), (vo, "out", (2 * d, 3 * d))]
        param(f"{b}.attn.c_attn.weight", (d, 3 * d), (RESIDUAL, 0, "in", None),
              *[(s, 1, r, sl) for s, r, sl in slices])
        param(f"{b}.attn.c_attn.bias", (3 * d,), *[(s, 0, r, sl) for s, r, sl in slices])
        param(f"{b}.attn.c_proj.weight", (d, d), (vo, 0, "in", None), (RESIDUAL, 1, "out", None))
        param(f"{b}.attn.c_proj.bias", (d,), (RESIDUAL, 0, "out", None))
        for buf in ("bias", "masked_bias"):
            if f"{b}.attn.{buf}" in keys:
                g.add_parameter(f"{b}.attn.{buf}", fixed=True)
        norm(f"{b}.ln_2")
        param(f"{mlp}.c_fc.weight", (d, d_mlp), (RESIDUAL, 0, "in", None), (mlp, 1, "out", None))
        param(f"{mlp}.c_fc.bias", (d_mlp,), (mlp, 0, "out", None))
        param(f"{mlp}.c_proj.weight", (d_mlp, d), (mlp, 0, "in", None), (RESIDUAL, 1, "out", None))
        param(f"{mlp}.c_proj.bias", (d,), (RESIDUAL, 0, "out", None))
    norm("transformer.ln_f")
    if "lm_head.weight" in keys:
        param("lm_head.weight", (v, d), (RESIDUAL, 1, "in", None))
    missing = set(keys) - {p.name for p in g.parameters()}
    if missing:
        raise ValueError(f"GPT2LMHeadModel has state-dict entries this graph does not know: {sorted(missing)}")
    g.validate()
    n_tokens, vocab = min(int(config.n_positions), 16), int(config.vocab_size)  # a real GPT-2 has 1024 positions
    return Architecture(g.name, g, lambda: _make(config), dict(kind="hf_gpt2", config=config.to_dict()),
                        inputs=lambda batch, generator, dtype: torch.randint(0, vocab, (batch, n_tokens),
                                                                             generator=generator))


#: HF activation names → the GELU variant of :func:`architectures.gpt2` computing the same function.
_HF_GELUS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def hf_to_gpt2(arch: Architecture, params) -> tuple[Architecture, dict]:
    """``(gpt2, θ)``: the same network as the HF model ``arch`` with state dict ``params``, as
    :func:`architectures.gpt2` with ``packed_qkv=True, tie_embeddings=True`` (Conv1D weights
    transposed to ``(out, in)``). Raises ``ValueError`` for configurations it does not compute
    identically (other activations, ``scale_attn_by_inverse_layer_idx``, unscaled attention)."""
    if arch.config.get("kind") != "hf_gpt2":
        raise TypeError(f"{arch.name!r} was not built by architectures.hf_gpt2")
    c = arch.config["config"]
    if c["activation_function"] not in _HF_GELUS:
        raise ValueError(f"activation_function={c['activation_function']!r} has no exact counterpart in "
                         f"architectures.gpt2 (supported: {sorted(_HF_GELUS)})")
    if c.get("scale_attn_by_inverse_layer_idx") or not c.get("scale_attn_weights", True):
        raise ValueError("only the default attention scaling 1/√d_head has a counterpart in architectures.gpt2")
    if not c.get("tie_word_embeddings", True):
        raise ValueError("an untied lm_head has no counterpart in architectures.gpt2(tie_embeddings=True)")
    if hasattr(params, "state_dict"):
        params = params.state_dict()
    arch.graph.validate(params)
    d = int(c["n_embd"])
    own = gpt2(c["vocab_size"], c["n_positions"], d, c["n_head"], c["n_layer"],
               c["n_inner"] if c.get("n_inner") is not None else 4 * d, packed_qkv=True, tie_embeddings=True,
               eps=c["layer_norm_epsilon"], activation=_HF_GELUS[c["activation_function"]])
    out = {"wte.weight": params["transformer.wte.weight"], "wpe.weight": params["transformer.wpe.weight"],
           "ln_f.weight": params["transformer.ln_f.weight"], "ln_f.bias": params["transformer.ln_f.bias"]}
    pairs = [("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.qkv", "attn.c_attn"), ("attn.o", "attn.c_proj"),
             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")]
    for i in range(int(c["n_layer"])):
        for mine, theirs in pairs:
            for t in ("weight", "bias"):
                x = params[f"transformer.h.{i}.{theirs}.{t}"]
                out[f"blocks.{i}.{mine}.{t}"] = x.T.contiguous() if x.dim() == 2 else x
    own.graph.validate(out)
    return own, out
