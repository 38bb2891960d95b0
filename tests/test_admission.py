"""``apply`` (check=True) refuses elements that are in none of their space's admitted classes —
each would silently change the network's function — and singular dense maps are typed errors.
Index-form elements are checked from their index vector (no dense matrix)."""
from __future__ import annotations

import pytest
import torch

import symmetries as sy
from symmetries.elements import ScatterElement
from symmetries.errors import ElementNotAdmittedError, InvalidElementError, NotAdmittedError, SymmetryError


def two_layer(classes, n=4) -> sy.WeightGraph:
    """``y = W2 f(W1 x + b1)``: one hidden space ``h`` of size ``n``."""
    g = sy.WeightGraph("two-layer")
    g.add_parameter("w1", (n, 3)).add_parameter("b1", (n,)).add_parameter("w2", (2, n))
    g.add_space("h", n, classes)
    return g.connect("w1", "h", axis=0, role="out").connect("b1", "h", axis=0, role="out") \
            .connect("w2", "h", axis=1, role="in")


def params(n=4, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return {"w1": torch.randn(n, 3, generator=gen, dtype=dtype), "b1": torch.randn(n, generator=gen, dtype=dtype),
            "w2": torch.randn(2, n, generator=gen, dtype=dtype)}


def relu_net(p, x):
    return torch.relu(x @ p["w1"].T + p["b1"]) @ p["w2"].T


Q = sy.Orthogonal().random(4, seed=0).matrix
MONOMIAL = sy.GatherElement.monomial

NOT_ADMITTED = [
    ("orthogonal", sy.Orthogonal(), sy.DenseElement(1.5 * Q, (1.5 * Q).T)),
    ("orthogonal, wrong inverse", sy.Orthogonal(), sy.DenseElement(Q, 2 * Q.T)),
    ("orthogonal, NaN", sy.Orthogonal(), sy.DenseElement(Q * float("nan"), Q.T)),
    ("permutation, duplicate index", sy.Permutation(), sy.GatherElement([0, 0, 2, 3], 4)),
    ("permutation, scaled", sy.Permutation(), MONOMIAL([1, 0, 2, 3], [1.0, 1.0, 2.0, 1.0])),
    ("relu, zero scale", sy.PermutationScaling(), sy.GatherElement(range(4), 4, [0.0, 1, 1, 1], [1.0, 1, 1, 1])),
    ("relu, NaN scale", sy.PermutationScaling(), MONOMIAL(range(4), [float("nan"), 1, 1, 1])),
    ("relu, inf scale", sy.PermutationScaling(), MONOMIAL(range(4), [float("inf"), 1, 1, 1])),
    ("relu, negative scale", sy.PermutationScaling(), MONOMIAL(range(4), [-2.0, 1, 1, 1])),
    ("relu, inconsistent in-scale", sy.PermutationScaling(), sy.GatherElement(range(4), 4, [2.0, 1, 1, 1])),
    ("relu, invertible", sy.PermutationScaling(), sy.Invertible().random(4, seed=1)),
    ("relu, orthogonal", sy.PermutationScaling(), sy.DenseElement(Q, Q.T)),
    ("signs, permuted", sy.SignFlip(), MONOMIAL([1, 0, 2, 3], [1.0, -1, 1, 1])),
    ("scaling, permuted", sy.PositiveScaling(), MONOMIAL([1, 0, 2, 3], [1.0, 2, 1, 1])),
    ("trivial", sy.Trivial(), sy.Permutation().random(4, seed=3)),
    ("invertible, duplicate index", sy.Invertible(), sy.GatherElement([0, 0, 2, 3], 4)),
    ("heads, mixing heads", sy.HeadStructured(2, sy.Permutation()), sy.GatherElement([0, 2, 1, 3], 4)),
    ("heads, inner not admitted", sy.HeadStructured(2, sy.Permutation()),
     sy.HeadElement([1, 0], [MONOMIAL([0, 1], [1.0, 2.0]), sy.GatherElement.identity(2)])),
]


@pytest.mark.parametrize("label, cls, el", NOT_ADMITTED, ids=[c[0] for c in NOT_ADMITTED])
def test_apply_refuses_elements_outside_the_admitted_classes(label, cls, el):
    g, p = two_layer(cls), params()
    with pytest.raises(ElementNotAdmittedError, match="transform for space 'h'") as info:
        sy.apply(g, p, {"h": el})
    assert info.value.space == "h" and info.value.element is el
    assert isinstance(info.value, NotAdmittedError) and isinstance(info.value, ValueError)
    assert not cls.contains_element(el)
    sy.apply(g, p, {"h": el}, check=False)  # the unchecked path is unchanged


def test_refused_elements_do_change_the_function():
    """The refusals are not pedantry: each of these changes a ReLU network's output."""
    g, p = two_layer(sy.PermutationScaling()), params()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = relu_net(p, x)
    for el in (MONOMIAL(range(4), [-2.0, 1, 1, 1]), sy.Invertible().random(4, seed=1),
               sy.GatherElement([0, 0, 2, 3], 4)):
        assert (relu_net(sy.apply(g, p, {"h": el}, check=False), x) - y).abs().max() > 1e-3
    og = two_layer(sy.Orthogonal())
    bad = sy.apply(og, p, {"h": sy.DenseElement(1.5 * Q, (1.5 * Q).T)}, check=False)
    assert (bad["w2"] @ bad["w1"] - p["w2"] @ p["w1"]).abs().max() > 0.1  # a linear net changes too


ADMITTED = [
    ("permutation", sy.Permutation(), sy.Permutation().random(4, seed=0)),
    ("relu scaling", sy.PermutationScaling(), sy.PermutationScaling().random(4, seed=0)),
    ("relu accepts a permutation", (sy.PermutationScaling(), sy.SemiPermutation()), sy.Permutation().random(4)),
    ("signed permutation", sy.SignedPermutation(), sy.SignedPermutation().random(4, seed=0)),
    ("orthogonal", sy.Orthogonal(), sy.DenseElement(Q, Q.T)),
    ("orthogonal float32", sy.Orthogonal(), sy.Orthogonal().random(4, seed=2).to(dtype=torch.float32)),
    ("orthogonal accepts a signed permutation", sy.Orthogonal(), sy.SignedPermutation().random(4, seed=1)),
    ("invertible", sy.Invertible(), sy.Invertible().random(4, seed=0, cond=1e3)),
    ("invertible accepts scalings", sy.Invertible(), sy.PositiveScaling().random(4, seed=0)),
    ("trivial", sy.Trivial(), sy.GatherElement.identity(4)),
    ("heads", sy.HeadStructured(2, sy.Invertible()), sy.HeadStructured(2, sy.Invertible()).random(4, seed=0)),
    ("heads, gather form", sy.HeadStructured(2, sy.Permutation()),
     sy.HeadStructured(2, sy.Permutation()).random(4, seed=1).gather_form()),
]


@pytest.mark.parametrize("label, classes, el", ADMITTED, ids=[c[0] for c in ADMITTED])
def test_apply_accepts_admitted_elements(label, classes, el):
    g, p = two_layer(classes), params()
    sy.apply(g, p, {"h": el})


def test_embeddings_and_their_merge_maps_are_admitted():
    narrow, wide = two_layer((sy.PermutationScaling(), sy.SemiPermutation())), \
        two_layer((sy.PermutationScaling(), sy.SemiPermutation()), n=6)
    split = sy.SemiPermutation().random(4, m=6, seed=0)
    out = sy.apply(narrow, params(), {"h": split})
    back = sy.apply(wide, out, {"h": split.inverse()})
    assert isinstance(split.inverse(), ScatterElement)
    torch.testing.assert_close(back["w1"], params()["w1"])
    # a split whose in-map is not B = 1[P̃ > 0], or whose fractions do not sum to 1, is refused
    a, _ = split.scales()
    for bad in (sy.GatherElement(split.index, 4, a, 0.5 * (a > 0).double()),
                sy.GatherElement(split.index, 4, 2 * a, (a > 0).double())):
        with pytest.raises(ElementNotAdmittedError):
            sy.apply(narrow, params(), {"h": bad})
        with pytest.raises(ElementNotAdmittedError):
            sy.apply(wide, out, {"h": bad.inverse()})


def test_membership_tolerance_is_scaled_to_the_dtype():
    g = two_layer(sy.Orthogonal())
    off = torch.zeros(4, 4, dtype=torch.float64)
    off[0, 1] = 1e-5
    near = Q + off
    with pytest.raises(ElementNotAdmittedError):  # float64: 1e-5 off is not round-off
        sy.apply(g, params(), {"h": sy.DenseElement(near, near.T)})
    el32 = sy.DenseElement(near.float(), near.float().T)  # float32: it is
    sy.apply(g, params(dtype=torch.float32), {"h": el32})
    assert sy.Orthogonal().contains_element(el32) and not sy.Orthogonal().contains_element(sy.DenseElement(near, near.T))


def test_index_form_elements_are_checked_without_a_dense_matrix(monkeypatch):
    def dense(*_):
        raise AssertionError("membership built a dense matrix for an index-form element")
    els = {cls: cls.random(6, seed=0) for cls in (sy.Permutation(), sy.PermutationScaling(), sy.SignedPermutation(),
                                                   sy.PositiveScaling(), sy.SignFlip(), sy.Trivial())}
    heads = sy.HeadStructured(2, sy.Permutation()).random(6, seed=0)
    split = sy.SemiPermutation().random(6, m=9, seed=0)
    monkeypatch.setattr(sy.GatherElement, "as_matrix", dense)
    monkeypatch.setattr(sy.GatherElement, "in_matrix", dense)
    monkeypatch.setattr(sy.GatherElement, "_dense", dense)
    for cls, el in els.items():
        assert cls.contains_element(el) and sy.Invertible().contains_element(el)
    assert sy.Orthogonal().contains_element(els[sy.SignedPermutation()])
    assert sy.HeadStructured(2, sy.Permutation()).contains_element(heads)
    assert sy.SemiPermutation().contains_element(split)
    sy.apply(two_layer(sy.HeadStructured(2, sy.Permutation()), n=6), params(6), {"h": heads})


@pytest.mark.parametrize("matrix", [
    [[1.0, 2.0], [2.0, 4.0]],                                   # exactly singular
    (torch.randn(5, 2, dtype=torch.float64) @ torch.randn(2, 5, dtype=torch.float64)).tolist(),  # rank 2
    [[1.0, 0.0], [0.0, float("nan")]],                          # not finite
    [[1.0, 2.0, 3.0], [0.0, 1.0, 1.0], [4.0, -1.0, 3.0], [2.0, 2.0, 4.0], [-3.0, 5.0, 2.0], [1.0, 0.0, 1.0]],  # tall, rank 2 exactly (c₃ = c₁ + c₂)
])
def test_singular_dense_elements_are_typed_errors(matrix):
    with pytest.raises(InvalidElementError, match="dense element") as info:
        sy.DenseElement(matrix)
    assert isinstance(info.value, SymmetryError) and isinstance(info.value, ValueError)


def test_invertible_and_tall_dense_elements_still_build():
    a = sy.DenseElement(torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(a.in_matrix() @ a.as_matrix(), torch.eye(2, dtype=torch.float64))
    tall = sy.DenseElement(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))
    assert tall.shape == (6, 3) and tall.inverse().shape == (3, 6)
