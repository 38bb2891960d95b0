"""Group laws of every class, checked through ``apply`` on random tensors (hypothesis).

For elements ``a, b`` of one class: ``apply(a∘b) = apply(a)∘apply(b)``,
``apply(a⁻¹)∘apply(a) = id``, the identity changes nothing, ``apply`` agrees with
``as_matrix``/``in_matrix``, and the class is closed under ``∘`` and ``⁻¹``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RTOL
from symmetries import Role
from symmetries.classes import HeadStructured
from symmetries.testing.strategies import GROUPS, elements, seeds, symmetry_classes

DTYPES = st.sampled_from([torch.float64, torch.float32])
ROLES = st.sampled_from([Role.OUT, Role.IN])


@st.composite
def tensor_with_axis(draw, n: int, dtype):
    """A random tensor of rank 1–3 with size ``n`` along a drawn axis."""
    rank = draw(st.integers(1, 3))
    axis = draw(st.integers(0, rank - 1))
    shape = [draw(st.integers(1, 3)) for _ in range(rank)]
    shape[axis] = n
    g = torch.Generator().manual_seed(draw(seeds))
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype), axis


def _close(x, y, dtype, scale=1.0):
    tol = RTOL[dtype] * scale * max(1.0, float(y.abs().max()))
    assert x.shape == y.shape
    err = float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
    assert err <= tol, f"error {err:.3e} > tolerance {tol:.3e}"


def _cond(el) -> float:
    s = torch.linalg.svdvals(el.as_matrix())
    return float(s[0] / s[-1]) if s.numel() and s[-1] > 0 else 1.0


@settings(max_examples=300)
@given(st.data(), symmetry_classes(), DTYPES, ROLES)
def test_composition_acts_as_sequential_application(data, cls, dtype, role):
    heads = cls.num_heads if isinstance(cls, HeadStructured) else 1
    n = heads * data.draw(st.integers(1, 6))
    a, b = data.draw(elements(cls, size=n)), data.draw(elements(cls, size=n))
    x, axis = data.draw(tensor_with_axis(n, dtype))
    both = (a @ b).apply(x, axis, role)
    seq = a.apply(b.apply(x, axis, role), axis, role)
    _close(both, seq, dtype, _cond(a) * _cond(b))


@settings(max_examples=300)
@given(st.data(), symmetry_classes(), DTYPES, ROLES)
def test_inverse_undoes_apply(data, cls, dtype, role):
    heads = cls.num_heads if isinstance(cls, HeadStructured) else 1
    n = heads * data.draw(st.integers(1, 6))
    a = data.draw(elements(cls, size=n))
    x, axis = data.draw(tensor_with_axis(n, dtype))
    back = a.inverse().apply(a.apply(x, axis, role), axis, role)
    _close(back, x, dtype, _cond(a))
    # and the other way round (groups): a ∘ a⁻¹ = id
    _close(a.apply(a.inverse().apply(x, axis, role), axis, role), x, dtype, _cond(a))


@settings(max_examples=200)
@given(st.data(), symmetry_classes())
def test_identity_and_closure(data, cls):
    heads = cls.num_heads if isinstance(cls, HeadStructured) else 1
    n = heads * data.draw(st.integers(1, 6))
    a, b = data.draw(elements(cls, size=n)), data.draw(elements(cls, size=n))
    e = cls.identity(n)
    assert e.is_identity()
    x = torch.randn(n, 3, dtype=torch.float64)
    assert torch.equal(e.apply(x, 0, "out"), x) and torch.equal(e.apply(x, 0, "in"), x)
    assert cls.contains(a) and cls.contains(a @ b) and cls.contains(a.inverse())
    assert (e @ a).allclose(a) and (a @ e).allclose(a)
    assert (a @ a.inverse()).is_identity(atol=1e-9 * _cond(a) ** 2)


@settings(max_examples=200)
@given(st.data(), symmetry_classes(groups_only=False), DTYPES)
def test_apply_matches_matrices(data, cls, dtype):
    """``out``: ``W ← T W``; ``in``: ``W ← W Q`` with ``Q T = I`` (``Q = T⁻¹`` for square groups)."""
    heads = cls.num_heads if isinstance(cls, HeadStructured) else 1
    n = heads * data.draw(st.integers(1, 6))
    a = data.draw(elements(cls, size=n, widen=3))
    m = a.shape[0]
    t, q = a.as_matrix(), a.in_matrix()
    assert t.shape == (m, n) and q.shape == (n, m)
    torch.testing.assert_close(q @ t, torch.eye(n, dtype=torch.float64), atol=1e-9 * _cond(a), rtol=0)
    w = torch.randn(n, 4, dtype=torch.float64).to(dtype)
    _close(a.apply(w, 0, "out"), (t @ w.double()).to(dtype), dtype, _cond(a))
    v = torch.randn(4, n, dtype=torch.float64).to(dtype)
    _close(a.apply(v, 1, "in"), (v.double() @ q).to(dtype), dtype, _cond(a))
    if cls.monomial:
        var = torch.rand(n, dtype=torch.float64).to(dtype)
        _close(a.apply(var, 0, "var"), ((t ** 2) @ var.double()).to(dtype), dtype)


@settings(max_examples=100)
@given(st.data(), st.sampled_from([c for c in GROUPS if c.rectangular] +
                                  [__import__("symmetries").SemiPermutation()]))
def test_embeddings_compose_and_merge_back(data, cls):
    """Rectangular elements (n → m ≥ n): chains compose, and the inverse (merge) is exact on the image."""
    n = data.draw(st.integers(1, 5))
    a = data.draw(elements(cls, size=n, widen=3))
    m = a.shape[0]
    b = data.draw(elements(cls, size=m, widen=3))
    x, axis = data.draw(tensor_with_axis(n, torch.float64))
    for role in ("out", "in"):
        _close((b @ a).apply(x, axis, role), b.apply(a.apply(x, axis, role), axis, role), torch.float64,
               _cond(a) * _cond(b))
        _close(a.inverse().apply(a.apply(x, axis, role), axis, role), x, torch.float64, _cond(a))
    assert cls.contains(b @ a)


@settings(max_examples=60)
@given(st.data(), symmetry_classes())
def test_numpy_and_torch_agree(data, cls):
    heads = cls.num_heads if isinstance(cls, HeadStructured) else 1
    n = heads * data.draw(st.integers(1, 5))
    a = data.draw(elements(cls, size=n))
    x = np.random.default_rng(data.draw(seeds)).standard_normal((3, n))
    y = a.apply(x, 1, "in")
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, a.apply(torch.from_numpy(x), 1, "in").numpy(), rtol=0, atol=1e-12)
    assert np.array_equal(x, x.copy())  # input untouched


def test_apply_never_mutates_its_input():
    a = GROUPS[6].random(5, seed=0)  # Orthogonal
    x = torch.randn(5, 2)
    before = x.clone()
    a.apply(x, 0, "out")
    a.apply(x, 0, "in")
    assert torch.equal(x, before)


def test_apply_rejects_bad_axes_and_sizes():
    from symmetries.errors import ElementShapeError
    a = GROUPS[1].random(4, seed=0)
    with pytest.raises(ElementShapeError, match="size 4.*size 3 along axis 0"):
        a.apply(torch.zeros(3, 2), 0, "out")
    with pytest.raises(ElementShapeError, match="axis 2 is out of range"):
        a.apply(torch.zeros(4, 2), 2, "out")
    with pytest.raises(ValueError, match="unknown role 'sideways'"):
        a.apply(torch.zeros(4), 0, "sideways")
    with pytest.raises(ElementShapeError, match="monomial"):
        GROUPS[6].random(4, seed=0).apply(torch.zeros(4), 0, "var")
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        a.apply([1, 2, 3, 4], 0, "out")
    with pytest.raises(ElementShapeError, match="cannot compose"):
        a @ GROUPS[1].random(3, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_apply_on_cuda():
    a = GROUPS[7].random(6, seed=0)
    x = torch.randn(6, 3, device="cuda", dtype=torch.float32)
    y = a.apply(x, 0, "in")
    assert y.device == x.device and y.dtype == torch.float32
    torch.testing.assert_close(y.cpu(), a.apply(x.cpu(), 0, "in"), rtol=1e-5, atol=1e-5)
