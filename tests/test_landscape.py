"""Interpolation, curves and barriers (both definitions), distance and CKA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from conftest import RTOL
from symmetries import landscape as L
from symmetries.errors import MissingParameterError, ShapeMismatchError, UnknownParameterError
from symmetries.testing.strategies import mlp_architectures, seeds


def _params(arch, seed, dtype=torch.float64):
    return {k: v.detach().clone() for k, v in arch.module(seed=seed, dtype=dtype).state_dict().items()}


def _data(n_in, n_out, n=64, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g, dtype=dtype), torch.randint(0, n_out, (n,), generator=g)


# -- interpolation -----------------------------------------------------------------------------
@settings(max_examples=40)
@given(mlp_architectures(max_depth=2, max_width=8), seeds, st.floats(0, 1))
def test_interpolation_is_linear_and_leaves_inputs_alone(arch, seed, alpha):
    a, b = _params(arch, seed % 1000), _params(arch, seed % 1000 + 1)
    a0, b0 = {k: v.clone() for k, v in a.items()}, {k: v.clone() for k, v in b.items()}
    mid = L.interpolate(a, b, alpha)
    back = L.interpolate(b, a, 1 - alpha)
    for k in a:
        expect = (1 - alpha) * a[k] + alpha * b[k]
        torch.testing.assert_close(mid[k], expect, rtol=RTOL[torch.float64], atol=1e-14)
        torch.testing.assert_close(back[k], expect, rtol=RTOL[torch.float64], atol=1e-14)
        assert torch.equal(a[k], a0[k]) and torch.equal(b[k], b0[k])
    assert all(torch.equal(L.interpolate(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(L.interpolate(a, b, 1.0)[k], b[k]) for k in a)


def test_interpolation_numpy_and_integer_tensors():
    a = {"w": np.ones((2, 3)), "n": torch.tensor(3)}
    b = {"w": np.zeros((2, 3)), "n": torch.tensor(7)}
    out = L.interpolate(a, b, 0.25)
    assert isinstance(out["w"], np.ndarray) and np.allclose(out["w"], 0.75)
    assert int(out["n"]) == 3 and int(L.interpolate(a, b, 0.75)["n"]) == 7


def test_interpolation_rejects_mismatched_sets_naming_the_tensor():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    with pytest.raises(MissingParameterError, match="'b'"):
        L.interpolate(a, {"w": torch.zeros(2, 3)}, 0.5)
    with pytest.raises(UnknownParameterError, match="'c'"):
        L.interpolate(a, {**a, "c": torch.zeros(1)}, 0.5)
    with pytest.raises(ShapeMismatchError, match="'w'.*\\(2, 3\\).*\\(3, 2\\)"):
        L.interpolate(a, {"w": torch.zeros(3, 2), "b": torch.zeros(2)}, 0.5)


def test_default_grid_has_25_points_with_both_endpoints():
    a = L.alphas()
    assert a.numel() == 25 and float(a[0]) == 0.0 and float(a[-1]) == 1.0 and float(a[12]) == 0.5


def test_alpha_grid_takes_any_integer_and_names_other_numbers():
    import numpy as np
    for n in (9, np.int64(9), np.int32(9), np.array(9), torch.tensor(9)):
        g = L.alpha_grid(n)
        assert g.shape == (9,) and g[0] == 0.0 and g[-1] == 1.0 and g.dtype == np.float64, type(n)
    assert L.alpha_grid(None).shape == (25,)
    np.testing.assert_array_equal(L.alpha_grid([0.0, 0.25, 1.0]), [0.0, 0.25, 1.0])
    for bad in (9.0, 0.5, True, np.float64(3.0)):
        with pytest.raises(TypeError, match="integer"):
            L.alpha_grid(bad)
    with pytest.raises(ValueError, match="at least 2"):
        L.alpha_grid(np.int64(1))


# -- barrier definitions on synthetic curves ---------------------------------------------------
def test_barrier_definitions_on_a_known_curve():
    a = L.alphas(401).numpy()
    v = 1 + 2 * a + 4 * a * (1 - a)       # endpoints 1 and 3, bump 4α(1−α)
    # mean of endpoints: max v = v(3/4) = 3.25, minus 2
    assert L.barrier_mean(a, v) == pytest.approx(1.25, abs=1e-12)
    # linear interpolation of endpoints: max 4α(1−α) = 1 at α = 1/2
    assert L.barrier_linear(a, v) == pytest.approx(1.0, abs=1e-12)
    # accuracies: a dip, higher is better
    acc = 0.9 - 0.1 * a - 0.4 * a * (1 - a)
    assert L.barrier_linear(a, acc, higher_is_better=True) == pytest.approx(0.1, abs=1e-12)
    assert L.barrier_mean(a, acc, higher_is_better=True) == pytest.approx(0.85 - acc.min(), abs=1e-12)


@settings(max_examples=200)
@given(st.floats(-5, 5), st.floats(-5, 5), st.floats(0, 3), st.integers(1, 12))
def test_barrier_definitions_property(l0, l1, height, half):
    a = np.linspace(0, 1, 2 * half + 1)
    v = (1 - a) * l0 + a * l1 + 4 * height * a * (1 - a)
    assert L.barrier_linear(a, v) == pytest.approx(height, abs=1e-9)
    assert L.barrier_mean(a, v) == pytest.approx(max(v) - (l0 + l1) / 2, abs=1e-9)
    # the two definitions agree when the endpoints agree; mean-of-endpoints ≥ linear otherwise
    assert L.barrier_mean(a, v) >= L.barrier_linear(a, v) - abs(l1 - l0) / 2 - 1e-9
    if l0 == l1:
        assert L.barrier_mean(a, v) == pytest.approx(L.barrier_linear(a, v), abs=1e-9)


def test_barrier_needs_both_endpoints():
    with pytest.raises(ValueError, match="from 0 to 1"):
        L.barrier_mean([0.1, 0.5, 1.0], [1, 2, 3])
    with pytest.raises(ValueError, match="matching"):
        L.barrier_linear([0, 1], [1, 2, 3])


# -- curves of real models ------------------------------------------------------------------------
@settings(max_examples=15)
@given(mlp_architectures(max_depth=2, max_width=8, activations=["relu", "tanh"]), seeds)
def test_barrier_of_a_model_with_itself_is_zero(arch, seed):
    p = _params(arch, seed % 1000)
    data = _data(arch.config["widths"][0], arch.config["widths"][-1], seed=seed % 7)
    curve = L.interpolation_curve(arch.module(dtype=torch.float64), p, p, data, alphas=9)
    assert curve.loss_barrier == 0.0 and curve.loss_barrier_linear == 0.0
    assert curve.accuracy_barrier == 0.0 and curve.accuracy_barrier_linear == 0.0
    assert np.all(curve.loss == curve.loss[0])


def test_curve_matches_direct_evaluation_and_a_dataloader():
    arch = architectures.mlp([5, 7, 3])
    a, b = _params(arch, 0), _params(arch, 1)
    x, y = _data(5, 3, n=50)
    model = arch.module(dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curve = L.interpolation_curve(model, a, b, (x, y), batch_size=16)
    assert len(curve.alphas) == 25
    m = arch.module(dtype=torch.float64)
    m.load_state_dict(L.interpolate(a, b, 0.5))
    with torch.no_grad():
        out = m(x)
    assert curve.midpoint[0] == pytest.approx(float(torch.nn.functional.cross_entropy(out, y)), rel=1e-12)
    assert curve.midpoint[1] == pytest.approx(float((out.argmax(1) == y).double().mean()), rel=1e-12)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    curve2 = L.interpolation_curve(model, a, b, loader)
    np.testing.assert_allclose(curve2.loss, curve.loss, rtol=1e-12)
    assert curve.loss_barrier == pytest.approx(curve.loss.max() - (curve.loss[0] + curve.loss[-1]) / 2)
    d = curve.as_dict()
    assert d["loss_barrier"] == curve.loss_barrier and len(d["loss"]) == 25
    for k, v in model.state_dict().items():  # the user's model is not modified
        assert torch.equal(v, before[k])


def test_regression_targets_give_mse_and_no_accuracy():
    arch = architectures.mlp([3, 4, 2])
    p = _params(arch, 0)
    x = torch.randn(10, 3, dtype=torch.float64)
    ev = L.evaluate(arch.module(dtype=torch.float64), (x, torch.zeros(10, 2, dtype=torch.float64)), p)
    m = arch.module(dtype=torch.float64)
    m.load_state_dict(p)
    with torch.no_grad():
        assert ev.loss == pytest.approx(float((m(x) ** 2).sum() / 10))
    assert np.isnan(ev.accuracy)


# -- distance and CKA -----------------------------------------------------------------------------
@settings(max_examples=30)
@given(mlp_architectures(max_depth=2, max_width=8, activations=["relu"]), seeds)
def test_distance_is_invariant_under_joint_transforms_and_zero_on_self(arch, seed):
    a, b = _params(arch, seed % 1000), _params(arch, seed % 1000 + 1)
    t = sy.random_transforms(arch.graph, seed, classes=sy.Permutation())
    d = L.l2_distance(a, b)
    expect = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    assert d == pytest.approx(expect, rel=1e-12)
    assert L.l2_distance(a, a) == 0.0
    assert L.l2_distance(sy.apply(arch.graph, a, t), sy.apply(arch.graph, b, t)) == pytest.approx(d, rel=1e-10)


@settings(max_examples=40)
@given(seeds, st.integers(3, 8), st.floats(0.1, 10))
def test_linear_cka_invariances(seed, p, scale):
    g = torch.Generator().manual_seed(seed % 10_000)
    x = torch.randn(40, p, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    assert L.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert L.linear_cka(x, scale * x @ q + 3.0) == pytest.approx(1.0, abs=1e-10)
    y = torch.randn(40, p, generator=g, dtype=torch.float64)
    assert 0.0 <= L.linear_cka(x, y) < 0.999
    assert L.linear_cka(x, y) == pytest.approx(L.linear_cka(y, x), abs=1e-12)


def test_cka_per_space_is_one_for_a_permuted_copy_and_lower_for_another_model():
    arch = architectures.mlp([6, 10, 9, 4])
    a, b = _params(arch, 0), _params(arch, 1)
    pa = sy.apply(arch.graph, a, sy.random_transforms(arch.graph, 3, classes=sy.Permutation()))
    x, y = _data(6, 4, n=80)
    model = arch.module(dtype=torch.float64)
    same = L.cka_per_space(model, arch.graph, a, pa, (x, y))
    other = L.cka_per_space(model, arch.graph, a, b, (x, y))
    assert set(same) == {"hidden.0", "hidden.1"}
    assert all(v == pytest.approx(1.0, abs=1e-10) for v in same.values())
    assert all(v < 0.99 for v in other.values())
