"""Convex relaxations: certified bounds against brute force, planted recovery, f = J on the classes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import solvers
from solvers.errors import SolverInputError, UnsupportedClassError
from solvers.problem import make_problem
from solvers.algorithms.relaxation import formulate, relax, round_relaxed
from solvers.algorithms.relaxation.misfit import build_misfit
from symmetries.action import apply
from symmetries.classes import Orthogonal, Permutation, PermutationScaling
from symmetries.elements import GatherElement
from symmetries.transforms import TransformSet, random_transforms

SEEDS = st.integers(0, 2**16)


def _pair(widths, seed, activation="relu", planted=None, noise=0.0, cls=Permutation()):
    arch = architectures.mlp(widths, activation=activation)
    pa = arch.module(seed=seed, dtype=torch.float64).state_dict()
    if planted:
        t = random_transforms(arch.graph, seed=seed + 1, classes=cls)
        pb = apply(arch.graph, pa, t.inverse())  # T · θ_B = θ_A: the planted optimum is T
        g = torch.Generator().manual_seed(seed + 2)
        pb = {k: v + noise * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in pb.items()}
    else:
        t = None
        pb = arch.module(seed=seed + 1000, dtype=torch.float64).state_dict()
    return arch, pa, pb, t


def _brute(problem, widths):
    spaces = problem.spaces
    best = np.inf
    for perms in itertools.product(*(itertools.permutations(range(widths[i + 1])) for i in range(len(spaces)))):
        t = TransformSet({s: GatherElement(list(p)) for s, p in zip(spaces, perms)})
        best = min(best, problem.objective(t))
    return best


@settings(max_examples=12, deadline=None)
@given(seed=SEEDS, width=st.sampled_from([3, 4]))
def test_bound_below_brute_force_optimum(seed, width):
    """bound ≤ optimum ≤ the returned J ≤ weight matching's J, the relaxation itself bracketed."""
    widths = [3, width, width, 2]
    arch, pa, pb, _ = _pair(widths, seed)
    sol = solvers.solve("relaxation", arch, pa, pb, classes=Permutation())
    wm = solvers.solve("weight_matching", arch, pa, pb, classes=Permutation())
    opt = _brute(make_problem(arch.graph, pa, pb, classes=Permutation()), widths)
    assert sol.lower_bound <= opt + 1e-9 * opt
    assert opt - 1e-9 * opt <= sol.objective_after <= wm.objective_after + 1e-12  # WM's start is a candidate
    assert sol.gap == pytest.approx(sol.objective_after - sol.lower_bound)
    assert (sol.status == "optimal") == (sol.gap <= 1e-6 * max(sol.objective_before, sol.objective_after))
    assert sol.extra["relaxation_status"] == "optimal"  # the APG converged: bound within 1e-8 of f(X̂)
    assert sol.lower_bound <= sol.extra["relaxed_value"] <= sol.lower_bound * (1 + 1e-8) + 1e-12
    for el in sol.transforms.values():
        assert Permutation().contains(el)


@pytest.mark.parametrize("seed", [0, 3, 9])
def test_rounding_candidates_reach_the_optimum_where_oracle_rounding_misses(seed):
    """Seeds of [4, 5, 5, 3] where the oracle rounding of X̂ plus polish stops 2–5% above the
    brute-force optimum; weight matching's start or a randomised rounding, polished, reaches it."""
    widths = [4, 5, 5, 3]
    arch = architectures.mlp(widths)
    pa = arch.module(seed=seed, dtype=torch.float64).state_dict()
    pb = arch.module(seed=seed + 100, dtype=torch.float64).state_dict()
    opt = _brute(make_problem(arch.graph, pa, pb, classes=Permutation()), widths)
    sol = solvers.solve("relaxation", arch, pa, pb, classes=Permutation())
    assert sol.extra["candidates"]["rounded"] > opt * (1 + 1e-3)  # what the single rounding gave
    assert sol.objective_after == pytest.approx(opt, rel=1e-10) and sol.extra["chosen"] != "rounded"
    assert sol.lower_bound < 0.7 * opt  # the relaxation stays loose here: the gap is reported, not closed
    assert sol.status == "converged" and sol.gap == pytest.approx(opt - sol.lower_bound, rel=1e-9)
    single = solvers.solve("relaxation", arch, pa, pb, classes=Permutation(), rounding_samples=0)
    assert set(single.extra["candidates"]) == {"rounded", "weight_matching"}


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS)
def test_rounded_solution_reaches_brute_force_optimum_on_planted_noisy_problem(seed):
    """Planted plus 2% noise: the oracle rounding of X̂ alone (polished) reaches the optimum."""
    widths = [3, 4, 4, 2]
    arch, pa, pb, t = _pair(widths, seed, planted=True, noise=0.02)
    sol = solvers.solve("relaxation", arch, pa, pb, classes=Permutation())
    problem = make_problem(arch.graph, pa, pb, classes=Permutation())
    opt = _brute(problem, widths)
    assert sol.lower_bound <= opt + 1e-9 * opt
    assert sol.extra["candidates"]["rounded"] == pytest.approx(opt, rel=1e-9, abs=1e-12)
    assert sol.objective_after == pytest.approx(opt, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("width", [4, 12])
def test_planted_permutation_gap_closes(width):
    arch, pa, pb, t = _pair([6, width, width, width, 3], 7, planted=True)
    sol = solvers.solve("relaxation", arch, pa, pb, classes=Permutation())
    assert sol.objective_after == pytest.approx(0.0, abs=1e-12)
    assert abs(sol.lower_bound) <= 1e-6 and sol.gap <= 1e-6
    assert sol.status == "optimal"
    for s, el in t.items():
        assert torch.equal(sol.transforms[s].as_matrix(), el.as_matrix())


def test_planted_orthogonal_gap_closes():
    arch, pa, pb, t = _pair([5, 6, 6, 3], 3, activation="identity", planted=True, cls=Orthogonal())
    sol = solvers.solve("relaxation", arch, pa, pb, classes=Orthogonal())
    assert sol.objective_after <= 1e-10
    assert -1e-5 <= sol.lower_bound <= 1e-10
    assert sol.status == "optimal"
    for s, el in t.items():
        assert torch.allclose(sol.transforms[s].as_matrix(), el.as_matrix(), atol=1e-6)


@settings(max_examples=8, deadline=None)
@given(seed=SEEDS)
def test_orthogonal_bound_below_every_orthogonal_alignment(seed):
    arch, pa, pb, _ = _pair([4, 5, 5, 3], seed, activation="identity")
    sol = solvers.solve("relaxation", arch, pa, pb, classes=Orthogonal())
    problem = make_problem(arch.graph, pa, pb, classes=Orthogonal())
    wm = solvers.solve("weight_matching", arch, pa, pb, classes=Orthogonal())
    candidates = [sol.objective_after, wm.objective_after, problem.objective(None)]
    candidates += [problem.objective(random_transforms(arch.graph, seed=seed + k, classes=Orthogonal()))
                   for k in range(20)]
    assert sol.lower_bound <= min(candidates) + 1e-9
    for el in sol.transforms.values():
        assert Orthogonal().contains(el)


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, orth=st.booleans())
def test_misfit_equals_objective_on_the_class(seed, orth):
    cls = Orthogonal() if orth else Permutation()
    arch, pa, pb, _ = _pair([3, 5, 4, 2], seed, activation="identity" if orth else "relu")
    problem = make_problem(arch.graph, pa, pb, classes=cls)
    misfit = build_misfit(problem)
    t = random_transforms(arch.graph, seed=seed, classes=cls)
    x = {s: t[s].as_matrix().numpy() for s in misfit.spaces}
    assert misfit.value(x) == pytest.approx(problem.objective(t), rel=1e-10)


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, scale=st.floats(0.0, 3.0))
def test_certificate_is_valid_at_any_point(seed, scale):
    """L(X̂) ≤ min over permutations for arbitrary (even infeasible) X̂."""
    widths = [3, 3, 4, 2]
    arch, pa, pb, _ = _pair(widths, seed)
    problem = make_problem(arch.graph, pa, pb, classes=Permutation())
    misfit = build_misfit(problem)
    g = np.random.default_rng(seed)
    x = {s: scale * g.standard_normal((n, n)) for s, (n, _) in misfit.spaces.items()}
    assert misfit.lower_bound(x) <= _brute(problem, widths) + 1e-9


def test_gradient_matches_finite_differences():
    arch, pa, pb, _ = _pair([3, 4, 3, 2], 1)
    misfit = build_misfit(make_problem(arch.graph, pa, pb, classes=Permutation()))
    g = np.random.default_rng(0)
    x = {s: g.random((n, n)) for s, (n, _) in misfit.spaces.items()}
    grad = misfit.gradient(x)
    for s in x:
        d = g.standard_normal(x[s].shape)
        xp = dict(x, **{s: x[s] + 1e-6 * d})
        xm = dict(x, **{s: x[s] - 1e-6 * d})
        fd = (misfit.value(xp) - misfit.value(xm)) / 2e-6
        assert fd == pytest.approx(float(np.sum(grad[s] * d)), rel=1e-6)


def test_scs_answer_is_corrected_into_a_valid_bound():
    widths = [3, 4, 4, 2]
    arch, pa, pb, _ = _pair(widths, 11)
    problem = make_problem(arch.graph, pa, pb, classes=Permutation())
    misfit = build_misfit(problem)
    loose = relax(misfit, solver="SCS", eps_abs=1e-2, eps_rel=1e-2)
    exact = relax(misfit, solver="CLARABEL")
    assert loose.bound <= exact.value + 1e-8
    assert loose.bound <= _brute(problem, widths)
    assert exact.bound == pytest.approx(exact.value, rel=1e-6)


def test_aux_and_direct_formulations_agree():
    arch, pa, pb, _ = _pair([20, 5, 5, 3], 2)
    misfit = build_misfit(make_problem(arch.graph, pa, pb, classes=Permutation()))
    a, d = relax(misfit, solver="CLARABEL", formulation="aux"), relax(misfit, solver="CLARABEL", formulation="direct")
    assert a.value == pytest.approx(d.value, rel=1e-6)
    assert round_relaxed(misfit, a.x)["hidden.0"].shape == (5, 5)
    with pytest.raises(ValueError):
        formulate(misfit, "bogus")


def test_inputs_are_not_mutated_and_solver_is_registered():
    arch, pa, pb, _ = _pair([3, 4, 4, 2], 5)
    copies = {k: v.clone() for k, v in pb.items()}
    solvers.solve("relaxation", arch, pa, pb, classes=Permutation())
    assert all(torch.equal(copies[k], pb[k]) for k in pb)
    assert "relaxation" in [i.name for i in solvers.available()]


def test_unsupported_class_and_slices_are_refused():
    arch, pa, pb, _ = _pair([3, 4, 4, 2], 5)
    with pytest.raises(UnsupportedClassError, match="hidden.0"):
        solvers.solve("relaxation", arch, pa, pb, classes=PermutationScaling())
    from symmetries.graph import WeightGraph
    g = WeightGraph("sliced")
    g.add_parameter("w", (4, 3)).add_parameter("v", (2, 4))
    g.add_space("h", 2, Permutation())
    g.connect("w", "h", axis=0, role="out", slice=(0, 2))
    g.connect("v", "h", axis=1, role="in", slice=(0, 2))
    p = {"w": torch.randn(4, 3, dtype=torch.float64), "v": torch.randn(2, 4, dtype=torch.float64)}
    # a slice is a tensor of its own (packed Q/K/V): planted recovery, proven optimal
    t = TransformSet({"h": GatherElement([1, 0])})
    sol = solvers.solve("relaxation", g, p, apply(g, p, t), classes=Permutation())
    assert sol.status == "optimal" and torch.equal(sol.transforms["h"].as_matrix(), t.inverse()["h"].as_matrix())
    g2 = WeightGraph("sliced twice")
    g2.add_parameter("w", (4, 4))
    g2.add_space("h", 2, Permutation()).add_space("k", 2, Permutation())
    g2.connect("w", "h", axis=0, role="out", slice=(0, 2))
    g2.connect("w", "k", axis=1, role="in", slice=(2, 4))
    q = {"w": torch.randn(4, 4, dtype=torch.float64)}
    with pytest.raises(SolverInputError, match="'w'"):
        solvers.solve("relaxation", g2, q, q, classes=Permutation())


@pytest.mark.parametrize("batchnorm", [False, True])
def test_convolutions_and_batchnorm_variances(batchnorm):
    """Kernels (``k`` slices per term) and BatchNorm (``var`` role): planted recovery and the bound
    below the brute-force optimum on a small VGG."""
    arch = architectures.vgg((3, "M", 4), in_channels=2, num_classes=3, batchnorm=batchnorm)
    pa = arch.module(seed=0, dtype=torch.float64).state_dict()
    g = torch.Generator().manual_seed(0)
    pa = {k: v.abs() + torch.rand(v.shape, generator=g, dtype=v.dtype) if "running_var" in k else v
          for k, v in pa.items()}
    t = random_transforms(arch.graph, seed=1, classes=Permutation())
    sol = solvers.solve("relaxation", arch, pa, apply(arch.graph, pa, t.inverse()), classes=Permutation())
    assert sol.status == "optimal" and sol.objective_after == pytest.approx(0.0, abs=1e-12)
    assert all(torch.equal(sol.transforms[s].as_matrix(), t[s].as_matrix()) for s in t)
    pc = arch.module(seed=5, dtype=torch.float64).state_dict()
    pc = {k: v.abs() + 0.5 if "running_var" in k else v for k, v in pc.items()}
    sol = solvers.solve("relaxation", arch, pa, pc, classes=Permutation())
    problem = make_problem(arch.graph, pa, pc, classes=Permutation())
    spaces = problem.spaces
    best = min(problem.objective(TransformSet({s: GatherElement(list(p)) for s, p in zip(spaces, perms)}))
               for perms in itertools.product(*(itertools.permutations(range(problem.sizes[s][0])) for s in spaces)))
    assert sol.lower_bound <= best + 1e-9 * best <= sol.objective_after + 2e-9 * best


# -- the APG route (default) ------------------------------------------------------------------------------------
def _relaxable(kind, seed, planted=False):
    if kind == "vgg_bn":
        arch, cls = architectures.vgg((3, "M", 4), in_channels=2, num_classes=3, batchnorm=True), Permutation()
    elif kind == "resnet":
        arch, cls = architectures.resnet(8, channels=(3, 4), in_channels=2), Permutation()
    elif kind == "orthogonal":
        arch, cls = architectures.mlp([5, 7, 6, 3], "identity"), Orthogonal()
    elif kind == "mixed":
        arch, cls = architectures.mlp([5, 7, 6, 3], "identity"), {"hidden.0": Permutation(), "hidden.1": Orthogonal()}
    else:
        arch, cls = architectures.mlp([5, 7, 6, 3]), Permutation()

    def fix(p):
        return {k: v.abs() + 0.5 if "running_var" in k else v for k, v in p.items()}
    pa = fix(arch.module(seed=seed, dtype=torch.float64).state_dict())
    if planted:
        pb = apply(arch.graph, pa, random_transforms(arch.graph, seed=seed, classes=cls).inverse())
    else:
        pb = fix(arch.module(seed=seed + 50, dtype=torch.float64).state_dict())
    return arch, pa, pb, cls


@pytest.mark.parametrize("kind", ["mlp", "orthogonal", "mixed", "vgg_bn", "resnet"])
@pytest.mark.parametrize("planted", [False, True])
def test_apg_bound_agrees_with_clarabel(kind, planted):
    arch, pa, pb, cls = _relaxable(kind, 1, planted)
    misfit = build_misfit(make_problem(arch.graph, pa, pb, classes=cls))
    apg, ipm = relax(misfit), relax(misfit, solver="CLARABEL")
    assert apg.status == "optimal" and apg.solver == "APG" and apg.iterations > 0
    assert apg.bound <= apg.value + 1e-12  # L(X̂) ≤ min f ≤ f(X̂) at the feasible X̂
    assert apg.value - apg.bound <= 1e-8 * abs(apg.value) + 1e-10 * misfit.value(
        {s: np.eye(n) for s, (n, _) in misfit.spaces.items()})
    assert apg.bound == pytest.approx(ipm.bound, rel=1e-6, abs=1e-7)
    for s, (n, c) in misfit.spaces.items():  # the returned point is feasible
        x = apg.x[s]
        if isinstance(c, Permutation):
            assert x.min() >= 0 and np.allclose(x.sum(0), 1, atol=1e-9) and np.allclose(x.sum(1), 1, atol=1e-9)
        else:
            assert np.linalg.norm(x, 2) <= 1 + 1e-9


def test_an_early_stopped_apg_still_gives_a_valid_bound():
    widths = [3, 4, 4, 2]
    arch, pa, pb, _ = _pair(widths, 4)
    problem = make_problem(arch.graph, pa, pb, classes=Permutation())
    misfit = build_misfit(problem)
    early, full = relax(misfit, max_iter=3, check_every=1), relax(misfit)
    assert early.status == "max_iter" and early.iterations == 3
    assert early.bound <= full.bound <= _brute(problem, widths)
    assert full.bound - early.bound > 1e-6  # it really stopped early: looser, still valid


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), seed=SEEDS, log_scale=st.floats(-3, 3), shape=st.sampled_from(["plain", "row", "ties"]))
def test_birkhoff_projection_is_exact(n, seed, log_scale, shape):
    from solvers.algorithms.relaxation import project_birkhoff
    g = np.random.default_rng(seed)
    scale = 10.0 ** log_scale
    y = scale * g.standard_normal((n, n))
    if shape == "row":
        y[0] = -1e3 * scale  # a row far below the others: no support at the start
    elif shape == "ties":
        y = np.round(y / scale) * scale
    x, (u, v), _ = project_birkhoff(y)
    # KKT: x = max(y − u1ᵀ − 1vᵀ, 0) with unit row and column sums is the projection
    assert np.array_equal(x, np.maximum(y - u[:, None] - v[None, :], 0.0))
    tol = 1e-9 * max(1.0, float(np.abs(y).max()))
    assert np.allclose(x.sum(0), 1, atol=tol) and np.allclose(x.sum(1), 1, atol=tol)
    h = np.random.default_rng(seed + 1)  # any other doubly stochastic point is farther from y
    weights = h.dirichlet(np.ones(3))
    rival = sum(w * np.eye(n)[h.permutation(n)] for w in weights)
    assert np.sum((x - y) ** 2) <= np.sum((rival - y) ** 2) + 1e-9 * max(1.0, scale) ** 2


def test_birkhoff_projection_against_cvxpy():
    import cvxpy as cp
    from solvers.algorithms.relaxation import project_birkhoff
    g = np.random.default_rng(0)
    for n, scale in ((4, 0.3), (6, 1.0), (7, 5.0)):
        y = scale * g.standard_normal((n, n))
        x, _, _ = project_birkhoff(y)
        var = cp.Variable((n, n), nonneg=True)
        cp.Problem(cp.Minimize(cp.sum_squares(var - y)), [cp.sum(var, 0) == 1, cp.sum(var, 1) == 1]).solve(
            solver="CLARABEL")
        assert np.sum((x - y) ** 2) <= np.sum((var.value - y) ** 2) + 1e-8
        assert np.abs(x - var.value).max() < 1e-4


def test_spectral_ball_projection_clips_singular_values():
    from solvers.algorithms.relaxation import project_spectral_ball
    g = np.random.default_rng(0)
    y = 2 * g.standard_normal((5, 5))
    x = project_spectral_ball(y)
    sv_x, sv_y = np.linalg.svd(x, compute_uv=False), np.linalg.svd(y, compute_uv=False)
    assert np.allclose(sv_x, np.minimum(sv_y, 1.0))
    inside = y / (2 * sv_y.max())
    assert np.allclose(project_spectral_ball(inside), inside)


def test_relaxation_methods_and_options():
    arch, pa, pb, _ = _pair([3, 4, 4, 2], 2)
    apg = solvers.solve("relaxation", arch, pa, pb, classes=Permutation())
    ipm = solvers.solve("relaxation", arch, pa, pb, classes=Permutation(), engine="cvxpy")
    scs = solvers.solve("relaxation", arch, pa, pb, classes=Permutation(), cvxpy_solver="SCS")
    assert apg.extra["relaxation_solver"] == "APG" and apg.extra["cvxpy_solver"] is None
    assert ipm.extra["relaxation_solver"] == "CLARABEL" and scs.extra["relaxation_solver"] == "SCS"
    assert apg.lower_bound == pytest.approx(ipm.lower_bound, rel=1e-6) and scs.lower_bound <= ipm.lower_bound + 1e-7
    opts = solvers.solve("relaxation", arch, pa, pb, classes=Permutation(), solver_options=dict(tol=1e-4))
    assert opts.lower_bound <= apg.lower_bound + 1e-12
    with pytest.raises(ValueError, match="engine"):
        solvers.solve("relaxation", arch, pa, pb, classes=Permutation(), engine="newton")
    with pytest.raises(ValueError, match="cvxpy_solver"):
        solvers.solve("relaxation", arch, pa, pb, classes=Permutation(), engine="apg", cvxpy_solver="SCS")
