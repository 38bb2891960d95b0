"""A complete third-party solver, registered and run through ``solvers.solve``, using only public names.

``OnePass`` visits the spaces in graph order ``passes`` times and solves each with the class's
registered subproblem (``solvers.subproblem``) on the per-space views of ``solvers.local`` — the
building blocks weight matching is made of. Its options are declared by its ``solve`` signature and
validated at the door.
"""
from __future__ import annotations

import inspect

import pytest
import torch

import architectures
import solvers
import symmetries
from solvers.local import Matcher, search_units
from symmetries import TransformSet


class OnePass(solvers.Solver):
    """Each space in graph order, solved by its class's subproblem with the others fixed."""

    name = "one_pass"
    description = "graph-order passes of per-space subproblems"
    classes = (symmetries.Trivial, symmetries.Permutation, symmetries.SignedPermutation)
    calls = 0

    def solve(self, problem, *, passes: int = 1, backend: str = "auto"):
        type(self).calls += 1
        matcher = Matcher(problem)
        transforms = {s: problem.classes[s].identity(problem.sizes[s][1]) for s in problem.spaces}
        history = [problem.objective(TransformSet(transforms))]
        for _ in range(passes):
            for unit in search_units(problem):
                for space in unit:
                    local = matcher.local(space, transforms)
                    transforms[space] = solvers.subproblem(problem.classes[space], local, backend=backend)
            history.append(problem.objective(TransformSet(transforms)))
        t = TransformSet(transforms)
        return solvers.Solution(t, history[0], history[-1], iterations=passes, history=history,
                                status="converged", objective="sum_p ||theta_A - T.theta_B||^2")


@pytest.fixture
def registered():
    solvers.register("one_pass", OnePass, replace=True)
    OnePass.calls = 0
    yield "one_pass"
    solvers.unregister("one_pass")


def planted(seed=0):
    arch = architectures.mlp([6, 10, 8, 3])
    a = {k: v.double() for k, v in arch.module(seed=seed).state_dict().items()}
    perm = symmetries.random_transforms(arch.graph, seed + 1, classes="permutation")
    return arch, a, symmetries.apply(arch.graph, a, perm), perm


def test_registered_solver_runs_through_the_front_door(registered):
    arch, a, b, perm = planted()
    assert "one_pass" in [info.name for info in solvers.available()]
    sol = solvers.solve("one_pass", arch.graph, a, b, classes="permutation", passes=2)
    assert sol.solver == "one_pass" and sol.iterations == 2 and sol.wall_time > 0
    assert sol.objective_after < 1e-20 * sol.objective_before  # the planted permutation, exactly
    aligned = sol.apply(b)
    assert all(torch.allclose(aligned[k], a[k]) for k in a)
    for space, el in sol.transforms.items():
        assert el.allclose(perm[space].inverse())


def test_declared_options_are_validated_at_the_door(registered):
    arch, a, b, _ = planted()
    assert solvers.get("one_pass").option_names() == ("passes", "backend")
    with pytest.raises(solvers.SolverInputError) as err:
        solvers.solve("one_pass", arch.graph, a, b, pases=2)
    message = str(err.value)
    assert "'pases'" in message and "did you mean 'passes'" in message and "passes, backend" in message
    assert isinstance(err.value, ValueError) and isinstance(err.value, symmetries.errors.SymmetryError)
    assert OnePass.calls == 0  # refused before any work
    solvers.solve("one_pass", arch.graph, a, b, passes=1, seed=3)  # problem and solver options together
    assert OnePass.calls == 1


def test_a_solver_without_declared_options_takes_any_keyword():
    seen = {}

    def anything(problem, **options):
        """Leave B as it is, recording the options it was given."""
        seen.update(options)
        t = TransformSet()
        return solvers.Solution(t, problem.objective(None), problem.objective(t), status="optimal")

    solvers.register("anything", anything)
    try:
        arch, a, b, _ = planted()
        assert solvers.get("anything").option_names() is None
        sol = solvers.solve("anything", arch.graph, a, b, colour="blue", max_iters=3)
        assert seen == {"colour": "blue", "max_iters": 3} and sol.solver == "anything"
    finally:
        solvers.unregister("anything")


def test_a_solver_passed_directly_is_checked_the_same_way():
    arch, a, b, _ = planted()
    with pytest.raises(solvers.SolverInputError, match="'passes'"):
        solvers.solve(OnePass, arch.graph, a, b, passe=1)
    sol = solvers.solve(OnePass(), arch.graph, a, b, classes="permutation", passes=2)
    assert sol.solver == "one_pass" and sol.objective_after < 1e-20 * sol.objective_before


def test_plain_functions_are_the_front_door_with_the_builtin_algorithm():
    arch, a, b, _ = planted(2)
    by_name = solvers.solve("weight_matching", arch.graph, a, b, max_iter=5, seed=1)
    plain = solvers.weight_matching(arch.graph, a, b, max_iter=5, seed=1)
    assert plain.solver == "weight_matching" and plain.objective_after == by_name.objective_after
    assert all(plain.transforms[s].allclose(by_name.transforms[s]) for s in by_name.transforms)
    params = inspect.signature(solvers.weight_matching).parameters
    assert {"classes", "seed", "graph_b", "max_iter", "backend"} <= set(params)
    with pytest.raises(solvers.SolverInputError, match="did you mean 'max_iter'"):
        solvers.weight_matching(arch.graph, a, b, max_iters=5)
    with pytest.raises(solvers.SolverInputError, match="did you mean 'num_iter'"):
        solvers.optimal_transport(arch.graph, a, b, num_iters=5)
