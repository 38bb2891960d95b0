"""VGG-style convolutional networks with optional BatchNorm: ``features → GAP → classifier``.

``cfg`` lists 3×3 convolutions (an int: output channels, padding 1) and 2×2 max pools
(``"M"``); each conv is followed by BatchNorm (optional) and the activation. Global average
pooling then makes every channel one feature of the classifier, so the last conv space is
consumed unambiguously by ``classifier.0.weight`` (axis 1, ``in``).

Spaces and what they admit (the largest exact classes):

* ``conv.i`` (channels of the i-th conv): produced by ``features.k.weight`` (axis 0) and its
  bias, consumed by the next conv (axis 1) or the classifier. Without BatchNorm, the
  activation's classes (zero padding, convolution and average pooling are linear per
  channel), restricted to positive monomial maps and splits where a max pool follows.
  With BatchNorm (``ε > 0``, eval mode): permutations only (see :mod:`architectures._layers`).
* ``hidden.j`` (classifier hidden units): the activation's classes, as in an MLP.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence, Union

import torch
from torch import nn

from symmetries.errors import ArgumentError
from symmetries._args import integer, items, real, scaled, sizes
from architectures._layers import BATCHNORM_CLASSES, MAXPOOL_CLASSES, add_batchnorm, connect_conv, restrict
from architectures.activations import activation as lookup
from architectures.architecture import Architecture, images
from symmetries.graph import WeightGraph

__all__ = ["vgg", "VGG", "VGG_CONFIGS"]

Cfg = Sequence[Union[int, str]]

#: The classic VGG layouts (channels before the width multiplier).
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _layout(cfg: Cfg, batchnorm: bool) -> list[dict]:
    """One record per conv: its ``features`` index, BatchNorm index, channels and whether a max
    pool follows before the next conv. Mirrors the ``nn.Sequential`` built by :class:`VGG`."""
    convs, k = [], 0
    for v in cfg:
        if v == "M":
            if convs:
                convs[-1]["pooled"] = True
            k += 1
            continue
        convs.append(dict(conv=k, bn=k + 1 if batchnorm else None, channels=int(v), pooled=False))
        k += 3 if batchnorm else 2
    return convs


class VGG(nn.Module):
    """``classifier(GAP(features(x)))`` with ``features`` = conv [BN] act [maxpool] …"""

    def __init__(self, cfg: Cfg, in_channels: int = 3, num_classes: int = 10, hidden: Sequence[int] = (),
                 batchnorm: bool = False, activation: str = "relu", bias: bool = True):
        super().__init__()
        act = lookup(activation).module
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(c, int(v), 3, padding=1, bias=bias))
            if batchnorm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(act())
            c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        for h in hidden:
            head += [nn.Linear(c, h), act()]
            c = h
        head.append(nn.Linear(c, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg(cfg: Cfg | str = (16, "M", 32, "M", 64), *, in_channels: int = 3, num_classes: int = 10,
        hidden: Sequence[int] = (), batchnorm: bool = False, activation: str = "relu", bias: bool | None = None,
        width: float = 1.0) -> Architecture:
    """A VGG-style CNN. ``cfg``: conv widths (positive integers) and ``"M"`` (max pool), or a name
    in ``VGG_CONFIGS``; ``width`` (> 0) multiplies every conv width, each rounded to the nearest
    integer and at least 1 (``vgg("vgg11", width=1/16)`` has 4, 8, 16, 32 channels); ``bias``
    defaults to ``not batchnorm``. Invalid arguments raise ``ValueError`` naming them."""
    if isinstance(cfg, str):
        if cfg not in VGG_CONFIGS:
            raise ArgumentError(f"unknown VGG configuration {cfg!r}; choose one of {', '.join(VGG_CONFIGS)}",
                                argument="cfg")
        cfg = VGG_CONFIGS[cfg]
    width = real("width", width, strict=True)
    entry = lambda i: lambda msg: ArgumentError(f"{msg}; cfg lists conv widths and 'M' (max pool)",  # noqa: E731
                                                argument=f"cfg[{i}]")
    cfg = [v if isinstance(v, str) and v == "M" else integer(f"cfg[{i}]", v, error=entry(i))
           for i, v in enumerate(items("cfg", cfg))]
    if not any(v != "M" for v in cfg):
        raise ArgumentError(f"cfg needs at least one conv width, got {cfg}", argument="cfg")
    cfg = [v if v == "M" else scaled(v, width) for v in cfg]
    hidden = sizes("hidden", hidden)
    in_channels, num_classes = integer("in_channels", in_channels), integer("num_classes", num_classes)
    bias = (not batchnorm) if bias is None else bool(bias)
    act = lookup(activation)

    g = WeightGraph(f"vgg{cfg}" + ("-bn" if batchnorm else ""))
    prev_space, prev_c = None, in_channels
    for i, layer in enumerate(_layout(cfg, batchnorm)):
        space, c, name = f"conv.{i}", layer["channels"], f"features.{layer['conv']}"
        if batchnorm:
            classes = restrict(act.classes, BATCHNORM_CLASSES)
        elif layer["pooled"]:
            classes = restrict(act.classes, MAXPOOL_CLASSES)
        else:
            classes = act.classes
        g.add_space(space, c, classes, activation=act.name)
        g.add_parameter(f"{name}.weight", (c, prev_c, 3, 3))
        if bias:
            g.add_parameter(f"{name}.bias", (c,))
        connect_conv(g, name, space, prev_space)
        if batchnorm:
            add_batchnorm(g, f"features.{layer['bn']}", c, space)
        prev_space, prev_c = space, c

    widths = [prev_c, *hidden, num_classes]
    for j in range(len(widths) - 1):
        name, last = f"classifier.{2 * j}", j == len(widths) - 2
        g.add_parameter(f"{name}.weight", (widths[j + 1], widths[j]))
        g.add_parameter(f"{name}.bias", (widths[j + 1],), fixed=last)
        if not last:
            g.add_space(f"hidden.{j}", widths[j + 1], act.classes, activation=act.name)
            g.connect(f"{name}.weight", f"hidden.{j}", axis=0, role="out")
            g.connect(f"{name}.bias", f"hidden.{j}", axis=0, role="out")
        g.connect(f"{name}.weight", prev_space, axis=1, role="in")
        prev_space = f"hidden.{j}"
    g.validate()
    config = dict(cfg=cfg, in_channels=in_channels, num_classes=num_classes, hidden=hidden,
                  batchnorm=batchnorm, activation=act.name, bias=bias)
    return Architecture(g.name, g, lambda: VGG(cfg, in_channels, num_classes, hidden, batchnorm, act.name, bias),
                        config, inputs=partial(images, in_channels))
