"""The real-model corpus (issue #13): the module structures of torchvision and timm models, copied at
small widths (tests/corpus_tv.py, corpus_tv_more.py, corpus_timm.py: torchvision and timm are not
installable beside CI's torch), and torch.nn's own transformer, RNN and GroupNorm modules.

Each case states its outcome. ``ok``: ``from_module`` extracts at least the stated number of spaces
with a non-trivial class, and random transforms of every admitted class (each space alone, then all
at once) keep the float64 output to 1e-10. ``refused``: ``from_module`` raises ``ExtractionError``
naming the stated fx node and why; ``unknown="fixed"`` then yields a graph whose transforms keep the
output too. A construct moving from ``ok`` to ``refused`` (or losing spaces) fails here, and so does
one that now extracts a graph changing the function; one moving from ``refused`` to ``ok`` fails
until its expectation is updated. Hugging Face models are in tests/test_hf_extract.py.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import architectures
import symmetries as sy
from symmetries.testing import check_invariance

import corpus_timm as timm
import corpus_tv as tv
import corpus_tv_more as tv2

IMAGE, PATCHES = (2, 3, 16, 16), (2, 3, 8, 8)


class Recurrent(nn.Module):
    """Embedding → ``cell`` (2 layers) → a linear head on every step."""

    def __init__(self, cell):
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(11, 4), cell(4, 6, num_layers=2, batch_first=True), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])


class Encoder(nn.Module):
    """``nn.TransformerEncoder`` between two linear maps."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=True)
        self.inp, self.out = nn.Linear(3, 8), nn.Linear(8, 2)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)))


class GroupNormNet(nn.Module):
    """Conv → GroupNorm → ReLU → conv, as in ResNet/RegNet variants with group normalisation."""

    def __init__(self):
        super().__init__()
        self.conv1, self.norm, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.norm(self.conv1(x)))).mean((2, 3)))


def ints(*shape):
    return lambda g: torch.randint(0, 11, shape, generator=g)


def floats(*shape):
    return lambda g: torch.randn(*shape, generator=g, dtype=torch.float64)


OK, REFUSED = "ok", "refused"
#: name → (model, inputs, outcome, non-trivial spaces at least | (fx node, words of the reason))
CASES = {
    "tv-resnet-basicblock": (lambda: tv.ResNet(tv.BasicBlock, (2, 1)), floats(*IMAGE), OK, 5),
    "tv-resnet-bottleneck": (lambda: tv.ResNet(tv.Bottleneck, (1, 1), (2, 3)), floats(*IMAGE), OK, 7),
    "tv-mobilenet-v2": (tv.MobileNetV2, floats(*IMAGE), OK, 5),
    "tv-squeezenet-fire": (tv.SqueezeNet, floats(*IMAGE), OK, 7),
    "tv-densenet-concat": (tv.DenseNet, floats(*IMAGE), OK, 10),
    "tv-googlenet-inception": (tv.GoogLeNet, floats(*IMAGE), OK, 13),
    "tv-vit-multihead-attention": (tv2.TvVisionTransformer, floats(*PATCHES), OK, 7),
    "timm-resnet": (timm.TimmResNet, floats(*IMAGE), OK, 5),
    "timm-convnext-gamma-reshape": (timm.TimmConvNeXt, floats(*IMAGE), OK, 3),
    "timm-efficientnet-bn-act-se": (timm.TimmEfficientNet, floats(*IMAGE), OK, 7),
    "timm-mobilenetv3-hardswish": (lambda: timm.TimmEfficientNet(nn.Hardswish, nn.Hardsigmoid), floats(*IMAGE),
                                   OK, 7),
    # extracted since the corpus was written (issue #13 §2): grouped convs, flatten (a repeated edge), channel
    # shuffle (the shuffled spaces keep nothing; the others do), fused and manual timm attention, torch.nn modules
    "tv-resnext-grouped-conv": (lambda: tv.ResNet(tv.Bottleneck, (1, 1), (2, 3), groups=2), floats(*IMAGE), OK, 7),
    "tv-vgg-flatten": (tv2.VGG, floats(*IMAGE), OK, 4),
    "tv-shufflenet-channel-shuffle": (tv2.ShuffleNetV2, floats(*IMAGE), OK, 4),
    "timm-vit-qkv-reshape": (timm.VisionTransformer, floats(*PATCHES), OK, 7),
    "timm-vit-manual-attention-layerscale": (lambda: timm.VisionTransformer(fused=False, init_values=1e-5),
                                             floats(*PATCHES), OK, 7),
    "nn-transformer-encoder": (Encoder, floats(2, 5, 3), OK, 7),
    "nn-lstm": (lambda: Recurrent(nn.LSTM), ints(2, 5), OK, 3),
    "nn-gru": (lambda: Recurrent(nn.GRU), ints(2, 5), OK, 3),
    "nn-groupnorm": (GroupNormNet, floats(*IMAGE), OK, 2),
    # refused: a stochastic depth that is not torchvision's own function (the rule is registered by its qualified
    # name, torchvision.ops.stochastic_depth, and these copies live elsewhere)
    "tv-convnext-stochastic-depth": (tv2.ConvNeXt, floats(*IMAGE), REFUSED, ("stochastic_depth", "no rule")),
    "tv-efficientnet-stochastic-depth": (tv2.EfficientNet, floats(*IMAGE), REFUSED, ("stochastic_depth", "no rule")),
}


def build(case):
    make, inputs, _, _ = CASES[case]
    torch.manual_seed(0)
    return make().double().eval(), (inputs(torch.Generator().manual_seed(1)),)


def assert_keeps_the_output(model, g, x):
    report = check_invariance(model, g, x, examples=2)
    assert report.passed, [c.message() for c in report.failures]
    with torch.no_grad():
        scale = max(1.0, float(model(*x).abs().max()))
    assert max(c.max_error for c in report.checks) <= 1e-10 * scale, [c.message() for c in report.checks]


def nontrivial(g) -> int:
    return sum(any(not isinstance(c, sy.Trivial) for c in s.classes) for s in g.spaces())


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][2] == OK))
def test_extracts_and_every_admitted_class_keeps_the_output(case):
    model, x = build(case)
    g = architectures.from_module(model, x)
    assert nontrivial(g) >= CASES[case][3], [(s.name, s.classes) for s in g.spaces()]
    assert_keeps_the_output(model, g, x)


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][2] == REFUSED))
def test_refuses_naming_the_node(case):
    model, x = build(case)
    node, reason = CASES[case][3]
    with pytest.raises(architectures.ExtractionError) as err:
        architectures.from_module(model, x)
    assert err.value.node == node, str(err.value)
    assert reason in str(err.value)
    fixed = architectures.from_module(model, x, unknown="fixed")  # the rest keeps its symmetries, exactly
    if nontrivial(fixed):
        assert_keeps_the_output(model, fixed, x)
