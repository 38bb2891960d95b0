"""Small pre-norm transformers in torch: a GPT-2-style causal decoder and a ViT-style encoder.

Block ``i``: ``x ← x + Attn(N₁(x))``, ``x ← x + MLP(N₂(x))`` with ``N`` either ``LayerNorm``
(with gain and bias) or :class:`RMSNormNoGain` (``N(y) = y / √(‖y‖²/D₀ + ε)``, no parameters),
``Attn`` multi-head attention with separate (``q``, ``k``, ``v``) or packed (``qkv``) input
projections laid out head-major, and ``MLP = proj ∘ GELU ∘ fc``. No dropout.
"""
from __future__ import annotations

import math

import torch

from symmetries.errors import ArgumentError
from torch import nn

__all__ = ["RMSNormNoGain", "Attention", "Block", "GPT", "ViT"]


class RMSNormNoGain(nn.Module):
    """``N(y) = y / √(‖y‖²/D₀ + ε)`` with a fixed constant ``D₀`` (``norm_dim``).

    Commutes with every ``O`` with orthonormal columns, ``N(O y) = O N(y)``, also when ``O``
    widens the stream, because ``D₀`` is a constant and not the vector's current length.
    """

    def __init__(self, norm_dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm_dim, self.eps = int(norm_dim), float(eps)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y / torch.sqrt(y.pow(2).sum(-1, keepdim=True) / self.norm_dim + self.eps)

    def extra_repr(self) -> str:
        return f"norm_dim={self.norm_dim}, eps={self.eps}"


def make_norm(norm: str, d_model: int, norm_dim: int, eps: float) -> nn.Module:
    if norm == "layernorm":
        return nn.LayerNorm(d_model, eps=eps)
    if norm == "rms":
        return RMSNormNoGain(norm_dim, eps)
    raise ArgumentError(f"norm must be 'layernorm' or 'rms', got {norm!r}", argument="norm")


class Attention(nn.Module):
    """Multi-head attention ``o(softmax(q kᵀ/√d + mask) v)``; heads are contiguous blocks of
    ``d_head`` units (head-major) of the projections' output axis."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, packed: bool, causal: bool):
        super().__init__()
        self.n_heads, self.d_head, self.packed, self.causal = n_heads, d_head, packed, causal
        inner = n_heads * d_head
        if packed:
            self.qkv = nn.Linear(d_model, 3 * inner)
        else:
            self.q = nn.Linear(d_model, inner)
            self.k = nn.Linear(d_model, inner)
            self.v = nn.Linear(d_model, inner)
        self.o = nn.Linear(inner, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        inner = self.n_heads * self.d_head
        if self.packed:
            q, k, v = self.qkv(x).split(inner, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = (z.view(b, t, self.n_heads, self.d_head).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        y = scores.softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, inner))


#: GELU variants of the MLP: exact (erf) and the tanh approximation (HF's ``gelu_new``).
GELUS = {"gelu": "none", "gelu_tanh": "tanh"}


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, activation: str = "gelu"):
        super().__init__()
        self.fc = nn.Linear(d_model, d_mlp)
        self.act = nn.GELU(approximate=GELUS[activation])
        self.proj = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: dict, causal: bool):
        super().__init__()
        d, nd, eps = cfg["d_model"], cfg["norm_dim"], cfg["eps"]
        self.ln_1 = make_norm(cfg["norm"], d, nd, eps)
        self.attn = Attention(d, cfg["n_heads"], cfg["d_head"], cfg["packed_qkv"], causal)
        self.ln_2 = make_norm(cfg["norm"], d, nd, eps)
        self.mlp = FeedForward(d, cfg["d_mlp"], cfg.get("activation", "gelu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Causal decoder: token ids ``(B, T)`` → logits ``(B, T, vocab)``; with tied embeddings the
    logits are ``N_f(x) · wteᵀ``."""

    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["d_model"]
        self.tied = cfg["tie_embeddings"]
        self.wte = nn.Embedding(cfg["vocab_size"], d)
        self.wpe = nn.Embedding(cfg["n_positions"], d)
        nn.init.normal_(self.wpe.weight, std=0.1)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg["n_layers"]))
        self.ln_f = make_norm(cfg["norm"], d, cfg["norm_dim"], cfg["eps"])
        if not self.tied:
            self.head = nn.Linear(d, cfg["vocab_size"], bias=cfg["head_bias"])

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[-1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return x @ self.wte.weight.T if self.tied else self.head(x)


class ViT(nn.Module):
    """Encoder: images ``(B, C, H, W)`` → class logits from the class token. Patches of
    ``p×p`` pixels, flattened channel-major ``(c, i, j)``, are embedded by the linear map
    ``patch_embed``; a learned ``cls_token`` and ``pos_embed`` are added."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, p, c = cfg["d_model"], cfg["patch_size"], cfg["channels"]
        self.patch = p
        n = (cfg["image_size"] // p) ** 2
        self.patch_embed = nn.Linear(c * p * p, d)
        self.cls_token = nn.Parameter(0.1 * torch.randn(1, 1, d))
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, n + 1, d))
        self.blocks = nn.ModuleList(Block(cfg, causal=False) for _ in range(cfg["n_layers"]))
        self.norm = make_norm(cfg["norm"], d, cfg["norm_dim"], cfg["eps"])
        self.head = nn.Linear(d, cfg["num_classes"])

    def patches(self, img: torch.Tensor) -> torch.Tensor:
        b, c, h, w = img.shape
        p = self.patch
        x = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.patches(img))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])
