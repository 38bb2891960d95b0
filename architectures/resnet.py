"""CIFAR-style ResNets (He et al. 2016, §4.2): ResNet-(6n+2) with BasicBlocks and BatchNorm.

``conv1 → bn1 → relu → layer1 → layer2 → layer3 → GAP → linear``; stage ``s`` has ``n``
BasicBlocks ``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))`` with ``channels[s] · width``
channels; the first block of stages 2 and 3 halves the resolution, and wherever the shape
changes the shortcut is a 1×1 convolution with BatchNorm (``shortcut.0``, ``shortcut.1``).

Spaces (all behind BatchNorm, so permutations only — :mod:`architectures._layers`):

* ``stream.s`` — the residual stream of stage ``s``: every tensor that adds into it shares
  it (the stem ``conv1``/``bn1`` for stage 0, each block's ``conv2``/``bn2``, the shortcut
  conv/BN), and every tensor that reads it consumes it (the next blocks' ``conv1``, the next
  stage's shortcut conv, ``linear.weight`` axis 1). Splitting a stream into two spaces is wrong:
  the sum ``P a + Q b`` is no permutation of ``a + b``.
* ``layer{s+1}.{b}.inner`` — a block's internal channels (``conv1``/``bn1`` → ``conv2``).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from symmetries.errors import ArgumentError
from symmetries._args import integer, real, scaled, sizes
from architectures._layers import BATCHNORM_CLASSES, add_batchnorm, connect_conv
from architectures.architecture import Architecture, images
from symmetries.graph import WeightGraph

__all__ = ["resnet", "ResNet", "BasicBlock"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: a 3×3 stem, three stages of BasicBlocks, global average pooling, ``linear``."""

    def __init__(self, blocks: int, widths: Sequence[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for s, w in enumerate(widths):
            layer = []
            for b in range(blocks):
                layer.append(BasicBlock(c, w, 2 if (b == 0 and s > 0) else 1))
                c = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
        self.num_stages = len(widths)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet(depth: int = 20, width: float = 1, num_classes: int = 10, *, in_channels: int = 3,
           channels: Sequence[int] = (16, 32, 64)) -> Architecture:
    """ResNet-``depth`` (``depth = 6n + 2``: 20, 32, 44, 56, 110) with ``channels · width`` per stage:
    ``channels`` are positive integers, ``width`` > 0, and each stage width is rounded to the
    nearest integer and at least 1 (``width=0.5``: 8, 16, 32). Invalid arguments raise
    ``ValueError`` naming them."""
    rule = "a CIFAR ResNet has depth 6n + 2 with n ≥ 1 (8, 14, 20, 32, …)"
    depth = integer("depth", depth, error=lambda msg: ArgumentError(f"{msg}; {rule}", argument="depth"))
    if depth < 8 or (depth - 2) % 6:
        raise ArgumentError(f"{rule}, got depth={depth}", argument="depth")
    width = real("width", width, strict=True)
    widths = [scaled(c, width) for c in sizes("channels", channels, 1)]
    in_channels, num_classes = integer("in_channels", in_channels), integer("num_classes", num_classes)
    blocks = (depth - 2) // 6
    g = WeightGraph(f"resnet{depth}-w{width:g}")

    def stream(s):
        name = f"stream.{s}"
        if name not in g:
            g.add_space(name, widths[s], BATCHNORM_CLASSES, activation="relu")
        return name

    g.add_parameter("conv1.weight", (widths[0], in_channels, 3, 3))
    connect_conv(g, "conv1", stream(0), None)
    add_batchnorm(g, "bn1", widths[0], stream(0))
    c, src = widths[0], stream(0)
    for s, w in enumerate(widths):
        dst = stream(s)
        for b in range(blocks):
            p = f"layer{s + 1}.{b}"
            inner = f"{p}.inner"
            g.add_space(inner, w, BATCHNORM_CLASSES, activation="relu")
            g.add_parameter(f"{p}.conv1.weight", (w, c, 3, 3))
            connect_conv(g, f"{p}.conv1", inner, src)
            add_batchnorm(g, f"{p}.bn1", w, inner)
            g.add_parameter(f"{p}.conv2.weight", (w, w, 3, 3))
            connect_conv(g, f"{p}.conv2", dst, inner)
            add_batchnorm(g, f"{p}.bn2", w, dst)
            if (b == 0 and s > 0) or c != w:
                g.add_parameter(f"{p}.shortcut.0.weight", (w, c, 1, 1))
                connect_conv(g, f"{p}.shortcut.0", dst, src)
                add_batchnorm(g, f"{p}.shortcut.1", w, dst)
            c, src = w, dst
    g.add_parameter("linear.weight", (num_classes, c))
    g.add_parameter("linear.bias", (num_classes,), fixed=True)
    g.connect("linear.weight", src, axis=1, role="in")
    g.validate()
    config = dict(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels, widths=widths)
    return Architecture(g.name, g, lambda: ResNet(blocks, widths, num_classes, in_channels), config,
                        inputs=partial(images, in_channels))
