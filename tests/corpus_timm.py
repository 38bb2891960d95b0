"""Compact copies of timm 1.0 module structures (and a few more torchvision ones) for
tests/test_real_corpus.py: forward code as in the library, small widths (see real_corpus_models)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """timm.layers.DropPath: identity unless training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


class LayerNorm2d(nn.LayerNorm):
    """timm.layers.LayerNorm2d: LayerNorm over channels of an NCHW map."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, d), nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


# -- timm.models.resnet ------------------------------------------------------------------------------
class TimmBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1, self.drop_block, self.act1, self.aa = nn.BatchNorm2d(planes), nn.Identity(), nn.ReLU(True), \
            nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2, self.se, self.act2, self.downsample = nn.BatchNorm2d(planes), None, nn.ReLU(True), downsample
        self.drop_path = None

    def forward(self, x):
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act2(x)


class SelectAdaptivePool2d(nn.Module):
    def __init__(self, flatten=True):
        super().__init__()
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten(1) if flatten else nn.Identity()

    def forward(self, x):
        return self.flatten(self.pool(x))


class TimmResNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        down = nn.Sequential(nn.Conv2d(4, 6, 1, 2, bias=False), nn.BatchNorm2d(6))
        self.layer1 = nn.Sequential(TimmBasicBlock(4, 4), TimmBasicBlock(4, 4))
        self.layer2 = nn.Sequential(TimmBasicBlock(4, 6, 2, down))
        self.global_pool, self.fc = SelectAdaptivePool2d(), nn.Linear(6, classes)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.fc(self.global_pool(self.layer2(self.layer1(x))))


# -- timm.models.vision_transformer ------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim, num_heads, fused=True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale, self.fused_attn = self.head_dim ** -0.5, fused
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm, self.k_norm, self.attn_drop = nn.Identity(), nn.Identity(), nn.Dropout(0.0)
        self.norm, self.proj, self.proj_drop = nn.Identity(), nn.Linear(dim, dim), nn.Dropout(0.0)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        else:
            q = q * self.scale
            attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(self.norm(x)))


class LayerScale(nn.Module):
    def __init__(self, dim, init_values=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim, heads, fused=True, init_values=None):
        super().__init__()
        scale = (lambda: LayerScale(dim, init_values)) if init_values else nn.Identity
        self.norm1, self.attn, self.ls1, self.drop_path1 = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads, fused), \
            scale(), DropPath()
        self.norm2, self.mlp, self.ls2, self.drop_path2 = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 2 * dim), scale(), \
            DropPath()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj, self.norm = nn.Conv2d(3, dim, patch, patch), nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class VisionTransformer(nn.Module):
    def __init__(self, dim=8, heads=2, depth=2, img=8, patch=4, classes=5, fused=True, init_values=None):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        self.pos_drop, self.patch_drop, self.norm_pre = nn.Dropout(0.0), nn.Identity(), nn.Identity()
        self.blocks = nn.Sequential(*[Block(dim, heads, fused, init_values) for _ in range(depth)])
        self.norm, self.fc_norm, self.head_drop = nn.LayerNorm(dim, eps=1e-6), nn.Identity(), nn.Dropout(0.0)
        self.head = nn.Linear(dim, classes)

    def _pos_embed(self, x):
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward(self, x):
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        x = self.norm(self.blocks(x))
        return self.head(self.head_drop(self.fc_norm(x[:, 0])))


# -- timm.models.convnext ----------------------------------------------------------------------------
class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, ls_init_value=1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))
        self.shortcut, self.drop_path = nn.Identity(), DropPath()

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x) + self.shortcut(shortcut)


class TimmConvNeXt(nn.Module):
    def __init__(self, dim=4, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 4, 4), LayerNorm2d(dim, eps=1e-6))
        self.stages = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
        self.global_pool, self.norm = SelectAdaptivePool2d(flatten=False), LayerNorm2d(dim, eps=1e-6)
        self.flatten, self.fc = nn.Flatten(1), nn.Linear(dim, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.norm(self.global_pool(self.stages(self.stem(x))))))


# -- timm.models.efficientnet (BatchNormAct2d, SqueezeExcite, InvertedResidual) ---------------------
class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.BatchNormAct2d: a BatchNorm2d subclass calling F.batch_norm, then the activation."""

    def __init__(self, num_features, act=nn.SiLU, apply_act=True):
        super().__init__(num_features)
        self.drop, self.act = nn.Identity(), act() if apply_act else nn.Identity()

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, bn_training, factor, self.eps)
        return self.act(self.drop(x))


class SqueezeExcite(nn.Module):
    def __init__(self, chs, rd, act=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        self.conv_reduce, self.act1 = nn.Conv2d(chs, rd, 1), act()
        self.conv_expand, self.gate = nn.Conv2d(rd, chs, 1), gate()

    def forward(self, x):
        x_se = self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True)))
        return x * self.gate(self.conv_expand(x_se))


class TimmInvertedResidual(nn.Module):
    def __init__(self, cin, cout, exp, stride, act=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        mid = cin * exp
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), BatchNormAct2d(mid, act)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2, self.aa = BatchNormAct2d(mid, act), nn.Identity()
        self.se = SqueezeExcite(mid, max(1, cin // 4), act, gate)
        self.conv_pwl, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), BatchNormAct2d(cout, apply_act=False)
        self.drop_path = DropPath()

    def forward(self, x):
        shortcut = x
        x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        x = self.bn3(self.conv_pwl(self.se(self.aa(x))))
        return self.drop_path(x) + shortcut if self.has_skip else x


class TimmEfficientNet(nn.Module):
    def __init__(self, act=nn.SiLU, gate=nn.Sigmoid, classes=5):
        super().__init__()
        self.conv_stem, self.bn1 = nn.Conv2d(3, 4, 3, 2, 1, bias=False), BatchNormAct2d(4, act)
        self.blocks = nn.Sequential(TimmInvertedResidual(4, 4, 2, 1, act, gate), TimmInvertedResidual(4, 6, 2, 2, act, gate))
        self.conv_head, self.bn2 = nn.Conv2d(6, 8, 1, bias=False), BatchNormAct2d(8, act)
        self.global_pool, self.classifier = SelectAdaptivePool2d(), nn.Linear(8, classes)

    def forward(self, x):
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        return self.classifier(self.global_pool(x))
