"""Llama-family decoders (Llama, Mistral, Qwen2 layout) as weight graphs, and the RMSNorm gain fold.

The module (:class:`Llama`) computes what Hugging Face's ``LlamaForCausalLM`` computes, on its
state-dict names (``model.embed_tokens``, ``model.layers.i.self_attn.{q,k,v,o}_proj``,
``model.layers.i.mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``,
``model.norm``, ``lm_head``), but in the module's own dtype throughout (HF upcasts RMSNorm and
softmax to float32). Block ``i``: ``x ← x + o(Attn(RoPE(q(N₁x)), RoPE(k(N₁x)), v(N₁x)))``,
``x ← x + down(SiLU(gate(N₂x)) ⊙ up(N₂x))``; logits ``lm_head(N_f x)``. ``N`` is RMSNorm
``γ ⊙ y / √(mean(y²) + ε)``. Rotary pairs are ``(i, i + d/2)`` (``rotate_half``); key/value head
``g`` serves query heads ``g·R … g·R + R − 1`` (``R = n_heads / n_kv_heads``, ``repeat_kv``).

Spaces (``L`` layers, ``H`` query heads, ``G`` key/value heads of width ``d``):

* ``residual`` (``D``): ``Permutation`` while the norms carry gains (each gain follows its
  channel, role ``out``); after :func:`fold_rmsnorm` (gains folded into the readers, gain-free
  ``y / √(‖y‖²/D₀ + ε)`` with constant ``D₀``) ``Orthogonal``. Writers: ``embed_tokens`` (axis 1),
  ``o_proj``, ``down_proj`` (axis 0); readers: ``q/k/v_proj``, ``gate/up_proj``, ``lm_head`` (axis 1).
* ``layers.i.attn.qk`` (``G·d``) ``HeadStructured(G, Rotary())``: ``k`` rows in and ``q`` rows out
  (``W_Q,h ← A_g W_Q,h``, ``W_K,g ← A_g⁻ᵀ W_K,g`` with ``A_g`` commuting with every rotation), and
  ``layers.i.attn.vo`` (``G·d``) ``HeadStructured(G, Invertible())``: ``v`` rows out, ``o`` columns in;
  one head group. With ``G < H`` (grouped-query, ``gqa="grouped"``, the default) the ``q`` rows and
  ``o`` columns hold the group's space once per query head: laid out ``(G, R, d)``, they are
  repeated edges ``repeat=(R, d)`` — one map per group, the same on its ``R`` query heads (forced:
  ``qₕᵀ Aₕᵀ M A_g⁻ᵀ k = qₕᵀ M k`` for every ``M`` only if ``Aₕ = A_g``), and the head permutation
  moves whole groups. ``G = H`` is multi-head attention (no repeat). Left out: the permutations of
  query heads inside a group (``q`` rows and ``o`` columns only), which would act on the ``q`` rows a
  second time, beside the group's map — one index of an axis belongs to one space.
* older declarations of a part, still accepted: ``gqa="heads"``: ``layers.i.attn.q`` (``q`` rows and
  ``o`` columns, ``H·d``) and ``layers.i.attn.kv`` (``k`` and ``v`` rows, ``G·d``), each
  ``HeadStructured(G, Trivial())`` in one head group (the group permutation alone); ``gqa="maps"``:
  per group ``g`` the spaces ``layers.i.attn.qk.g`` (``Rotary``: the group's ``R`` query-head slices
  out, its key head in) and ``layers.i.attn.vo.g`` (``Invertible``: value head out, the group's ``o``
  column slices in), without head permutations.
* ``layers.i.mlp`` (``d_mlp``): ``Permutation`` shared by ``gate`` and ``up`` (out) and ``down``
  (in). SiLU admits only permutations; the extra per-unit scaling ``up ← D up``,
  ``down ← down D⁻¹`` (exact, since ``SiLU(g) ⊙ (D u)`` is linear in ``u``) is not declared: the
  space would have to act on ``gate`` and ``up`` by different maps.
"""
from __future__ import annotations

import torch
from torch import nn

from symmetries._args import integer, real
from symmetries.classes import HeadStructured, Invertible, Orthogonal, Permutation, Rotary, Trivial
from symmetries.graph import WeightGraph

from architectures.architecture import Architecture

__all__ = ["llama", "Llama", "RMSNorm", "fold_rmsnorm", "llama_graph", "RESIDUAL", "GQA"]

RESIDUAL = "residual"
#: What the graph declares of a grouped-query attention (module docstring); the first is the default.
GQA = ("grouped", "heads", "maps")


class RMSNorm(nn.Module):
    """``γ ⊙ y / √(‖y‖²/D₀ + ε)`` (``gain=False``: no ``γ``); ``D₀`` is the width unless ``norm_dim`` fixes it."""

    def __init__(self, d: int, eps: float, gain: bool = True, norm_dim: int | None = None):
        super().__init__()
        self.eps, self.norm_dim = float(eps), int(norm_dim or d)
        self.weight = nn.Parameter(torch.ones(d)) if gain else None

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y / torch.sqrt(y.pow(2).sum(-1, keepdim=True) / self.norm_dim + self.eps)
        return y if self.weight is None else self.weight * y


def rope_tables(t: int, d: int, theta: float, dtype, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of shape ``(t, d)`` as HF computes them (float32 frequencies, ``cat(f, f)``)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    freqs = torch.arange(t, device=device).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, h, g, dh = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["d_head"]
        self.h, self.g, self.dh, self.theta = h, g, dh, cfg["rope_theta"]
        self.window = cfg.get("sliding_window")
        self.q_proj = nn.Linear(d, h * dh, bias=cfg["qkv_bias"])
        self.k_proj = nn.Linear(d, g * dh, bias=cfg["qkv_bias"])
        self.v_proj = nn.Linear(d, g * dh, bias=cfg["qkv_bias"])
        self.o_proj = nn.Linear(h * dh, d, bias=cfg["o_bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.dh).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.g, self.dh).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.g, self.dh).transpose(1, 2)
        cos, sin = rope_tables(t, self.dh, self.theta, x.dtype, x.device)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        rep = self.h // self.g
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # HF repeat_kv
        scores = q @ k.transpose(-1, -2) * self.dh ** -0.5
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        if self.window is not None:  # Mistral: query i sees keys j with i − window < j ≤ i
            mask |= torch.ones(t, t, dtype=torch.bool, device=x.device).tril(-int(self.window))
        y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.h * self.dh))


class MLP(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, f, bias = cfg["d_model"], cfg["d_mlp"], cfg["mlp_bias"]
        self.gate_proj, self.up_proj = nn.Linear(d, f, bias=bias), nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        norm = lambda: RMSNorm(cfg["d_model"], cfg["eps"], cfg["norm_gain"], cfg["norm_dim"])  # noqa: E731
        self.self_attn, self.mlp = Attention(cfg), MLP(cfg)
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["d_model"])
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg["n_layers"]))
        self.norm = RMSNorm(cfg["d_model"], cfg["eps"], cfg["norm_gain"], cfg["norm_dim"])


class Llama(nn.Module):
    """Token ids ``(B, T)`` → logits ``(B, T, vocab)``, causal; ``tie_embeddings``: logits ``N_f(x) · embedᵀ``."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.model = Body(cfg)
        self.tied = cfg["tie_embeddings"]
        if not self.tied:
            self.lm_head = nn.Linear(cfg["d_model"], cfg["vocab_size"], bias=False)
        if cfg["norm_gain"]:  # random gains, so that the tests see them (HF initialises them to 1)
            for m in self.modules():
                if isinstance(m, RMSNorm):
                    nn.init.uniform_(m.weight, 0.5, 1.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x)
        x = self.model.norm(x)
        return x @ self.model.embed_tokens.weight.T if self.tied else self.lm_head(x)


def _check(vocab, d_model, n_heads, n_kv_heads, n_layers, d_mlp, context, d_head, rope_theta, eps, qkv_bias,
           o_bias, mlp_bias, tie_embeddings, norm_gain, norm_dim, gqa, sliding_window) -> dict:
    d, h = integer("d_model", d_model), integer("n_heads", n_heads)
    g = integer("n_kv_heads", h if n_kv_heads is None else n_kv_heads)
    if h % g:
        raise ValueError(f"n_heads={h} is not a multiple of n_kv_heads={g}")
    if d_head is None:
        if d % h:
            raise ValueError(f"d_model={d} is not a multiple of n_heads={h}; pass d_head")
        d_head = d // h
    d_head = integer("d_head", d_head)
    if d_head % 2:
        raise ValueError(f"rotary embeddings pair the units of a head: d_head={d_head} must be even")
    if gqa not in GQA:
        raise ValueError(f"gqa must be one of {GQA}, got {gqa!r}")
    if norm_dim is not None and norm_gain:
        raise ValueError("norm_dim fixes the gain-free normaliser's constant: pass it with norm_gain=False")
    return dict(kind="llama", vocab_size=integer("vocab", vocab), d_model=d, n_heads=h, n_kv_heads=g,
                n_layers=integer("n_layers", n_layers, 0), d_mlp=integer("d_mlp", d_mlp),
                context=integer("context", context), d_head=d_head, rope_theta=real("rope_theta", rope_theta),
                eps=real("eps", eps), qkv_bias=bool(qkv_bias), o_bias=bool(o_bias), mlp_bias=bool(mlp_bias),
                tie_embeddings=bool(tie_embeddings), norm_gain=bool(norm_gain),
                norm_dim=None if norm_dim is None else integer("norm_dim", norm_dim), gqa=gqa,
                sliding_window=None if sliding_window is None else integer("sliding_window", sliding_window))


def llama_graph(cfg: dict, name: str | None = None, *, buffers: tuple[str, ...] = ()) -> WeightGraph:
    """The weight graph of a Llama-family model with configuration ``cfg`` (see :func:`llama`) on HF's
    state-dict names; ``buffers`` are extra state-dict entries declared fixed."""
    d, h, gk, dh, f = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["d_head"], cfg["d_mlp"]
    rep = h // gk
    g = WeightGraph(name or f"llama(d={d}, heads={h}/{gk}, layers={cfg['n_layers']})")
    g.add_space(RESIDUAL, d, Permutation() if cfg["norm_gain"] else Orthogonal())

    def param(pname, shape, *edges):
        g.add_parameter(pname, shape)
        for space, axis, role, sl, *rp in edges:
            g.connect(pname, space, axis=axis, role=role, slice=sl, repeat=rp[0] if rp else None)

    def linear(prefix, n_out, n_in, bias, out_edges, in_edges):
        param(f"{prefix}.weight", (n_out, n_in), *[(s, 0, *e) for s, *e in out_edges],
              *[(s, 1, *e) for s, *e in in_edges])
        if bias:
            param(f"{prefix}.bias", (n_out,), *[(s, 0, *e) for s, *e in out_edges])

    def norm(prefix):
        if cfg["norm_gain"]:
            param(f"{prefix}.weight", (d,), (RESIDUAL, 0, "out", None))

    res_in, res_out = [(RESIDUAL, "in", None)], [(RESIDUAL, "out", None)]
    param("model.embed_tokens.weight", (cfg["vocab_size"], d), (RESIDUAL, 1, "out", None),
          *([(RESIDUAL, 1, "in", None)] if cfg["tie_embeddings"] else []))
    for i in range(cfg["n_layers"]):
        p, a = f"model.layers.{i}", f"layers.{i}.attn"
        norm(f"{p}.input_layernorm")
        if rep == 1 or cfg["gqa"] == "grouped":  # one map per key/value group, repeated on its query heads
            qk, vo = f"{a}.qk", f"{a}.vo"
            g.add_space(qk, gk * dh, HeadStructured(gk, Rotary()), head_group=a)
            g.add_space(vo, gk * dh, HeadStructured(gk, Invertible()), head_group=a)
            q, k = [(qk, "out", None, (rep, dh))], [(qk, "in", None)]
            v, o = [(vo, "out", None)], [(vo, "in", None, (rep, dh))]
        elif cfg["gqa"] == "heads":
            one, two = f"{a}.q", f"{a}.kv"
            g.add_space(one, h * dh, HeadStructured(gk, Trivial()), head_group=a)
            g.add_space(two, gk * dh, HeadStructured(gk, Trivial()), head_group=a)
            q, k, v, o = [(one, "out", None)], [(two, "in", None)], [(two, "out", None)], [(one, "in", None)]
        else:
            q, k, v, o = [], [], [], []
            for j in range(gk):
                qk, vo = f"{a}.qk.{j}", f"{a}.vo.{j}"
                g.add_space(qk, dh, Rotary())
                g.add_space(vo, dh, Invertible())
                heads = [((j * rep + r) * dh, (j * rep + r + 1) * dh) for r in range(rep)]
                q += [(qk, "out", sl) for sl in heads]
                o += [(vo, "in", sl) for sl in heads]
                k.append((qk, "in", (j * dh, (j + 1) * dh)))
                v.append((vo, "out", (j * dh, (j + 1) * dh)))
        linear(f"{p}.self_attn.q_proj", h * dh, d, cfg["qkv_bias"], q, res_in)
        linear(f"{p}.self_attn.k_proj", gk * dh, d, cfg["qkv_bias"], k, res_in)
        linear(f"{p}.self_attn.v_proj", gk * dh, d, cfg["qkv_bias"], v, res_in)
        linear(f"{p}.self_attn.o_proj", d, h * dh, cfg["o_bias"], res_out, o)
        norm(f"{p}.post_attention_layernorm")
        mlp = f"layers.{i}.mlp"
        g.add_space(mlp, f, Permutation(), activation="silu")
        linear(f"{p}.mlp.gate_proj", f, d, cfg["mlp_bias"], [(mlp, "out", None)], res_in)
        linear(f"{p}.mlp.up_proj", f, d, cfg["mlp_bias"], [(mlp, "out", None)], res_in)
        linear(f"{p}.mlp.down_proj", d, f, cfg["mlp_bias"], res_out, [(mlp, "in", None)])
    norm("model.norm")
    if not cfg["tie_embeddings"]:
        linear("lm_head", cfg["vocab_size"], d, False, [], res_in)
    for b in buffers:
        g.add_parameter(b, fixed=True)
    return g.validate()


def llama(vocab: int, d_model: int, n_heads: int, n_kv_heads: int | None, n_layers: int, d_mlp: int, context: int,
          *, d_head: int | None = None, rope_theta: float = 10000.0, eps: float = 1e-6, qkv_bias: bool = False,
          o_bias: bool = False, mlp_bias: bool = False, tie_embeddings: bool = False, norm_gain: bool = True,
          norm_dim: int | None = None, gqa: str = "grouped", sliding_window: int | None = None) -> Architecture:
    """A Llama-family causal decoder (module :class:`Llama`, HF's names) and its weight graph.

    ``n_kv_heads`` (``None``: ``n_heads``) key/value heads, each serving ``n_heads / n_kv_heads``
    query heads; ``d_head`` (default ``d_model / n_heads``, even); ``qkv_bias`` (Qwen2), ``o_bias``
    (with ``qkv_bias``: Llama's ``attention_bias``), ``mlp_bias``; ``tie_embeddings``;
    ``norm_gain=False`` the folded form (see :func:`fold_rmsnorm`; ``norm_dim`` its constant);
    ``gqa`` what the graph declares of a grouped-query attention: ``"grouped"`` (default: group
    permutations × per-group rotary and invertible maps, on repeated edges), or the older parts
    ``"heads"`` and ``"maps"`` (module docstring);
    ``sliding_window`` (Mistral) limits each query to the last ``sliding_window`` keys.
    ``context`` is the length of the example inputs. Invalid arguments raise ``ValueError``."""
    cfg = _check(vocab, d_model, n_heads, n_kv_heads, n_layers, d_mlp, context, d_head, rope_theta, eps, qkv_bias,
                 o_bias, mlp_bias, tie_embeddings, norm_gain, norm_dim, gqa, sliding_window)
    g = llama_graph(cfg)
    return Architecture(g.name, g, lambda: Llama(cfg), cfg, inputs=lambda batch, generator, dtype: torch.randint(
        0, cfg["vocab_size"], (batch, cfg["context"]), generator=generator))


def fold_rmsnorm(arch: Architecture, params) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """``(arch', θ')``: ``arch`` with every RMSNorm gain folded into the layers that read it
    (``W ← W diag(γ)``: ``q/k/v_proj`` after ``input_layernorm``, ``gate/up_proj`` after
    ``post_attention_layernorm``, ``lm_head`` after ``model.norm``; a tied ``lm_head`` is untied
    as ``embed diag(γ_f)``) and gain-free norms with ``D₀ = d_model``: the same function, and a
    ``residual`` space that admits ``Orthogonal`` (``N(O y) = O N(y)`` for orthonormal columns).
    ``arch`` comes from :func:`llama` or :func:`architectures.hf_llama`; ``θ'`` are the names of
    :func:`llama` (float64 arithmetic, each tensor returned in its dtype)."""
    cfg = dict(arch.config)
    if cfg.get("kind") == "hf_llama":
        if cfg["rope_type"] != "default":
            raise ValueError(f"rope_type={cfg['rope_type']!r} has no counterpart in architectures.llama")
        cfg = dict(cfg["llama"])
    if cfg.get("kind") != "llama":
        raise TypeError(f"{arch.name!r} was not built by architectures.llama or architectures.hf_llama")
    if not cfg["norm_gain"]:
        raise ValueError(f"{arch.name!r} has no RMSNorm gains to fold")
    if isinstance(params, nn.Module):
        params = params.state_dict()
    arch.graph.validate(params)
    cfg.update(norm_gain=False, norm_dim=cfg["d_model"], tie_embeddings=False)
    cfg.pop("kind")
    new = llama(cfg.pop("vocab_size"), cfg.pop("d_model"), cfg.pop("n_heads"), cfg.pop("n_kv_heads"),
                cfg.pop("n_layers"), cfg.pop("d_mlp"), cfg.pop("context"), **cfg)
    out = {k: v for k, v in params.items() if k in new.graph}
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = params["model.embed_tokens.weight"]
    readers = {"model.norm": ["lm_head"]}
    for i in range(new.config["n_layers"]):
        p = f"model.layers.{i}"
        readers[f"{p}.input_layernorm"] = [f"{p}.self_attn.{x}_proj" for x in "qkv"]
        readers[f"{p}.post_attention_layernorm"] = [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"]
    for norm, layers in readers.items():
        gamma = params[f"{norm}.weight"].detach().to(torch.float64)
        for layer in layers:
            w = out[f"{layer}.weight"]
            out[f"{layer}.weight"] = (w.detach().to(torch.float64) * gamma).to(dtype=w.dtype, device=w.device)
    new.graph.validate(out)
    return new, out
