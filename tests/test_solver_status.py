"""The solver door and the solution are honest about inputs a solver cannot compute with:
overflowing or underflowing weights, half-precision working dtypes, bad seeds and devices, and
non-finite objectives (issue #12, items 6 and 7)."""
from __future__ import annotations

import pytest
import torch

import solvers
import symmetries as sy
from solvers import Solution
from solvers.errors import SolverInputError
from symmetries.errors import SymmetryError


def mlp_graph(widths=(5, 8, 8, 3)) -> sy.WeightGraph:
    g = sy.WeightGraph("mlp")
    for i in range(len(widths) - 1):
        last = i == len(widths) - 2
        g.add_parameter(f"l{i}.weight", (widths[i + 1], widths[i])).add_parameter(f"l{i}.bias", (widths[i + 1],),
                                                                                     fixed=last)
    for i in range(1, len(widths) - 1):
        g.add_space(f"h{i}", widths[i], sy.PermutationScaling())
        g.connect(f"l{i - 1}.weight", f"h{i}", axis=0, role="out").connect(f"l{i - 1}.bias", f"h{i}", axis=0, role="out")
        g.connect(f"l{i}.weight", f"h{i}", axis=1, role="in")
    return g


def pair(scale=1.0, dtype=torch.float32):
    g = mlp_graph()
    gen = torch.Generator().manual_seed(0)
    pa = {p.name: (torch.randn(*p.shape, generator=gen) * scale).to(dtype) for p in g.parameters()}
    pb = sy.apply(g, pa, sy.random_transforms(g, 1, classes=sy.Permutation()))
    return g, pa, pb


def test_the_door_accepts_ordinary_models():
    g, pa, pb = pair()
    sol = solvers.solve("weight_matching", g, pa, pb)
    assert sol.status == "converged" and sol.objective_after < 1e-8


@pytest.mark.parametrize("scale, word", [(1e19, "overflows"), (1e-25, "underflows")])
def test_weights_out_of_the_working_range_are_refused_at_the_door(scale, word):
    """float32 weights × 1e19 gave objective_after=inf 'converged'; × 1e-25 the identity, 'converged'."""
    g, pa, pb = pair(scale)
    with pytest.raises(SolverInputError, match=f"model A {word} torch.float32.*dtype=torch.float64"):
        solvers.solve("weight_matching", g, pa, pb)
    sol = solvers.solve("weight_matching", g, pa, pb, dtype=torch.float64)  # in range there: solved
    assert sol.status == "converged" and sol.objective_after <= 1e-12 * sol.objective_before


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, "float32"])
def test_half_precision_and_non_floating_working_dtypes_are_refused_by_name(dtype):
    g, pa, pb = pair()
    with pytest.raises(SolverInputError, match="dtype="):
        solvers.solve("weight_matching", g, pa, pb, dtype=dtype)


def test_half_precision_models_are_computed_in_float32():
    g, pa, pb = pair()
    half = solvers.make_problem(g, {k: v.half() for k, v in pa.items()}, {k: v.half() for k, v in pb.items()})
    assert half.dtype == torch.float32
    sol = solvers.solve("weight_matching", g, {k: v.half() for k, v in pa.items()}, {k: v.half() for k, v in pb.items()})
    assert sol.status == "converged"


@pytest.mark.parametrize("seed", ["abc", -1, 1.5, None])
def test_bad_seeds_are_typed_errors(seed):
    g, pa, pb = pair()
    with pytest.raises(SolverInputError, match="seed must be"):
        solvers.solve("weight_matching", g, pa, pb, seed=seed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "nonsense", 3.5])
def test_unavailable_devices_are_typed_errors(device):
    g, pa, pb = pair()
    with pytest.raises(SolverInputError, match="device=") as info:
        solvers.solve("weight_matching", g, pa, pb, device=device)
    assert isinstance(info.value, SymmetryError)


def test_a_non_finite_objective_is_a_failure_whatever_the_solver_says():
    g, pa, pb = pair()

    def diverges(problem, **_):
        return Solution(sy.identity_transforms(problem.graph_b), objective_before=1.0,
                        objective_after=float("inf"), status="converged", message="done")

    def nan_bound(problem, **_):
        return Solution(sy.identity_transforms(problem.graph_b), objective_before=1.0, objective_after=0.5,
                        lower_bound=float("nan"), status="optimal")

    sol = solvers.solve(diverges, g, pa, pb)
    assert sol.status == "failed" and not sol.success
    assert sol.message.startswith("objective_after is inf") and sol.message.endswith("; done")
    assert solvers.solve(nan_bound, g, pa, pb).status == "failed"
