"""A third-party symmetry class with its own weight-matching subproblem, using only public names.

``CyclicShift`` — the cyclic shifts of a space's units (``T[j, (j − k) mod n] = 1``), a subgroup of
the permutations, exact through any elementwise activation — is declared here, its subproblem is
registered with ``solvers.subproblem``, and weight matching recovers a planted shift.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import solvers
from symmetries import DenseElement, GatherElement, Role, SymmetryClass, WeightGraph, apply
from symmetries.errors import ElementShapeError


class CyclicShift(SymmetryClass):
    """``T_k``: unit ``j`` of the result is unit ``(j − k) mod n`` of the input."""

    name = "cyclic_shift"
    exact_where = "any elementwise activation (a shift is a permutation)"
    monomial = True
    orthogonal = True

    @staticmethod
    def element(n: int, k: int) -> GatherElement:
        return GatherElement(torch.roll(torch.arange(n), int(k)), n)

    def random(self, n, *, m=None, seed=None):
        if m is not None and m != n:
            raise ElementShapeError(f"{self!r} maps a space to itself; got m={m} ≠ n={n}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        return self.element(n, rng.integers(n))

    def contains(self, matrix, *, atol=1e-8):
        t = torch.as_tensor(matrix.as_matrix() if hasattr(matrix, "as_matrix") else matrix, dtype=torch.float64)
        n = t.shape[0]
        if t.dim() != 2 or t.shape[1] != n:
            return False
        return any(torch.allclose(t, self.element(n, k).as_matrix(), atol=atol) for k in range(n))


@solvers.subproblem.register(CyclicShift)
def _shift_subproblem(cls, local, *, backend="auto", current=None):
    """``argmax_k ⟨T_k, M⟩`` with ``M = Σ_e A_e B_eᵀ`` (the local loss is ``const − 2⟨T, M⟩``)."""
    m = local.cross(Role.OUT, Role.IN).double()
    n = m.shape[0]
    scores = [float(m.diagonal(-k).sum() + m.diagonal(n - k).sum()) for k in range(n)]
    return cls.element(n, max(range(n), key=scores.__getitem__))


class NoSubproblem(SymmetryClass):
    """A class nobody registered a subproblem for."""

    name = "no_subproblem"
    exact_where = "nowhere in particular"

    def random(self, n, *, m=None, seed=None):
        return GatherElement.identity(n)

    def contains(self, matrix, *, atol=1e-8):
        return True


def ring_mlp(n_in=5, hidden=8, n_out=3, cls=None) -> WeightGraph:
    """``y = W2 relu(W1 x + b1) + b2`` with the hidden space searched in ``cls`` (default CyclicShift)."""
    g = WeightGraph("ring")
    g.add_space("h", hidden, [cls or CyclicShift()], activation="relu")
    g.add_parameter("w1", (hidden, n_in)).add_parameter("b1", (hidden,))
    g.add_parameter("w2", (n_out, hidden)).add_parameter("b2", (n_out,), fixed=True)
    g.connect("w1", "h", axis=0, role="out").connect("b1", "h", axis=0, role="out")
    g.connect("w2", "h", axis=1, role="in")
    return g


def forward(params, x):
    return torch.relu(x @ params["w1"].T + params["b1"]) @ params["w2"].T + params["b2"]


def draw_params(seed: int, n_in=5, hidden=8, n_out=3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w1": (hidden, n_in), "b1": (hidden,), "w2": (n_out, hidden), "b2": (n_out,)}
    return {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}


def test_the_class_identity_random_and_membership():
    cls = CyclicShift()
    assert cls.contains(cls.identity(6)) and cls.identity(6).is_identity()
    for seed in range(5):
        el = cls.random(6, seed=seed)
        assert isinstance(el, GatherElement) and cls.contains(el) and cls.contains(el.inverse())
        assert cls.random(6, seed=seed).allclose(el)  # reproducible from the seed
    swap = GatherElement(torch.tensor([1, 0, 2, 3, 4, 5]), 6)  # a permutation, not a shift
    assert not cls.contains(swap)


def test_element_act_is_apply_on_the_rows():
    """``Element.act(x, role)`` — the public action subproblems use — is ``apply`` along axis 0."""
    x = torch.randn(6, 4, dtype=torch.float64)
    dense = DenseElement(torch.randn(6, 6, dtype=torch.float64) + 6 * torch.eye(6, dtype=torch.float64))
    for el in (CyclicShift().random(6, seed=1), dense):
        for role in ("out", "in"):
            assert torch.allclose(el.act(x, role), el.apply(x, 0, role))
    shift = CyclicShift.element(6, 2)
    assert torch.equal(shift.act(x, Role.OUT), x[torch.roll(torch.arange(6), 2)])
    assert torch.equal(shift.act(x, "var"), shift.act(x, "out"))
    with pytest.raises(ElementShapeError, match=r"\(6, k\)"):
        shift.act(x[:5], "out")


def test_the_function_is_invariant_under_the_class():
    g, params = ring_mlp(), draw_params(0)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for seed in range(4):
        moved = apply(g, params, {"h": CyclicShift().random(8, seed=seed)})
        assert torch.allclose(forward(moved, x), forward(params, x), atol=1e-12)


@pytest.mark.parametrize("shift", [1, 3, 7])
def test_weight_matching_recovers_a_planted_shift(shift):
    g, a = ring_mlp(), draw_params(2)
    planted = CyclicShift.element(8, shift)
    b = apply(g, a, {"h": planted})
    noise = torch.Generator().manual_seed(3)
    b = {k: v + 1e-3 * torch.randn(v.shape, generator=noise, dtype=torch.float64) for k, v in b.items()}
    for run in (lambda: solvers.solve("weight_matching", g, a, b, classes=CyclicShift()),
                lambda: solvers.weight_matching(g, a, b, classes={"h": CyclicShift()}, max_iter=5)):
        sol = run()
        found = sol.transforms["h"]
        assert CyclicShift().contains(found)
        assert found.allclose(planted.inverse())        # T·B = A: the shift undone
        floor = sum(float(((v - a[k]) ** 2).sum()) for k, v in apply(g, b, {"h": planted.inverse()}).items())
        assert sol.objective_after == pytest.approx(floor, rel=1e-9)
        assert sol.objective_after < 1e-3 * sol.objective_before


def test_weight_matching_supports_exactly_the_registered_classes():
    assert solvers.get("weight_matching").supports(CyclicShift())
    assert not solvers.get("weight_matching").supports(NoSubproblem())
    g = ring_mlp(cls=NoSubproblem())
    a, b = draw_params(0), draw_params(1)
    with pytest.raises(solvers.UnsupportedClassError, match="no_subproblem|NoSubproblem"):
        solvers.solve("weight_matching", g, a, b, classes=NoSubproblem())


def test_default_classes_and_the_lattice_for_a_new_class():
    """With no ``classes``, solve searches the space's own class (the class policy asks the lattice,
    which relates an unplaced class only to itself and Trivial); ``lattice.register`` places it."""
    from symmetries import Orthogonal, Permutation, Trivial, lattice

    g, a = ring_mlp(), draw_params(2)
    b = apply(g, a, {"h": CyclicShift.element(8, 3)})
    sol = solvers.solve("weight_matching", g, a, b)  # the default: the space's CyclicShift
    assert sol.objective_after < 1e-20 * sol.objective_before
    assert not lattice.is_subclass(CyclicShift(), Permutation())
    assert lattice.is_subclass(Trivial(), CyclicShift()) and not lattice.is_subclass(Permutation(), CyclicShift())

    class Placed(CyclicShift):
        pass

    lattice.register(Placed, inside=(Permutation,))
    assert lattice.is_subclass(Placed(), Permutation()) and lattice.is_subclass(Placed(), Orthogonal())
    with pytest.raises(ValueError, match="cyclic"):
        lattice.register(Permutation, inside=(Placed,))
    with pytest.raises(TypeError):
        lattice.register(Placed, inside=(int,))
