"""Models no builder knows, for the test_extract_* files: their inputs, a seeded float64 instance,
a forward run on given parameters, and their extracted graphs (GRAPHS, built once)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import symmetries as sy
from architectures import from_module
from arch_checks import perturb_norms


# -- models no builder knows ---------------------------------------------------------------------------
class TwoBranch(nn.Module):
    """Two branches (GELU and ReLU) added, then tanh: the branch outputs share one space."""

    def __init__(self):
        super().__init__()
        self.inp, self.a1, self.a2 = nn.Linear(5, 8), nn.Linear(8, 6), nn.Linear(6, 7)
        self.b1, self.b2, self.head = nn.Linear(8, 9), nn.Linear(9, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.head(torch.tanh(self.a2(F.gelu(self.a1(h))) + self.b2(torch.relu(self.b1(h)))))


class ResMLP(nn.Module):
    """A residual MLP with pre-LayerNorm blocks: one stream space for every writer."""

    def __init__(self, d=6, n=2):
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 10), nn.GELU(), nn.Linear(10, d))
                                    for _ in range(n))
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class ConvBN(nn.Module):
    """Conv–BN–ReLU twice with max pooling, global average pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.bn2 = nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
        x = F.relu(self.bn2(self.c2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyTransformer(nn.Module):
    """Embedding + learned positions, a pre-LN attention block with nn.MultiheadAttention, a
    SiLU MLP and an unembedding tied to the embedding."""

    def __init__(self, vocab=11, d=8, heads=2, length=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, length, d))
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 12), nn.Linear(12, d)
        self.unembed = nn.Linear(d, vocab, bias=False)
        self.unembed.weight = self.emb.weight

    def forward(self, idx):
        x = self.emb(idx) + self.pos
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        x = x + self.fc2(F.silu(self.fc1(self.ln2(x))))
        return self.unembed(self.lnf(x))


class HandAttention(nn.Module):
    """Hand-written attention (packed QKV cut by ``chunk``, heads by ``view``) between sum-based
    gain-free RMS norms: the stream admits orthogonal maps, the heads per-head invertible ones."""

    def __init__(self, d=6, heads=3, d_head=2):
        super().__init__()
        self.h, self.dh = heads, d_head
        self.inp, self.qkv = nn.Linear(5, d), nn.Linear(d, 3 * heads * d_head)
        self.o, self.out = nn.Linear(heads * d_head, d), nn.Linear(d, 2)

    @staticmethod
    def norm(x):
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / 6 + 1e-5)

    def forward(self, x):
        x = self.inp(x)
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.h, self.dh).transpose(1, 2) for z in (q, k, v))
        w = (q @ k.transpose(-2, -1) * self.dh ** -0.5).softmax(dim=-1)
        x = x + self.o((w @ v).transpose(1, 2).reshape(b, t, self.h * self.dh))
        return self.out(self.norm(x))


class MobileBlock(nn.Module):
    """Pointwise conv, depthwise conv, InstanceNorm, per-channel PReLU, torch-only activations."""

    def __init__(self):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
        self.dw, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6)
        self.project, self.inorm = nn.Conv2d(6, 4, 1), nn.InstanceNorm2d(4, affine=True)
        self.prelu, self.fc = nn.PReLU(4), nn.Linear(4, 2)
        self.act1, self.act2 = nn.ReLU6(), nn.Hardswish()

    def forward(self, x):
        x = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x))))))
        x = self.prelu(self.inorm(self.project(x)))
        return self.fc(x.mean((2, 3)))


class OddMLP(nn.Module):
    """A shared-slope PReLU (scalings and splits), Softsign and a symmetric Hardtanh (odd)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 5), nn.Linear(5, 6), nn.Linear(6, 5), nn.Linear(5, 2)
        self.prelu, self.soft, self.hard = nn.PReLU(), nn.Softsign(), nn.Hardtanh(-0.5, 0.5)

    def forward(self, x):
        return self.d(self.hard(self.c(self.soft(self.b(self.prelu(self.a(x)))))))


class Functional(nn.Module):
    """Raw parameters through F.embedding, F.layer_norm, F.conv1d, a 2-norm and elementwise
    functions outside the activation registry."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(7, 6))
        self.gain, self.shift = nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(6))
        self.kernel = nn.Parameter(torch.randn(5, 6, 3))
        self.w = nn.Parameter(torch.randn(5, 4))
        self.out = nn.Linear(4, 2)

    def forward(self, idx):
        x = F.layer_norm(F.embedding(idx, self.table), (6,), self.gain, self.shift)   # (B, T, 6)
        h = F.conv1d(x.transpose(1, 2), self.kernel, padding=1).transpose(1, 2)      # (B, T, 5)
        h = torch.erf(h)                                                               # odd
        h = torch.exp(h @ self.w) / (h @ self.w).norm(dim=-1, keepdim=True)          # (B, T, 4)
        return self.out(h)


class Decoder(nn.Module):
    """Upsampling (interpolate, transposed conv) with reflect and zero padding."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(5, 2, 3)
        self.up = nn.ConvTranspose2d(4, 5, 2, stride=2)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = F.pad(F.interpolate(h, scale_factor=2), (1, 1, 1, 1), mode="reflect")
        return self.c2(F.pad(F.silu(self.up(h)), (1, 1, 1, 1)))


class NanoAttention(nn.Module):
    """nanoGPT-style: packed ``c_attn`` split, heads by view/transpose, causal
    ``F.scaled_dot_product_attention``, dropout modules, an Embedding stream."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.h, self.wte, self.ln = heads, nn.Embedding(11, d), nn.LayerNorm(d)
        self.c_attn, self.c_proj, self.drop = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Dropout(0.1)
        self.head = nn.Linear(d, 11, bias=False)

    def forward(self, idx):
        x = self.wte(idx)
        b, t, c = x.size()
        q, k, v = self.c_attn(self.ln(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.drop(self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))))


class Concat(nn.Module):
    """Two branches concatenated along the features: the reader's columns are two slices."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=-1))


class HandGCN(nn.Module):
    """A graph convolution written with a raw parameter: ``Â (x W) + b``, twice."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(6))
        self.w2 = nn.Parameter(torch.randn(6, 3))

    def forward(self, x, a_hat):
        h = F.elu(a_hat @ (x @ self.w1) + self.b1)
        return a_hat @ (h @ self.w2)


class Rule(nn.Module):
    """``b(rule(a(x), x))`` for a few small rules of the walk."""
    RULES = {
        "plus_one": lambda h, x: torch.relu(h) + 1.0,
        "times_two": lambda h, x: torch.relu(h) * 2.0,
        "per_example": lambda h, x: torch.relu(h) * x.norm(dim=-1, keepdim=True),
        "centred": lambda h, x: h - h.mean(-1, keepdim=True),
        "softmax": lambda h, x: torch.softmax(h, -1),
        "plus_input": lambda h, x: h + x,
        "square": lambda h, x: h * h,
        "transpose": lambda h, x: torch.tanh(h.t()).t().contiguous(),
    }

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.RULES[self.rule](self.a(x), x))


RULE_CLASSES = {"plus_one": (sy.Permutation(),), "times_two": (sy.PermutationScaling(), sy.SemiPermutation()),
                "per_example": (sy.PermutationScaling(), sy.SemiPermutation()), "centred": (sy.Permutation(),),
                "softmax": (sy.Permutation(),), "plus_input": None, "square": (sy.Permutation(),),
                "transpose": (sy.SignedPermutation(),)}


def model_inputs(name):
    g = torch.Generator().manual_seed(7)
    return {
        "two_branch": (torch.randn(6, 5, generator=g, dtype=torch.float64),),
        "res_mlp": (torch.randn(6, 4, generator=g, dtype=torch.float64),),
        "conv_bn": (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64),),
        "transformer": (torch.randint(0, 11, (3, 5), generator=g),),
        "nano_attention": (torch.randint(0, 11, (3, 5), generator=g),),
        "concat": (torch.randn(6, 4, generator=g, dtype=torch.float64),),
        "hand_attention": (torch.randn(2, 4, 5, generator=g, dtype=torch.float64),),
        "mobile": (torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64),),
        "functional": (torch.randint(0, 7, (3, 4), generator=g),),
        "decoder": (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),),
        "gcn": (torch.randn(5, 4, generator=g, dtype=torch.float64),
                torch.rand(5, 5, generator=g, dtype=torch.float64)),
    }.get(name, (torch.randn(6, 4, generator=g, dtype=torch.float64),))


MODELS = {"two_branch": TwoBranch, "res_mlp": ResMLP, "conv_bn": ConvBN, "transformer": TinyTransformer,
          "concat": Concat, "gcn": HandGCN, "hand_attention": HandAttention, "mobile": MobileBlock,
          "odd_mlp": OddMLP, "functional": Functional, "decoder": Decoder, "nano_attention": NanoAttention}
MODELS.update({f"rule:{r}": (lambda r=r: Rule(r)) for r in Rule.RULES})


def build_model(name, seed=0):
    torch.manual_seed(seed)
    m = MODELS[name]().double().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong action on them shows
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                perturb_norms(mod)
    return m


def run_model(model, params, inputs):
    m = copy.deepcopy(model)
    m.load_state_dict(params)
    with torch.no_grad():
        return m(*inputs)


GRAPHS = {name: from_module(build_model(name), model_inputs(name)) for name in MODELS}
