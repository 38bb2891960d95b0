"""Builders refuse invalid arguments with the library's ArgumentError (a ValueError) naming the
argument and the bad value (they used to clamp, truncate or build graphs with negative sizes);
width multipliers round to the nearest integer, at least 1."""
from __future__ import annotations

import re

import pytest

import architectures
from symmetries.errors import ArgumentError

A = architectures

#: (call, the argument the error must name, the bad value as the error shows it)
BAD = {
    "vgg cfg negative": (lambda: A.vgg([-5]), "cfg[0]", "-5"),
    "vgg cfg zero": (lambda: A.vgg([0, "M", 4]), "cfg[0]", "0"),
    "vgg cfg float": (lambda: A.vgg([16.7]), "cfg[0]", "16.7"),
    "vgg cfg string": (lambda: A.vgg(["X"]), "cfg[0]", "'X'"),
    "vgg cfg bool": (lambda: A.vgg([4, True]), "cfg[1]", "True"),
    "vgg cfg not a sequence": (lambda: A.vgg(16), "cfg", "16"),
    "vgg width negative": (lambda: A.vgg([16, "M", 32], width=-1), "width", "-1"),
    "vgg width zero": (lambda: A.vgg([16, "M", 32], width=0), "width", "0"),
    "vgg width nan": (lambda: A.vgg([16], width=float("nan")), "width", "nan"),
    "vgg hidden": (lambda: A.vgg([4], hidden=[3, 2.5]), "hidden[1]", "2.5"),
    "vgg in_channels": (lambda: A.vgg([4], in_channels=0), "in_channels", "0"),
    "vgg num_classes": (lambda: A.vgg([4], num_classes=-2), "num_classes", "-2"),
    "resnet width negative": (lambda: A.resnet(20, width=-1), "width", "-1"),
    "resnet width zero": (lambda: A.resnet(20, width=0), "width", "0"),
    "resnet channels": (lambda: A.resnet(8, channels=(-3, 4, 5)), "channels[0]", "-3"),
    "resnet channels float": (lambda: A.resnet(8, channels=(3, 4.5)), "channels[1]", "4.5"),
    "resnet channels empty": (lambda: A.resnet(8, channels=()), "channels", "[]"),
    "resnet depth float": (lambda: A.resnet(20.5), "depth", "20.5"),
    "resnet num_classes": (lambda: A.resnet(8, num_classes=0), "num_classes", "0"),
    "mlp float width": (lambda: A.mlp([3, 2.7, 2]), "widths[1]", "2.7"),
    "mlp negative width": (lambda: A.mlp([3, -1, 2]), "widths[1]", "-1"),
    "gcn float width": (lambda: A.gcn([3, 2.5, 2]), "widths[1]", "2.5"),
    "gpt2 vocab_size": (lambda: A.gpt2(0, 6, 8, 2, 1), "vocab_size", "0"),
    "gpt2 n_positions": (lambda: A.gpt2(13, -1, 8, 2, 1), "n_positions", "-1"),
    "gpt2 d_model float": (lambda: A.gpt2(13, 6, 8.7, 2, 1), "d_model", "8.7"),
    "gpt2 n_heads": (lambda: A.gpt2(13, 6, 8, 0, 1), "n_heads", "0"),
    "gpt2 n_layers": (lambda: A.gpt2(13, 6, 8, 2, -1), "n_layers", "-1"),
    "gpt2 d_mlp": (lambda: A.gpt2(13, 6, 8, 2, 1, 0), "d_mlp", "0"),
    "gpt2 d_head negative": (lambda: A.gpt2(13, 6, 8, 2, 1, d_head=-2), "d_head", "-2"),
    "gpt2 d_head zero": (lambda: A.gpt2(13, 6, 8, 2, 1, d_head=0), "d_head", "0"),
    "gpt2 eps": (lambda: A.gpt2(13, 6, 8, 2, 1, eps=-1), "eps", "-1"),
    "gpt2 norm_dim": (lambda: A.gpt2(13, 6, 8, 2, 1, norm="rms", norm_dim=-1), "norm_dim", "-1"),
    "vit patch_size zero": (lambda: A.vit(8, 0, 3, 8, 2, 1), "patch_size", "0"),
    "vit patch_size negative": (lambda: A.vit(8, -4, 3, 8, 2, 1), "patch_size", "-4"),
    "vit image_size": (lambda: A.vit(0, 4, 3, 8, 2, 1), "image_size", "0"),
    "vit channels": (lambda: A.vit(8, 4, -1, 8, 2, 1), "channels", "-1"),
    "vit num_classes": (lambda: A.vit(8, 4, 3, 8, 2, 1, num_classes=0), "num_classes", "0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_arguments_are_refused_by_name(case):
    call, name, value = BAD[case]
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} .*got {re.escape(value)}(?![\w.])") as info:
        call()
    assert isinstance(info.value, ArgumentError) and info.value.argument == name


#: the builders' own checks (not the shared size checks): (call, the argument the error names)
OWN = {
    "vgg unknown config": (lambda: A.vgg("vgg99"), "cfg"),
    "vgg only pooling": (lambda: A.vgg(["M"]), "cfg"),
    "mlp one width": (lambda: A.mlp([3]), "widths"),
    "resnet depth rule": (lambda: A.resnet(21), "depth"),
    "gpt2 heads do not divide": (lambda: A.gpt2(13, 6, 9, 2, 1), "d_model"),
    "gpt2 activation": (lambda: A.gpt2(13, 6, 8, 2, 1, activation="swish"), "activation"),
    "gpt2 norm": (lambda: A.gpt2(13, 6, 8, 2, 1, norm="batch"), "norm"),
    "vit patch does not divide": (lambda: A.vit(9, 4, 3, 8, 2, 1), "image_size"),
}


@pytest.mark.parametrize("case", sorted(OWN))
def test_builders_own_checks_raise_the_library_type(case):
    call, name = OWN[case]
    with pytest.raises(ArgumentError) as info:
        call()
    assert isinstance(info.value, ValueError) and info.value.argument == name


def test_width_multipliers_round_to_the_nearest_integer_and_at_least_one():
    assert A.vgg([16, "M", 32], width=0.5).config["cfg"] == [8, "M", 16]
    assert A.vgg([16, 3], width=0.01).config["cfg"] == [1, 1]  # round(0.16) = 0 → 1
    assert A.vgg([5], width=0.5).config["cfg"] == [2]  # round(2.5) = 2: ties to even
    assert A.resnet(8, width=0.5).config["widths"] == [8, 16, 32]
    assert A.resnet(8, width=0.01, channels=(16, 64)).config["widths"] == [1, 1]


def test_integral_values_of_other_types_are_accepted():
    import numpy as np
    assert A.vgg([np.int64(4), 6.0]).config["cfg"] == [4, 6]
    assert A.mlp(np.array([3, 4, 2])).config["widths"] == [3, 4, 2]
    g = A.gpt2(13.0, 6, 8, 2, 1, d_head=np.int32(3)).graph
    assert g.space("blocks.0.attn.qk").size == 6 and g.parameter("wte.weight").shape == (13, 8)
    assert A.gpt2(13, 6, 8, 2, 0).graph.space("residual").size == 8  # no blocks is allowed
