"""Two small models whose weight graphs need repeated edges, declared by hand (shared by the repeat tests).

* :class:`FlattenNet` — conv → ReLU → flatten (``C × H × W``) → Linear → ReLU → Linear: the first
  Linear's input axis holds the channel space once per position, ``repeat=(H·W, 1)`` (channel-major
  flatten) or ``repeat=(H·W, C)`` (channels-last: ``permute(0, 2, 3, 1).flatten(1)``).
* :class:`GQAttention` — grouped-query attention (``H`` query heads, ``G`` key/value heads of width
  ``d``, HF ``repeat_kv`` layout), optionally with rotary embeddings: ``q`` rows and ``o`` columns hold
  the group spaces ``repeat=(H/G, d)``.
"""
from __future__ import annotations

import torch
from torch import nn

import symmetries as sy
from architectures.activations import activation
from architectures.llama import rope_tables, rotate_half
from symmetries import lattice
from symmetries.testing.strategies import GROUPS


class FlattenNet(nn.Module):
    def __init__(self, c=3, hw=(2, 3), hidden=5, out=4, channels_last=False):
        super().__init__()
        self.channels_last = channels_last
        self.conv = nn.Conv2d(2, c, 3, padding=1)
        self.fc = nn.Linear(c * hw[0] * hw[1], hidden)
        self.out = nn.Linear(hidden, out)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = (h.permute(0, 2, 3, 1) if self.channels_last else h).flatten(1)
        return self.out(torch.relu(self.fc(h)))


def flatten_graph(c=3, hw=(2, 3), hidden=5, out=4, channels_last=False) -> sy.WeightGraph:
    s = hw[0] * hw[1]
    g = sy.WeightGraph("flatten")
    relu = activation("relu").classes          # PermutationScaling and SemiPermutation
    g.add_space("channels", c, relu, activation="relu")
    g.add_space("hidden", hidden, relu, activation="relu")
    g.add_parameter("conv.weight", (c, 2, 3, 3)).add_parameter("conv.bias", (c,))
    g.add_parameter("fc.weight", (hidden, c * s)).add_parameter("fc.bias", (hidden,))
    g.add_parameter("out.weight", (out, hidden)).add_parameter("out.bias", (out,), fixed=True)
    g.connect("conv.weight", "channels", axis=0, role="out").connect("conv.bias", "channels", axis=0, role="out")
    g.connect("fc.weight", "channels", axis=1, role="in", repeat=(s, c) if channels_last else (s, 1))
    g.connect("fc.weight", "hidden", axis=0, role="out").connect("fc.bias", "hidden", axis=0, role="out")
    g.connect("out.weight", "hidden", axis=1, role="in")
    return g.validate()


class GQAttention(nn.Module):
    """``o(softmax(RoPE(q x) RoPE(k x)ᵀ / √d, causal) v x)`` with key/value head ``g`` serving query heads
    ``g·R … g·R + R − 1``."""

    def __init__(self, d_model=8, heads=4, groups=2, d=4, rope=False, bias=True):
        super().__init__()
        self.h, self.g, self.d, self.rope = heads, groups, d, rope
        self.q_proj = nn.Linear(d_model, heads * d, bias=bias)
        self.k_proj = nn.Linear(d_model, groups * d, bias=bias)
        self.v_proj = nn.Linear(d_model, groups * d, bias=bias)
        self.o_proj = nn.Linear(heads * d, d_model, bias=bias)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.g, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.g, self.d).transpose(1, 2)
        if self.rope:
            cos, sin = rope_tables(t, self.d, 10000.0, x.dtype)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        r = self.h // self.g
        k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.d ** -0.5
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.h * self.d))


def gqa_graph(d_model=8, heads=4, groups=2, d=4, rope=False, bias=True) -> sy.WeightGraph:
    r = heads // groups
    g = sy.WeightGraph("gqa")
    qk_inner = sy.Rotary() if rope else sy.Invertible()
    g.add_space("qk", groups * d, sy.HeadStructured(groups, qk_inner), head_group="attn")
    g.add_space("vo", groups * d, sy.HeadStructured(groups, sy.Invertible()), head_group="attn")
    rows = {"q": (heads * d, "qk", "out", (r, d)), "k": (groups * d, "qk", "in", None),
            "v": (groups * d, "vo", "out", None)}
    for name, (n, space, role, repeat) in rows.items():
        g.add_parameter(f"{name}_proj.weight", (n, d_model))
        g.connect(f"{name}_proj.weight", space, axis=0, role=role, repeat=repeat)
        if bias:
            g.add_parameter(f"{name}_proj.bias", (n,))
            g.connect(f"{name}_proj.bias", space, axis=0, role=role, repeat=repeat)
    g.add_parameter("o_proj.weight", (d_model, heads * d))
    g.connect("o_proj.weight", "vo", axis=1, role="in", repeat=(r, d))
    if bias:
        g.add_parameter("o_proj.bias", (d_model,), fixed=True)
    return g.validate()


def admitted_classes(space) -> list:
    """Every group class of the library (and ``Rotary``) contained in a class the space declares."""
    out = []
    for declared in space.classes:
        head = isinstance(declared, sy.HeadStructured)
        inner = declared.inner if head else declared
        for c in (*GROUPS, sy.Rotary()):
            if lattice.is_subclass(c, inner):
                cls = sy.HeadStructured(declared.num_heads, c) if head else c
                if cls not in out:
                    out.append(cls)
    return out


def state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def output(model: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    model.load_state_dict(params)
    with torch.no_grad():
        return model(x)
