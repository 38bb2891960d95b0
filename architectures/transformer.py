"""GPT-2-style and ViT-style transformers as weight graphs.

Spaces of a model with ``L`` blocks, ``H`` heads of width ``d`` and stream width ``D``:

* ``residual`` (``D``) — one space for the whole stream. Writers (role ``out``): token /
  position embeddings, patch embedding, class token (along their embedding axis), every
  attention output ``o`` and MLP ``proj`` (weight axis 0 and bias). Readers (role ``in``, axis
  1): ``q``, ``k``, ``v`` (or packed ``qkv``), MLP ``fc``, the unembedding / classifier ``head``.
  With ``LayerNorm`` it admits ``Permutation`` only (LayerNorm's gain and bias follow the
  channel); with the gain-free normaliser of the rewrite (:mod:`architectures.layernorm`) it
  admits ``Orthogonal`` (``W_out ← O W_out``, ``W_in ← W_in Oᵀ``).
* ``blocks.i.attn.qk`` and ``blocks.i.attn.vo`` (``H·d``), tied by the head group
  ``blocks.i.attn`` (one head permutation for Q, K, V, O), each ``HeadStructured(H,
  Invertible())``: ``W_Q,h ← A_h W_Q,h`` (out), ``W_K,h ← A_h⁻ᵀ W_K,h`` (in, same axis),
  ``W_V,h ← B_h W_V,h`` (out), ``W_O,h ← W_O,h B_h⁻¹`` (in); biases of q, v out, of k in.
  Packed ``qkv`` carries the three as slices ``[0, Hd)``, ``[Hd, 2Hd)``, ``[2Hd, 3Hd)`` of axis 0.
* ``blocks.i.mlp`` (``d_mlp``) — GELU units (``activation``: ``"gelu"`` exact, ``"gelu_tanh"``
  its tanh approximation): ``Permutation``.
"""
from __future__ import annotations

import torch

from symmetries.errors import ArgumentError
from symmetries.classes import HeadStructured, Invertible, Orthogonal, Permutation

from symmetries._args import integer, real
from architectures.architecture import Architecture, randn
from symmetries.graph import WeightGraph
from architectures.transformer_modules import GELUS, GPT, ViT

__all__ = ["gpt2", "vit", "rebuild", "example_inputs", "RESIDUAL"]

#: Name of the residual-stream space.
RESIDUAL = "residual"


def _config(d_model, n_heads, n_layers, d_mlp, packed_qkv, norm, norm_dim, d_head, eps, activation) -> dict:
    """The checked configuration shared by :func:`gpt2` and :func:`vit` (``d_mlp=None``: 4·d_model)."""
    d_model, n_heads = integer("d_model", d_model), integer("n_heads", n_heads)
    n_layers = integer("n_layers", n_layers, 0)
    d_mlp = 4 * d_model if d_mlp is None else integer("d_mlp", d_mlp)
    if d_head is None:
        if d_model % n_heads:
            raise ArgumentError(f"d_model={d_model} is not a multiple of n_heads={n_heads}; pass d_head",
                                argument="d_model")
        d_head = d_model // n_heads
    d_head = integer("d_head", d_head)
    if norm_dim is not None:
        norm_dim = integer("norm_dim", norm_dim)
    if activation not in GELUS:
        raise ArgumentError(f"activation must be one of {sorted(GELUS)}, got {activation!r}", argument="activation")
    if norm not in ("layernorm", "rms"):
        raise ArgumentError(f"norm must be 'layernorm' or 'rms', got {norm!r}", argument="norm")
    return dict(d_model=d_model, n_heads=n_heads, n_layers=n_layers, d_mlp=d_mlp, packed_qkv=bool(packed_qkv),
                norm=norm, norm_dim=norm_dim if norm_dim is not None and norm == "rms" else d_model,
                d_head=d_head, eps=real("eps", eps), activation=activation)


def _norm(g: WeightGraph, prefix: str, cfg: dict) -> None:
    if cfg["norm"] == "layernorm":
        for p in ("weight", "bias"):
            g.add_parameter(f"{prefix}.{p}", (cfg["d_model"],))
            g.connect(f"{prefix}.{p}", RESIDUAL, axis=0, role="out")


def _linear(g: WeightGraph, name: str, n_out: int, n_in: int, out: str | None, inp: str | None,
            bias: bool = True, out_role: str = "out") -> None:
    """``name.weight`` (n_out, n_in) writes ``out`` (axis 0, ``out_role``) and reads ``inp`` (axis 1)."""
    g.add_parameter(f"{name}.weight", (n_out, n_in))
    if bias:
        g.add_parameter(f"{name}.bias", (n_out,), fixed=out is None)
    if out is not None:
        g.connect(f"{name}.weight", out, axis=0, role=out_role)
        if bias:
            g.connect(f"{name}.bias", out, axis=0, role=out_role)
    if inp is not None:
        g.connect(f"{name}.weight", inp, axis=1, role="in")


def _attention(g: WeightGraph, prefix: str, cfg: dict) -> None:
    h, inner, d = cfg["n_heads"], cfg["n_heads"] * cfg["d_head"], cfg["d_model"]
    qk, vo = f"{prefix}.qk", f"{prefix}.vo"
    heads = HeadStructured(h, Invertible())
    g.add_space(qk, inner, heads, head_group=prefix)
    g.add_space(vo, inner, heads, head_group=prefix)
    if cfg["packed_qkv"]:
        g.add_parameter(f"{prefix}.qkv.weight", (3 * inner, d))
        g.add_parameter(f"{prefix}.qkv.bias", (3 * inner,))
        g.connect(f"{prefix}.qkv.weight", RESIDUAL, axis=1, role="in")
        for p in ("weight", "bias"):
            for (start, space, role) in ((0, qk, "out"), (inner, qk, "in"), (2 * inner, vo, "out")):
                g.connect(f"{prefix}.qkv.{p}", space, axis=0, role=role, slice=(start, start + inner))
    else:
        _linear(g, f"{prefix}.q", inner, d, qk, RESIDUAL)
        _linear(g, f"{prefix}.k", inner, d, qk, RESIDUAL, out_role="in")
        _linear(g, f"{prefix}.v", inner, d, vo, RESIDUAL)
    _linear(g, f"{prefix}.o", d, inner, RESIDUAL, vo)


def _blocks(g: WeightGraph, cfg: dict) -> None:
    d = cfg["d_model"]
    for i in range(cfg["n_layers"]):
        b = f"blocks.{i}"
        _norm(g, f"{b}.ln_1", cfg)
        _attention(g, f"{b}.attn", cfg)
        _norm(g, f"{b}.ln_2", cfg)
        g.add_space(f"{b}.mlp", cfg["d_mlp"], Permutation(), activation="gelu")
        _linear(g, f"{b}.mlp.fc", cfg["d_mlp"], d, f"{b}.mlp", RESIDUAL)
        _linear(g, f"{b}.mlp.proj", d, cfg["d_mlp"], RESIDUAL, f"{b}.mlp")


def _residual(g: WeightGraph, cfg: dict) -> None:
    cls = Permutation() if cfg["norm"] == "layernorm" else Orthogonal()
    g.add_space(RESIDUAL, cfg["d_model"], cls)


def gpt2(vocab_size: int, n_positions: int, d_model: int, n_heads: int, n_layers: int, d_mlp: int | None = None,
         *, packed_qkv: bool = False, tie_embeddings: bool = False, head_bias: bool = False,
         norm: str = "layernorm", norm_dim: int | None = None, d_head: int | None = None,
         eps: float = 1e-5, activation: str = "gelu") -> Architecture:
    """A GPT-2-style pre-norm causal decoder: ``logits = head(N_f(x_L))``, ``x_0 = wte[ids] + wpe[pos]``.

    ``tie_embeddings`` reads the stream with ``wte`` itself (its axis 1 both writes and reads
    ``residual``, which the graph then restricts to ``T⁻ᵀ = T``). ``norm="rms"`` builds the
    rewritten form (gain-free normaliser with constant ``norm_dim``, default ``d_model``).
    Sizes are positive integers (``n_layers`` ≥ 0) and ``eps`` ≥ 0; invalid arguments raise
    ``ValueError`` naming them.
    """
    cfg = _config(d_model, n_heads, n_layers, d_mlp, packed_qkv, norm, norm_dim, d_head, eps, activation)
    cfg.update(kind="gpt2", vocab_size=integer("vocab_size", vocab_size),
               n_positions=integer("n_positions", n_positions), tie_embeddings=bool(tie_embeddings),
               head_bias=bool(head_bias))
    if tie_embeddings and head_bias:
        raise ArgumentError("tie_embeddings=True has no separate head to carry head_bias", argument="head_bias")
    d = cfg["d_model"]
    g = WeightGraph(f"gpt2(d={d}, heads={cfg['n_heads']}, layers={cfg['n_layers']}, norm={norm}"
                    + (", packed" if packed_qkv else "") + (", tied" if tie_embeddings else "") + ")")
    _residual(g, cfg)
    g.add_parameter("wte.weight", (cfg["vocab_size"], d))
    g.connect("wte.weight", RESIDUAL, axis=1, role="out")
    if tie_embeddings:
        g.connect("wte.weight", RESIDUAL, axis=1, role="in")
    g.add_parameter("wpe.weight", (cfg["n_positions"], d))
    g.connect("wpe.weight", RESIDUAL, axis=1, role="out")
    _blocks(g, cfg)
    _norm(g, "ln_f", cfg)
    if not tie_embeddings:
        _linear(g, "head", cfg["vocab_size"], d, None, RESIDUAL, bias=cfg["head_bias"])
    g.validate()
    return Architecture(g.name, g, lambda: GPT(cfg), cfg, inputs=lambda batch, generator, dtype: torch.randint(
        0, cfg["vocab_size"], (batch, cfg["n_positions"]), generator=generator))


def vit(image_size: int, patch_size: int, channels: int, d_model: int, n_heads: int, n_layers: int,
        d_mlp: int | None = None, num_classes: int = 10, *, packed_qkv: bool = False, norm: str = "layernorm",
        norm_dim: int | None = None, d_head: int | None = None, eps: float = 1e-5,
        activation: str = "gelu") -> Architecture:
    """A ViT-style pre-norm encoder: ``logits = head(N(x_L)[cls])`` with
    ``x_0 = [cls_token; patch_embed(patches)] + pos_embed``. Sizes are positive integers
    (``n_layers`` ≥ 0, ``patch_size`` dividing ``image_size``) and ``eps`` ≥ 0; invalid arguments
    raise ``ValueError`` naming them."""
    image_size, patch_size = integer("image_size", image_size), integer("patch_size", patch_size)
    if image_size % patch_size:
        raise ArgumentError(f"image_size={image_size} is not a multiple of patch_size={patch_size}",
                            argument="image_size")
    cfg = _config(d_model, n_heads, n_layers, d_mlp, packed_qkv, norm, norm_dim, d_head, eps, activation)
    cfg.update(kind="vit", image_size=image_size, patch_size=patch_size, channels=integer("channels", channels),
               num_classes=integer("num_classes", num_classes))
    d, p = cfg["d_model"], cfg["patch_size"]
    n_tokens = (cfg["image_size"] // p) ** 2 + 1
    g = WeightGraph(f"vit(d={d}, heads={cfg['n_heads']}, layers={cfg['n_layers']}, norm={norm}"
                    + (", packed" if packed_qkv else "") + ")")
    _residual(g, cfg)
    _linear(g, "patch_embed", d, cfg["channels"] * p * p, RESIDUAL, None)
    g.add_parameter("cls_token", (1, 1, d))
    g.connect("cls_token", RESIDUAL, axis=2, role="out")
    g.add_parameter("pos_embed", (1, n_tokens, d))
    g.connect("pos_embed", RESIDUAL, axis=2, role="out")
    _blocks(g, cfg)
    _norm(g, "norm", cfg)
    _linear(g, "head", cfg["num_classes"], d, None, RESIDUAL)
    g.validate()
    return Architecture(g.name, g, lambda: ViT(cfg), cfg, inputs=lambda batch, generator, dtype: randn(
        generator, dtype, batch, cfg["channels"], cfg["image_size"], cfg["image_size"]))


_BUILDERS = {"gpt2": gpt2, "vit": vit}


def rebuild(arch: Architecture, **changes) -> Architecture:
    """The same kind of transformer as ``arch`` (built by :func:`gpt2` or :func:`vit`) with some
    configuration entries changed, e.g. ``rebuild(rewritten, d_model=24)`` for a stream widened
    by a rectangular orthogonal map (``norm_dim`` and ``d_head`` are kept)."""
    cfg = dict(arch.config)
    kind = cfg.pop("kind", None)
    if kind not in _BUILDERS:
        raise TypeError(f"{arch.name!r} was not built by architectures.gpt2 or architectures.vit")
    unknown = set(changes) - set(cfg)
    if unknown:
        raise TypeError(f"unknown configuration entries {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(changes)
    return _BUILDERS[kind](**cfg)


def example_inputs(arch: Architecture, batch: int = 2, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Seeded inputs for a :func:`gpt2` (token ids ``(batch, n_positions)``) or :func:`vit`
    (images ``(batch, channels, size, size)`` of ``dtype``) model."""
    if arch.config.get("kind") not in ("gpt2", "vit"):
        raise TypeError(f"{arch.name!r} was not built by architectures.gpt2 or architectures.vit")
    return arch.example_inputs(batch, seed=seed, dtype=dtype)
