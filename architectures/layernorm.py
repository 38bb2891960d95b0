"""The LayerNorm → RMSNorm rewrite that makes the residual stream's orthogonal symmetry exact.

With the centring ``M = I − 11ᵀ/D`` and the gain-free normaliser ``N(y) = y / √(‖y‖²/D + ε)``,

    LayerNorm(z) = N(z M) · diag(γ) + β        (PyTorch's biased variance: ‖zM‖²/D = Var z).

Centring every **writer** of the stream (``W ← M W`` on its stream axis: embeddings, position
embeddings, class token, patch embedding, attention ``o``, MLP ``proj``, weights and biases)
makes the stream itself centred, ``x̃ = x M``; folding each norm's gain and bias into the
**readers** it feeds (``W ← W diag(γ)``, ``b ← b + W β``: ``q``/``k``/``v`` or ``qkv`` and
``mlp.fc`` after ``ln_1``/``ln_2``, the unembedding or classifier after the final norm) leaves
``N`` without parameters. The result computes the same function, and since
``N(O y) = O N(y)`` for every ``O`` with orthonormal columns it admits ``Orthogonal`` at the
residual stream. ``N`` keeps the original constant ``D`` (``norm_dim``) so that a rectangular
``O`` that widens the stream to ``D' > D`` is exact as well (:func:`architectures.rebuild` builds
the wider model). Tied embeddings are untied: the writer becomes ``wte M`` and the new
unembedding ``head`` = ``wte diag(γ_f)`` with bias ``wte β_f``.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from symmetries.roles import Role

from architectures.architecture import Architecture
from architectures.transformer import RESIDUAL, rebuild

__all__ = ["rewrite_layernorm", "norm_readers"]


def norm_readers(arch: Architecture) -> dict[str, list[str]]:
    """Each LayerNorm's parameter prefix → the linear layers (prefixes) that read its output."""
    cfg = arch.config
    readers: dict[str, list[str]] = {}
    for i in range(cfg["n_layers"]):
        a = f"blocks.{i}.attn"
        readers[f"blocks.{i}.ln_1"] = [f"{a}.qkv"] if cfg["packed_qkv"] else [f"{a}.q", f"{a}.k", f"{a}.v"]
        readers[f"blocks.{i}.ln_2"] = [f"blocks.{i}.mlp.fc"]
    if cfg["kind"] == "gpt2":
        readers["ln_f"] = ["wte" if cfg["tie_embeddings"] else "head"]
    else:
        readers["norm"] = ["head"]
    return readers


def rewrite_layernorm(arch: Architecture, params: Mapping[str, torch.Tensor] | nn.Module
                      ) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """``(arch', θ')``: the same transformer with every LayerNorm replaced by the gain-free
    normaliser, its residual space admitting ``Orthogonal``, and ``f_{arch'}(θ') = f_arch(θ)``.

    ``arch`` is a LayerNorm model from :func:`architectures.gpt2` or :func:`architectures.vit`,
    or an :func:`architectures.hf_gpt2` model (first moved into :func:`architectures.gpt2` by
    :func:`architectures.hf_gpt2.hf_to_gpt2`); ``params`` its state dict (or the module).
    Arithmetic is done in float64 and each tensor is returned in its own dtype and device; the input is not modified.
    """
    if arch.config.get("kind") == "hf_gpt2":
        from architectures.hf_gpt2 import hf_to_gpt2
        arch, params = hf_to_gpt2(arch, params)
    cfg = arch.config
    if cfg.get("kind") not in ("gpt2", "vit"):
        raise TypeError(f"{arch.name!r} was not built by architectures.gpt2 or architectures.vit")
    if cfg["norm"] != "layernorm":
        raise ValueError(f"{arch.name!r} has norm={cfg['norm']!r}: there is no LayerNorm to rewrite")
    if isinstance(params, nn.Module):
        params = params.state_dict()
    arch.graph.validate(params)
    p64 = {k: v.detach().to(torch.float64) for k, v in params.items()}
    out: dict[str, torch.Tensor] = {}

    changes: dict = dict(norm="rms", norm_dim=cfg["d_model"])
    if cfg["kind"] == "gpt2":
        changes.update(tie_embeddings=False, head_bias=True)
    new_arch = rebuild(arch, **changes)

    for norm, layers in norm_readers(arch).items():
        gamma, beta = p64[f"{norm}.weight"], p64[f"{norm}.bias"]
        for layer in layers:
            w = p64[f"{layer}.weight"]
            new = "head" if layer == "wte" else layer
            bias = p64.get(f"{layer}.bias", torch.zeros(w.shape[0], dtype=torch.float64))
            out[f"{new}.weight"] = w * gamma          # W diag(γ)
            out[f"{new}.bias"] = bias + w @ beta      # b + W β

    norm_params = {f"{n}.{p}" for n in norm_readers(arch) for p in ("weight", "bias")}
    for e in arch.graph.edges_at(RESIDUAL):
        if e.role is not Role.OUT or e.parameter in norm_params:
            continue
        x = p64[e.parameter]
        out[e.parameter] = x - x.mean(dim=e.axis, keepdim=True)   # M applied along the stream axis

    names = {p.name for p in new_arch.graph.parameters()}
    for k in names - set(out):
        out[k] = p64[k]
    ref = next(iter(params.values()))
    result = {k: out[k].to(dtype=params[k].dtype if k in params else ref.dtype,
                           device=params[k].device if k in params else ref.device) for k in sorted(names)}
    new_arch.graph.validate(result)
    return new_arch, result
