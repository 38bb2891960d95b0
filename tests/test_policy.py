"""The one class policy: instances, types, names and mappings of names mean the same class
everywhere; defaults are the standard classes a solver searches; bad specs are typed errors."""
import pytest
from hypothesis import given, settings

import architectures
import solvers
import symmetries as sy
from symmetries import HeadStructured, Orthogonal, Permutation, PermutationScaling, SemiPermutation
from symmetries.errors import ClassSpecError, NotAdmittedError, UnknownSpaceError
from symmetries.testing.strategies import transform_sets

SPELLINGS = ["permutation", "Permutation", "PERMUTATION", Permutation, Permutation(),
             {"hidden.0": "permutation", "hidden.1": Permutation}]


def _pair(arch):
    return ({k: v.double() for k, v in arch.module(seed=s).state_dict().items()} for s in (0, 1))


@pytest.mark.parametrize("spec", SPELLINGS, ids=repr)
def test_every_spelling_gives_the_same_class(spec):
    arch = architectures.mlp([6, 5, 4, 3])
    assert sy.resolve_classes(arch.graph, spec) == {"hidden.0": Permutation(), "hidden.1": Permutation()}
    ref = sy.random_transforms(arch.graph, 3, classes=Permutation())
    drawn = sy.random_transforms(arch.graph, 3, classes=spec)
    assert all(drawn[s].allclose(ref[s]) for s in ref)
    a, b = _pair(arch)
    ref_sol = solvers.solve("weight_matching", arch, a, b, classes=Permutation())
    sol = solvers.solve("weight_matching", arch, a, b, classes=spec)
    assert sol.objective_after == ref_sol.objective_after
    assert all(sol.transforms[s].allclose(ref_sol.transforms[s]) for s in ref_sol.transforms)


@settings(max_examples=10, deadline=None)
@given(data=transform_sets(architectures.mlp([6, 5, 4, 3]).graph, "permutation"))
def test_strategies_read_names(data):
    for el in data.values():
        assert Permutation().contains(el.as_matrix())


@pytest.mark.parametrize("bad", ["permutaton", 3, HeadStructured, object()])
def test_a_bad_spec_is_a_typed_error_listing_the_names(bad):
    arch = architectures.mlp([6, 5, 3])
    with pytest.raises(ClassSpecError) as e:
        sy.random_transforms(arch.graph, 0, classes={"hidden.0": bad})
    assert e.value.space == "hidden.0"
    assert isinstance(e.value, TypeError)
    if not isinstance(bad, type):
        assert "semi_permutation" in str(e.value) and "permutation_scaling" in str(e.value)
    with pytest.raises(ClassSpecError):
        solvers.solve("weight_matching", arch, *_pair(arch), classes=bad)
    with pytest.raises(UnknownSpaceError, match="nope"):
        sy.resolve_classes(arch.graph, {"nope": "permutation"})


def test_defaults_draw_the_declared_group_but_solve_the_standard_class():
    mlp = architectures.mlp([6, 5, 4, 3])
    assert sy.resolve_classes(mlp.graph) == {s.name: PermutationScaling() for s in mlp.graph.spaces()}
    wm = solvers.get("weight_matching")
    assert set(sy.resolve_classes(mlp.graph, solver=wm).values()) == {Permutation()}
    gpt = architectures.gpt2(50, 16, 16, 4, 2, 32, norm="rms")
    std = sy.resolve_classes(gpt.graph, solver=wm)
    assert std["residual"] == Orthogonal() and std["blocks.1.mlp"] == Permutation()
    assert std["blocks.1.attn.vo"] == HeadStructured(4, Permutation())
    wide = sy.resolve_classes(mlp.graph, solver=wm, widening={"hidden.0": True})
    assert wide["hidden.0"] == SemiPermutation() and wide["hidden.1"] == Permutation()


def test_a_plain_class_at_an_attention_space_is_refused_with_a_hint():
    gpt = architectures.gpt2(50, 16, 16, 4, 2, 32, norm="rms")
    with pytest.raises(NotAdmittedError, match=r"HeadStructured\(4, Permutation\(\)\)"):
        sy.resolve_classes(gpt.graph, {"blocks.0.attn.qk": "permutation"})


def test_a_solver_without_a_class_for_a_space_is_named():
    gpt = architectures.gpt2(50, 16, 16, 4, 2, 32, norm="rms")
    with pytest.raises(NotAdmittedError, match="optimal_transport"):
        sy.resolve_classes(gpt.graph, solver=solvers.get("optimal_transport"))
    assert "optimal_transport" not in solvers.applicable(gpt)


@pytest.mark.parametrize("build", [lambda: architectures.mlp([6, 5, 4, 3]),
                                   lambda: architectures.mlp([6, 5, 4, 3], activation="tanh"),
                                   lambda: architectures.vgg([4, "M", 6], hidden=[8], num_classes=3),
                                   lambda: architectures.gpt2(50, 16, 16, 4, 2, 32, norm="rms")],
                         ids=["relu-mlp", "tanh-mlp", "vgg", "gpt2"])
def test_every_applicable_solver_runs_with_default_classes(build):
    arch = build()
    a, b = _pair(arch)
    names = solvers.applicable(arch)
    assert "weight_matching" in names
    for name in names:
        if solvers.get(name).needs_data:
            continue  # data-driven solvers: run with default classes in their own tests and the demo
        sol = solvers.solve(name, arch, a, b, seed=0)
        assert sol.objective_after <= sol.objective_before + 1e-9, name
        assert sol.status in ("converged", "max_iter"), (name, sol.status, sol.message)
        for space, el in sol.transforms.items():  # the answer lies in the class searched there
            assert sy.resolve_classes(arch.graph, solver=solvers.get(name))[space].contains(el.as_matrix(), atol=1e-6)
