"""Activation matching on planted problems (B = T·A: B's activations are T times A's)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

import architectures
import solvers
from symmetries import (Invertible, Orthogonal, Permutation, PermutationScaling, SignedPermutation, apply,
                        random_transforms)

# |x| rather than ReLU: a unit dead on every sample carries no information to recover it from
CASES = [("abs", Permutation()), ("abs", PermutationScaling()), ("tanh", SignedPermutation()),
         ("identity", Orthogonal()), ("identity", Invertible())]


@pytest.mark.parametrize("act,cls", CASES, ids=lambda c: getattr(c, "name", c))
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16))
def test_planted_activation_matching(act, cls, seed):
    arch = architectures.mlp([10, 8, 6, 3], activation=act)
    a = {k: v.double() for k, v in arch.module(seed=seed).state_dict().items()}
    t = random_transforms(arch.graph, seed, classes=cls)
    b = apply(arch.graph, a, t)
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sol = solvers.solve("activation_matching", arch, a, b, classes=cls, data=x)
    assert sol.objective_before > 1.0 and sol.objective_after <= 1e-8 * sol.objective_before
    assert sol.extra["weight_objective_after"] <= 1e-10 * max(1.0, sol.extra["weight_objective_before"])
    for space in t:
        want = t.inverse()[space].as_matrix()
        got = sol.transforms[space].as_matrix()
        if isinstance(cls, (Permutation, SignedPermutation)):
            assert torch.equal(got, want)
        else:
            assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


@settings(max_examples=4)
@given(seed=st.integers(0, 2**16))
def test_planted_invertible_by_cca(seed):
    arch = architectures.mlp([10, 8, 6, 3], activation="identity")
    a = {k: v.double() for k, v in arch.module(seed=seed).state_dict().items()}
    t = random_transforms(arch.graph, seed, classes=Invertible())
    b = apply(arch.graph, a, t)
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sol = solvers.solve("activation_matching", arch, a, b, classes=Invertible(), data=x, invertible="cca")
    for space in t:
        assert torch.allclose(sol.transforms[space].as_matrix(), t.inverse()[space].as_matrix(), atol=1e-6)
    with pytest.raises(ValueError, match="invertible"):
        solvers.solve("activation_matching", arch, a, b, classes=Invertible(), data=x, invertible="svd")


def test_dataloader_modules_and_sites():
    arch = architectures.mlp([6, 7, 5, 2])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    t = random_transforms(arch.graph, 3, classes=Permutation())
    b = apply(arch.graph, a, t)
    x = torch.randn(64, 6, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, torch.zeros(64)), batch_size=16)
    ma, mb = arch.module(dtype=torch.float64), arch.module(dtype=torch.float64)
    before = {k: v.clone() for k, v in ma.state_dict().items()}
    sol = solvers.solve("activation_matching", arch.graph, a, b, classes=Permutation(), data=loader,
                        models=(ma, mb), sites={"hidden.0": "layers.0", "hidden.1": "layers.1"},
                        statistic="cross")
    for space in t:
        assert torch.equal(sol.transforms[space].as_matrix(), t.inverse()[space].as_matrix())
    assert all(torch.equal(before[k], v) for k, v in ma.state_dict().items())  # modules untouched
    assert sol.extra["sites"] == {"hidden.0": "layers.0", "hidden.1": "layers.1"}


def test_activation_matching_errors():
    arch = architectures.mlp([6, 7, 2])
    a, b = ({k: v.double() for k, v in arch.module(seed=s).state_dict().items()} for s in (0, 1))
    with pytest.raises(solvers.SolverInputError, match="data"):
        solvers.solve("activation_matching", arch, a, b, classes=Permutation())
    x = torch.randn(8, 6, dtype=torch.float64)
    with pytest.raises(solvers.SolverInputError, match="nope"):
        solvers.solve("activation_matching", arch, a, b, classes=Permutation(), data=x, sites={"hidden.0": "nope"})
    with pytest.raises(solvers.UnsupportedClassError):
        from symmetries import SemiPermutation
        solvers.solve("activation_matching", arch, a, b, classes=SemiPermutation(), data=x)
    with pytest.raises(ValueError, match="statistic"):
        solvers.solve("activation_matching", arch, a, b, classes=Permutation(), data=x, statistic="cka")


def _stream_distance(modules, site, x):
    """``‖Z_A − Z_B‖²`` of the outputs of ``site`` (channels on axis 1 for 4-D outputs)."""
    outs = []
    for m in modules:
        got = {}
        h = m.get_submodule(site).register_forward_hook(lambda mod, i, o: got.setdefault("z", o))
        with torch.no_grad():
            m(x)
        h.remove()
        outs.append(got["z"])
    return float(((outs[0] - outs[1]) ** 2).sum())


def test_residual_streams_are_read_where_the_stream_is_returned():
    """A ResNet stage's stream is the stage's output (shortcut + branch, after the ReLU), not the
    last branch's BatchNorm with a ReLU applied; a transformer's residual stream (RMS rewrite) is
    every block's output, not the last MLP's projection."""
    from solvers.algorithms.activation_matching import default_sites
    from symmetries import Trivial
    resnet = architectures.resnet(depth=14, channels=(4, 8, 16))
    sites = default_sites(resnet.graph, resnet.module())
    assert [sites[f"stream.{k}"] for k in range(3)] == ["layer1", "layer2", "layer3"]
    assert sites["layer2.1.inner"] == "layer2.1.bn1" and sites["layer1.0.inner"] == "layer1.0.bn1"  # plain spaces
    gpt = architectures.gpt2(50, 16, 16, 4, 2, 32, norm="rms", tie_embeddings=True)
    gsites = default_sites(gpt.graph, gpt.module())
    assert gsites["residual"] == ("blocks.0", "blocks.1") and gsites["blocks.1.mlp"] == "blocks.1.mlp.fc"
    assert default_sites(architectures.mlp([4, 5, 6, 2]).graph, architectures.mlp([4, 5, 6, 2]).module()) == \
        {"hidden.0": "layers.0", "hidden.1": "layers.1"}

    # the features read are the stream's values: the activation objective at the identity is the
    # distance between the stage outputs themselves (no second activation, channels on axis 1)
    a, b = ({k: v.double() for k, v in resnet.module(seed=s).state_dict().items()} for s in (0, 1))
    modules = []
    for p in (a, b):
        m = resnet.module(dtype=torch.float64)
        m.load_state_dict(p)
        modules.append(m.eval())
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for space, site in (("stream.1", "layer2"), ("stream.2", "layer3")):
        classes = {s.name: (Permutation() if s.name == space else Trivial()) for s in resnet.graph.spaces()}
        sol = solvers.solve("activation_matching", resnet.graph, a, b, classes=classes, data=x,
                            models=tuple(modules))
        assert sol.extra["sites"] == {space: site}
        assert sol.objective_before == pytest.approx(_stream_distance(modules, site, x), rel=1e-12)
    # planted: B = P·A at every space is recovered from the streams
    t = random_transforms(resnet.graph, 3, classes=Permutation())
    sol = solvers.solve("activation_matching", resnet, a, apply(resnet.graph, a, t), classes=Permutation(), data=x)
    for space in t:
        assert torch.equal(sol.transforms[space].as_matrix(), t.inverse()[space].as_matrix()), space
