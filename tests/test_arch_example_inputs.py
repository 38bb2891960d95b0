"""Architecture.example_inputs (set by each builder) and the activation table."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import architectures
import symmetries as sy
from symmetries.testing import example_inputs

BUILT = [architectures.mlp([3, 5, 2]), architectures.vgg([2, "M", 3], in_channels=2, num_classes=3),
         architectures.resnet(8, channels=[2], in_channels=2, num_classes=3), architectures.gcn([3, 4, 2]),
         architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=4),
         architectures.vit(8, 4, 2, 8, n_heads=2, n_layers=1, d_mlp=4, num_classes=5)]


def _run(arch, x):
    m = arch.module(seed=0, dtype=torch.float64)
    return m(*x) if isinstance(x, tuple) else m(x)


@pytest.mark.parametrize("arch", BUILT, ids=lambda a: a.name)
def test_every_builder_carries_inputs_its_module_takes(arch):
    x = arch.example_inputs(3, seed=1)
    assert torch.isfinite(_run(arch, x)).all()
    again, other = arch.example_inputs(3, seed=1), arch.example_inputs(3, seed=2)
    flat = lambda v: torch.cat([t.flatten().double() for t in (v if isinstance(v, tuple) else (v,))])  # noqa: E731
    assert torch.equal(flat(x), flat(again)) and not torch.equal(flat(x), flat(other))
    assert torch.equal(flat(example_inputs(arch, 3, seed=1)), flat(x))  # the strategies read the same


def test_sizes_dtype_and_batch():
    vgg, gcn, mlp = BUILT[1], BUILT[3], BUILT[0]
    assert vgg.example_inputs(2, image_size=5).shape == (2, 2, 5, 5)
    feats, adj = gcn.example_inputs(nodes=4, dtype=torch.float32)
    assert feats.shape == (4, 3) and adj.shape == (4, 4) and torch.equal(adj, adj.T) and feats.dtype == torch.float32
    assert mlp.example_inputs(7).shape == (7, 3)
    with pytest.raises(architectures.ExampleInputsError, match="image_size"):
        mlp.example_inputs(image_size=5)
    with pytest.raises(architectures.ExampleInputsError, match="batch"):
        mlp.example_inputs(0)


def test_an_architecture_without_inputs_is_a_typed_error():
    arch = BUILT[0]
    bare = architectures.Architecture(arch.name, arch.graph, arch.factory, arch.config)
    for call in (bare.example_inputs, lambda: example_inputs(bare)):
        with pytest.raises(architectures.ExampleInputsError, match=re.escape(arch.name)) as err:
            call()
        assert isinstance(err.value, sy.errors.SymmetryError) and err.value.architecture == arch.name


def test_activation_facts_give_the_classes():
    acts = architectures.ACTIVATIONS
    assert acts["relu"].classes == (sy.PermutationScaling(), sy.SemiPermutation())
    assert acts["tanh"].classes == acts["erf"].classes == (sy.SignedPermutation(),)
    assert acts["gelu"].classes == acts["exp"].classes == (sy.Permutation(),)
    assert acts["identity"].classes == (sy.Invertible(),)
    assert acts["hardtanh"].classes_of(nn.Hardtanh(-1, 2)) == (sy.Permutation(),)
    assert architectures.representative_activations() == ("relu", "tanh", "gelu")
    assert "exp" not in architectures.builder_activations() and "mish" in architectures.builder_activations()
    with pytest.raises(architectures.UnknownActivationError, match="exp"):
        architectures.mlp([2, 3, 1], activation="exp")


@pytest.mark.parametrize("name", [n for n, a in architectures.ACTIVATIONS.items() if a.module is not None
                                  and not a.linear])
def test_extraction_reads_the_table_for_every_builder_activation(name):
    """An MLP of each activation: extraction finds the table's classes and records the name."""
    arch = architectures.mlp([3, 4, 2], activation=name)
    g = architectures.from_module(arch.module(seed=0), torch.randn(2, 3))
    act = architectures.ACTIVATIONS[name]
    assert g.space("layers.0").classes == act.classes and g.space("layers.0").activation == name
