"""BatchNorm reset, REPAIR and MergeMany on planted cases (real training on bundled digits)."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from symmetries import landscape as L
from symmetries import posteriors as P
from symmetries.demo.data import digits
from symmetries.demo import train_classifier
from symmetries.errors import GraphError
from symmetries.testing.strategies import mlp_architectures, seeds


def _train(model, data, epochs, seed):
    return train_classifier(model, data, epochs=epochs, seed=seed, lr=3e-3)


@pytest.fixture(scope="module")
def split():
    return digits(seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def mlps(split):
    arch = architectures.mlp([64, 48, 48, 10])
    return arch, [_train(arch.module(seed=s, dtype=torch.float64), split.train, 12, s) for s in (0, 1)]


def _bn_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 10)).double()


# -- BatchNorm reset ------------------------------------------------------------------------------
def test_batchnorm_reset_measures_exact_statistics_and_lowers_the_midpoint_loss(split):
    a = _train(_bn_net(0), split.train, 8, 0)
    b = _train(_bn_net(1), split.train, 8, 1)
    net = _bn_net(2)
    mid = L.interpolate(a, b, 0.5)
    x = split.train[0]
    reset = L.reset_batchnorm(net, mid, (x, split.train[1]), batch_size=len(x))  # one batch: exact statistics
    h = nn.functional.linear(x, mid["0.weight"], mid["0.bias"])
    torch.testing.assert_close(reset["1.running_mean"], h.mean(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(reset["1.running_var"], h.var(0, unbiased=True), rtol=1e-10, atol=1e-12)
    assert torch.equal(reset["0.weight"], mid["0.weight"])          # weights untouched
    again = L.reset_batchnorm(net.float(), mid, (x, split.train[1]), batch_size=len(x))  # float32 module
    assert again["1.running_mean"].dtype == torch.float64
    torch.testing.assert_close(again["1.running_var"], reset["1.running_var"], rtol=1e-12, atol=0)
    net.double()
    assert torch.equal(mid["1.running_mean"], L.interpolate(a, b, 0.5)["1.running_mean"])  # input untouched
    before = L.evaluate(net, split.test, mid).loss
    after = L.evaluate(net, split.test, L.reset_batchnorm(net, mid, split.train)).loss
    assert after < 0.8 * before, (before, after)
    curve = L.interpolation_curve(net, a, b, split.test, alphas=5,
                                  adjust=L.batchnorm_adjust(net, split.train))
    plain = L.interpolation_curve(net, a, b, split.test, alphas=5)
    assert curve.loss_barrier < plain.loss_barrier


def _two_bn_net(seed, conv=False):
    torch.manual_seed(seed)
    if conv:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5),
                             nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3)).double()
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 7), nn.BatchNorm1d(7),
                         nn.ReLU(), nn.Linear(7, 3)).double()


@torch.no_grad()
def _full_data_statistics(net, params, x):
    """Each BatchNorm's input over all of ``x`` at once, in eval mode, upstream layers already set:
    ``{layer: (mean, unbiased variance)}`` per channel, computed layer by layer by hand."""
    net = copy.deepcopy(net)
    net.load_state_dict(params)
    net.eval()
    out = {}
    h = x
    for i, layer in enumerate(net):
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            rows = h.movedim(1, 0).reshape(h.shape[1], -1)
            out[i] = (rows.mean(1), rows.var(1, unbiased=True))
            layer.running_mean.copy_(out[i][0])
            layer.running_var.copy_(out[i][1])
        h = layer(h)
    return out


@pytest.mark.parametrize("conv", [False, True])
def test_batchnorm_reset_is_exact_over_unequal_batches(conv):
    """Unequal batches (and a one-shot generator of them) give the full-data statistics of every
    layer, the second one included (its input depends on the first one's statistics)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(61, 1, 8, 8, generator=g, dtype=torch.float64) if conv else
         torch.randn(61, 6, generator=g, dtype=torch.float64)) * 3 + 1
    y = torch.randint(0, 3, (61,), generator=g)
    net = _two_bn_net(0, conv)
    params = {k: v.detach().clone() for k, v in _two_bn_net(1, conv).state_dict().items()}
    expected = _full_data_statistics(net, params, x)
    sizes = [2, 40, 5, 14]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    unequal = [(x[s:s + n], y[s:s + n]) for s, n in zip(starts, sizes)]
    runs = {"unequal": L.reset_batchnorm(net, params, unequal),
            "generator": L.reset_batchnorm(net, params, (b for b in unequal)),
            "batch_size=16": L.reset_batchnorm(net, params, (x, y), batch_size=16),
            "one batch": L.reset_batchnorm(net, params, (x, y), batch_size=len(x))}
    for how, reset in runs.items():
        for i, (mean, var) in expected.items():
            torch.testing.assert_close(reset[f"{i}.running_mean"], mean, rtol=1e-10, atol=1e-12, msg=how)
            torch.testing.assert_close(reset[f"{i}.running_var"], var, rtol=1e-10, atol=1e-12, msg=how)
    assert int(runs["unequal"]["1.num_batches_tracked"]) == 4
    # the model evaluated with the reset statistics sees standardized inputs at every BatchNorm
    again = _full_data_statistics(net, runs["unequal"], x)
    for i, (mean, var) in expected.items():
        torch.testing.assert_close(again[i][0], mean, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(params[k], v) for k, v in _two_bn_net(1, conv).state_dict().items())   # inputs untouched


def test_batchnorm_reset_needs_two_values_per_channel():
    net = _two_bn_net(0)
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="at least 2"):
        L.reset_batchnorm(net, params, (torch.randn(1, 6, dtype=torch.float64), torch.zeros(1).long()))


def test_batchnorm_reset_needs_batchnorm(mlps, split):
    arch, (a, _) = mlps
    with pytest.raises(ValueError, match="no BatchNorm"):
        L.reset_batchnorm(arch.module(dtype=torch.float64), a, split.train)


# -- REPAIR --------------------------------------------------------------------------------------
def test_repair_hits_the_target_statistics_exactly(mlps, split):
    arch, (a, b) = mlps
    model = arch.module(dtype=torch.float64)
    alpha = 0.3
    fixed = L.repair(model, arch.graph, a, b, alpha, split.train)
    sa, sb = L.channel_stats(model, arch.graph, split.train, a), L.channel_stats(model, arch.graph, split.train, b)
    got = L.channel_stats(model, arch.graph, split.train, fixed)
    assert list(got) == ["hidden.0", "hidden.1"]     # forward order
    for s in got:
        torch.testing.assert_close(got[s][0], (1 - alpha) * sa[s][0] + alpha * sb[s][0], rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(got[s][1], (1 - alpha) * sa[s][1] + alpha * sb[s][1], rtol=1e-7, atol=1e-8)
    at_zero = L.repair(model, arch.graph, a, b, 0.0, split.train)
    for k in a:
        torch.testing.assert_close(at_zero[k], a[k], rtol=1e-6, atol=1e-8)


def test_repair_lowers_the_midpoint_loss_of_a_naive_interpolation(mlps, split):
    arch, (a, b) = mlps
    model = arch.module(dtype=torch.float64)
    plain = L.evaluate(model, split.test, L.interpolate(a, b, 0.5)).loss
    fixed = L.evaluate(model, split.test, L.repair(model, arch.graph, a, b, 0.5, split.train)).loss
    assert fixed < 0.8 * plain, (plain, fixed)
    curve = L.interpolation_curve(model, a, b, split.test, alphas=5,
                                  adjust=L.repair_adjust(model, arch.graph, a, b, split.train))
    assert curve.midpoint[0] == pytest.approx(fixed, rel=1e-9)


def test_repair_refuses_spaces_without_a_bias(split):
    arch = architectures.mlp([64, 8, 10], bias=False)
    p = {k: v.detach() for k, v in arch.module(seed=0).state_dict().items()}
    with pytest.raises(GraphError, match="hidden.0"):
        L.repair(arch.module(), arch.graph, p, p, 0.5, split.train)


# -- MergeMany ------------------------------------------------------------------------------------
def _wm(graph, target, params):
    """Permutation weight matching via the posterior aligner with zero variances."""
    z = lambda p: P.MeanField(dict(p), {k: torch.zeros_like(v) for k, v in p.items()})  # noqa: E731
    return P.align_posteriors(graph, z(target), z(params), classes=sy.Permutation()).transforms


def test_merge_many_brings_planted_copies_into_one_frame(mlps):
    arch, (a, _) = mlps
    g = torch.Generator().manual_seed(0)
    models = []
    for i in range(4):
        t = sy.random_transforms(arch.graph, 10 + i, classes=sy.Permutation())
        noisy = {k: v + 1e-3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
        models.append(sy.apply(arch.graph, noisy, t))
    noise = 1e-3 * sum(v.numel() for v in a.values()) ** 0.5   # norm of one copy's noise
    naive = L.mean_params(models)
    merged = L.merge_many(arch.graph, models, solve=_wm, seed=0)
    assert merged.converged and merged.rounds <= 3
    spread = max(L.l2_distance(merged.params, m) for m in merged.aligned)
    assert spread < 1.2 * noise and 20 * noise < min(L.l2_distance(naive, m) for m in models)
    # the merge is A (averaged noise) up to one permutation
    frame = _wm(arch.graph, a, merged.params)
    assert L.l2_distance(a, sy.apply(arch.graph, merged.params, frame)) < 0.75 * noise


def test_merge_many_needs_two_models(mlps):
    arch, (a, _) = mlps
    with pytest.raises(ValueError, match="at least two"):
        L.merge_many(arch.graph, [a], solve=_wm)


def _has_weight_matching() -> bool:
    import solvers
    return "weight_matching" in [i.name for i in solvers.available()]


@pytest.mark.skipif(not _has_weight_matching(), reason="needs the solvers package's weight_matching")
def test_merge_many_with_the_built_in_weight_matching(mlps):
    arch, (a, _) = mlps
    models = [sy.apply(arch.graph, a, sy.random_transforms(arch.graph, 20 + i, classes=sy.Permutation()))
              for i in range(3)]
    merged = L.merge_many(arch.graph, models, method="weight_matching", seed=1)
    assert merged.converged
    assert max(L.l2_distance(merged.params, m) for m in merged.aligned) < 1e-6


@pytest.mark.skipif(not _has_weight_matching(), reason="needs the solvers package")
def test_merge_many_takes_an_architecture_and_data_for_data_driven_solvers(mlps, split):
    arch, (a, _) = mlps
    models = [sy.apply(arch.graph, a, sy.random_transforms(arch.graph, 30 + i, classes=sy.Permutation()))
              for i in range(3)]
    by_graph = L.merge_many(arch.graph, models, method="weight_matching", seed=1)
    by_arch = L.merge_many(arch, models, method="weight_matching", seed=1)
    assert by_arch.converged and by_arch.rounds == by_graph.rounds
    assert all(torch.equal(by_arch.params[k], by_graph.params[k]) for k in by_graph.params)
    x = split.train[0][:256]
    merged = L.merge_many(arch, models, method="activation_matching", data=(x, split.train[1][:256]), seed=0)
    model = arch.module(dtype=torch.float64)
    # activations cannot tell dead units apart, so the weights need not coincide; the function does
    ends = L.evaluate(model, split.test, a)
    got, naive = L.evaluate(model, split.test, merged.params), L.evaluate(model, split.test, L.mean_params(models))
    assert merged.converged and got.accuracy > ends.accuracy - 0.03 and got.loss < 0.5 * naive.loss, (got, naive)
    with pytest.raises(sy.errors.SymmetryError, match="data"):                    # a data solver without data
        L.merge_many(arch, models, method="activation_matching")


def test_repair_of_a_convolutional_network_hits_the_target_statistics():
    arch = architectures.vgg((6, "M", 8), in_channels=1, num_classes=3)
    model = arch.module(dtype=torch.float64)
    a, b = ({k: v.detach() for k, v in arch.module(seed=s, dtype=torch.float64).state_dict().items()} for s in (0, 1))
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(32, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (32,), generator=g))
    fixed = L.repair(model, arch.graph, a, b, 0.5, data)
    sa, sb = L.channel_stats(model, arch.graph, data, a), L.channel_stats(model, arch.graph, data, b)
    got = L.channel_stats(model, arch.graph, data, fixed)
    assert set(got) == {s.name for s in arch.graph.spaces()} and len(got) >= 2
    for s in got:   # conv channels: statistics over batch and spatial positions
        torch.testing.assert_close(got[s][0], 0.5 * (sa[s][0] + sb[s][0]), rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(got[s][1], 0.5 * (sa[s][1] + sb[s][1]), rtol=1e-7, atol=1e-8)


def test_activations_need_one_producing_linear_or_conv():
    arch = architectures.vgg((6, "M", 8), in_channels=1, num_classes=3, batchnorm=True)
    p = {k: v.detach() for k, v in arch.module(seed=0).state_dict().items()}
    with pytest.raises(GraphError, match="conv.0"):
        L.repair(arch.module(), arch.graph, p, p, 0.5, (torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)))


@settings(max_examples=15)
@given(mlp_architectures(max_depth=3, max_width=8, activations=["relu", "tanh", "gelu"]), seeds, st.floats(0, 1))
def test_repair_property_on_drawn_mlps(arch, seed, alpha):
    assume(arch.config["bias"])  # REPAIR needs biases (the refusal is tested above)
    a, b = ({k: v.detach() for k, v in arch.module(seed=s, dtype=torch.float64).state_dict().items()}
            for s in (seed % 1000, seed % 1000 + 1))
    g = torch.Generator().manual_seed(seed % 1000)
    data = (torch.randn(64, arch.config["widths"][0], generator=g, dtype=torch.float64), torch.zeros(64).long())
    model = arch.module(dtype=torch.float64)
    fixed = L.repair(model, arch.graph, a, b, alpha, data)
    sa, sb = L.channel_stats(model, arch.graph, data, a), L.channel_stats(model, arch.graph, data, b)
    got = L.channel_stats(model, arch.graph, data, fixed)
    for s in got:
        torch.testing.assert_close(got[s][0], (1 - alpha) * sa[s][0] + alpha * sb[s][0], rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(got[s][1], (1 - alpha) * sa[s][1] + alpha * sb[s][1], rtol=1e-7, atol=1e-9)
