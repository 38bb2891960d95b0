"""The direction of the action, pinned against DESIGN.md §3–4 with explicit dense products.

A swapped action (``out`` ↔ ``in``) is itself a valid symmetry, so invariance tests cannot see it:
these compare ``Element.apply`` and ``symmetries.apply`` with the documented formulas, computed from
``T = as_matrix()`` alone — ``out``: ``W' = T W`` along the axis; ``in``: ``W' = W T⁻¹`` (``T⁺``
when tall, ``Tᵀ`` for orthonormal columns, ``Bᵀ`` with ``B = 1[P̃ > 0]`` for a semi-permutation);
``var``: ``v' = (T∘T) v`` — on every axis of a 3-D tensor, for every class.
"""
from __future__ import annotations

import pytest
import torch

import symmetries as sy

N, M = 6, 9
CASES = [
    (sy.Trivial(), N), (sy.Permutation(), N), (sy.SignFlip(), N), (sy.SignedPermutation(), N),
    (sy.PositiveScaling(), N), (sy.PermutationScaling(), N), (sy.Orthogonal(), N), (sy.Orthogonal(), M),
    (sy.Invertible(), N), (sy.Invertible(), M), (sy.SemiPermutation(), M),
    (sy.HeadStructured(2, sy.Invertible()), N), (sy.HeadStructured(3, sy.PermutationScaling()), N),
    (sy.HeadStructured(2, sy.Orthogonal()), N),
]
IDS = [f"{c!r}-{m}" for c, m in CASES]


def documented_in_map(cls: sy.SymmetryClass, t: torch.Tensor) -> torch.Tensor:
    """The ``n×m`` matrix the ``in`` role multiplies by, from ``T`` and DESIGN.md alone."""
    inner = cls.inner if isinstance(cls, sy.HeadStructured) else cls
    if isinstance(inner, sy.SemiPermutation):
        return (t > 0).to(t.dtype).T  # Bᵀ
    if isinstance(inner, sy.Orthogonal):
        return t.T
    return torch.linalg.inv(t) if t.shape[0] == t.shape[1] else torch.linalg.pinv(t)


def along(matrix: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """``x'[..j..] = Σ_i matrix[j, i] x[..i..]`` along ``axis``."""
    return torch.movedim(torch.tensordot(matrix, torch.movedim(x, axis, 0), dims=([1], [0])), 0, axis)


def expected(cls, t, x, axis, role):
    if role == "out":
        return along(t, x, axis)
    if role == "in":  # W' = W Q: x'[..j..] = Σ_i x[..i..] Q[i, j]
        return along(documented_in_map(cls, t).T, x, axis)
    return along(t * t, x, axis)


def tensor(axis: int, n: int, seed: int) -> torch.Tensor:
    shape = [3, 4, 5]
    shape[axis] = n
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("cls, m", CASES, ids=IDS)
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_element_apply_follows_the_documented_formulas(cls, m, axis):
    el = cls.random(N, m=m, seed=11 + axis)
    t = el.as_matrix()
    roles = ["out", "in"] + (["var"] if cls.monomial else [])
    for seed, role in enumerate(roles):
        x = tensor(axis % 3, N, seed)
        want = expected(cls, t, x, axis % 3, role)
        torch.testing.assert_close(el.apply(x, axis, role), want, rtol=1e-10, atol=1e-10,
                                   msg=lambda s: f"{cls!r} role {role} axis {axis}: {s}")


@pytest.mark.parametrize("cls, m", CASES, ids=IDS)
def test_graph_apply_follows_the_documented_formulas(cls, m):
    """The same through ``symmetries.apply`` (its own index fast path) on a 3-D parameter whose three
    axes index three spaces in the three roles."""
    g = sy.WeightGraph("direction")
    roles = ("out", "in", "var") if cls.monomial else ("out", "in")
    g.add_parameter("w", (N, N, N)[:len(roles)] + (4,) * (3 - len(roles)))
    for axis, role in enumerate(roles):
        g.add_space(f"s{axis}", N, cls)
        g.connect("w", f"s{axis}", axis=axis, role=role)
    w = torch.randn(*g.parameter("w").shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    els = {f"s{a}": cls.random(N, m=m, seed=a) for a in range(len(roles))}
    out = sy.apply(g, {"w": w}, els, check=m == N)["w"]  # widening: B's graph is narrow (unchecked path)
    want = w
    for axis, role in enumerate(roles):
        want = expected(cls, els[f"s{axis}"].as_matrix(), want, axis, role)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


def test_out_and_in_differ_where_the_design_says_they_must():
    """For invertible and scaling maps ``T ≠ T⁻ᵀ``: a test that cannot tell the roles apart is no test."""
    for cls in (sy.Invertible(), sy.PositiveScaling(), sy.SemiPermutation()):
        el = cls.random(N, m=M if cls.rectangular else None, seed=0)
        t = el.as_matrix()
        assert not torch.allclose(t, documented_in_map(cls, t).T)
