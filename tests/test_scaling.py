"""The exact positive scale (solvers.scaling): the quartic Newton paths and the one-sided closed form
against the companion-matrix eigenvalue path (the reference and the fallback), on random, drawn
(hypothesis) and degenerate coefficients; the scale descent (solvers.scale_descent) against the
per-space views and the exact objective; staged permutation × scaling weight matching on MLPs and on
a net with concatenations — float64."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

import architectures
import solvers
import solvers.scale_descent as scale_descent
import solvers.scaling as scaling
from solvers.local import Matcher
from solvers.scale_descent import ScaleViews, balanced_scales, multipliers
from solvers.scaling import C_MAX, C_MIN, best_scale, best_scale_eig, scale_loss
from solvers.subproblems import _scale_terms
from symmetries import PermutationScaling, PositiveScaling, apply, random_transforms
from symmetries.roles import Role
from symmetries.elements import GatherElement
from symmetries.transforms import TransformSet


def _agree(terms, rtol=1e-9):
    """Same minimum value (to round-off relative to the terms' size) and the same minimiser where
    it is unique; the new value is never worse than the eigenvalue path's."""
    c_new, f_new = best_scale(**terms)
    c_old, f_old = best_scale_eig(**terms)
    size = sum(np.abs(np.broadcast_to(v, f_new.shape)) for v in terms.values()) + 1e-300
    assert np.all(np.isfinite(f_new)) and np.all((c_new >= C_MIN) & (c_new <= C_MAX))
    assert np.all(f_new <= f_old + rtol * size * np.maximum(c_old, 1 / c_old) ** 2)
    # the reported value is f at the reported scale
    recomputed = scale_loss(c_new, terms["alpha"], terms["beta"], terms["gamma"], terms["delta"],
                            terms.get("zeta", 0.0), terms.get("eps", 0.0))
    np.testing.assert_allclose(f_new, recomputed, rtol=1e-12, atol=1e-12 * size.max())
    return c_new, f_new, c_old, f_old


@pytest.mark.parametrize("seed", range(4))
def test_quartic_matches_eigenvalues_random(seed):
    g = np.random.default_rng(seed)
    n = 4000
    terms = dict(alpha=g.normal(size=n) * 3, beta=g.uniform(0.01, 5, n), gamma=g.normal(size=n) * 3,
                 delta=g.uniform(0.01, 5, n))
    c_new, f_new, c_old, f_old = _agree(terms)
    np.testing.assert_allclose(f_new, f_old, rtol=1e-10, atol=1e-10)
    # where the two local minima are not tied, the minimiser is the same
    np.testing.assert_allclose(c_new, c_old, rtol=1e-6)


def test_quartic_two_minima_and_near_double_roots():
    """α, γ > 0 with three positive stationary points (two minima), and nearly tangent cases."""
    g = np.random.default_rng(5)
    # p(c) = β(c − r1)(c − r2)(c − r3)(c + s): choose roots, read the coefficients (c² coefficient must be 0)
    rows = []
    for _ in range(3000):
        r1, r2 = g.uniform(0.05, 1), g.uniform(1, 3)
        r3 = r2 + g.choice([g.uniform(1e-9, 1e-6), g.uniform(0.1, 3)])
        s = (r1 * r2 + r1 * r3 + r2 * r3) / (r1 + r2 + r3)  # kills the c² term: e2 of (r1, r2, r3, −s) = 0
        e1 = r1 + r2 + r3 - s
        e3 = r1 * r2 * r3 - s * (r1 * r2 + r1 * r3 + r2 * r3)
        e4 = -r1 * r2 * r3 * s
        beta = g.uniform(0.1, 2)
        rows.append((beta * e1, beta, -beta * e3, -beta * e4))  # βc⁴ − αc³ + γc − δ
    a, b, gm, d = map(np.array, zip(*rows))
    assert np.all(a > 0) and np.all(gm > 0) and np.all(d > 0)
    _agree(dict(alpha=a, beta=b, gamma=gm, delta=d), rtol=1e-8)


def test_degenerate_and_extreme_rows():
    """Zero norms, negative cross terms, huge and tiny magnitudes, var terms: every row is either
    solved by the quartic or handed to the eigenvalue path — same answers."""
    g = np.random.default_rng(1)
    n = 500
    mags = 10.0 ** g.uniform(-150, 150, size=(4, n))
    cases = [
        dict(alpha=g.normal(size=n), beta=np.zeros(n), gamma=g.normal(size=n), delta=g.uniform(0.1, 1, n)),
        dict(alpha=g.normal(size=n), beta=g.uniform(0.1, 1, n), gamma=g.normal(size=n), delta=np.zeros(n)),
        dict(alpha=np.zeros(n), beta=np.zeros(n), gamma=np.zeros(n), delta=np.zeros(n)),
        dict(alpha=-np.abs(g.normal(size=n)), beta=g.uniform(0.1, 1, n), gamma=-np.abs(g.normal(size=n)),
             delta=g.uniform(0.1, 1, n)),
        dict(alpha=g.normal(size=n) * mags[0], beta=mags[1], gamma=g.normal(size=n) * mags[2], delta=mags[3]),
        dict(alpha=g.normal(size=n) * 1e-12, beta=g.uniform(1e-12, 1e-11, n), gamma=g.normal(size=n) * 1e12,
             delta=g.uniform(1e12, 1e13, n)),  # minimisers near or beyond the box
        dict(alpha=g.normal(size=n), beta=g.uniform(0.1, 1, n), gamma=g.normal(size=n), delta=g.uniform(0.1, 1, n),
             zeta=g.normal(size=n), eps=g.uniform(0.1, 1, n)),  # var edges: the sextic
    ]
    for terms in cases:
        with np.errstate(all="ignore"):
            c_new, f_new = best_scale(**terms)
            c_old, f_old = best_scale_eig(**terms)
        ok = np.isfinite(f_old)
        assert np.array_equal(ok, np.isfinite(f_new))
        size = sum(np.abs(v) for v in terms.values())
        assert np.all(f_new[ok] <= f_old[ok] + 1e-9 * size[ok] * np.maximum(c_old[ok], 1 / c_old[ok]) ** 2)


@pytest.mark.parametrize("spread", [0.05, 0.3, 3.0])
def test_pair_grid_matches_best_scale(spread):
    """The D P pair grid's cheaper root (float32 Newton from the series start, one float64 step, the
    certificate): the same minimum values as best_scale to round-off and the minimisers to 1e-9, with
    correlations small (the series' reach), moderate and large (the fast float64 path takes those), and
    degenerate rows (zero norms, one-sided) handed on as best_scale hands them."""
    g = np.random.default_rng(int(spread * 100))
    n = 96
    b, d = g.uniform(0.2, 3, (1, n)), g.uniform(0.2, 3, (1, n))
    a, gm = g.normal(size=(n, n)) * spread * np.sqrt(b), g.normal(size=(n, n)) * spread * np.sqrt(d)
    b[0, :3], a[:, 3] = 0.0, 0.0  # columns with no producing weights, or no cross term
    c1, f1 = scaling.pair_grid(a, b, gm, d)
    c2, f2 = best_scale(a, b, gm, d)
    size = np.abs(a) + np.abs(b) + np.abs(gm) + np.abs(d)
    np.testing.assert_allclose(f1, f2, rtol=0, atol=1e-13 * size.max())
    np.testing.assert_allclose(c1, c2, rtol=1e-9)
    c3, f3 = best_scale_eig(a, b, gm, d)
    assert np.all(f1 <= f3 + 1e-9 * size * np.maximum(c3, 1 / c3) ** 2)


def test_grid_broadcast_and_tensors():
    """The n × n grid of PermutationScaling (crosses m × n, norms 1 × n), numpy or torch inputs."""
    g = np.random.default_rng(2)
    a, gm = g.normal(size=(64, 64)), g.normal(size=(64, 64))
    b, d = g.uniform(0.5, 2, (1, 64)), g.uniform(0.5, 2, (1, 64))
    c1, f1 = best_scale(a, b, gm, d)
    c2, f2 = best_scale(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(gm), torch.from_numpy(d))
    c3, f3 = best_scale_eig(a, b, gm, d)
    assert c1.shape == (64, 64)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(f1, f3, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_permutation_scaling_staged(seed):
    """The staged solve (permutations on balanced B, then scales, then full D P sweeps with the scales
    polished in between) converges, never increases J, ends at or below the permutation optimum, and
    is a fixed point of the exact D P subproblem: one more plain sweep from it accepts nothing."""
    arch = architectures.mlp([12, 24, 24, 6])
    a = {k: v.double() for k, v in arch.module(seed=2 * seed).state_dict().items()}
    b = {k: v.double() for k, v in arch.module(seed=2 * seed + 1).state_dict().items()}
    args = (arch.graph, a, b)
    new = solvers.solve("weight_matching", *args, classes="permutation_scaling", seed=seed)
    perm = solvers.solve("weight_matching", *args, classes="permutation", seed=seed)
    assert new.status == "converged"
    assert new.objective_after <= perm.objective_after
    assert all(y <= x * (1 + 1e-12) for x, y in zip(new.history, new.history[1:]))
    again = solvers.solve("weight_matching", *args, classes="permutation_scaling", seed=seed + 7,
                          start="identity", init=new.transforms, max_iter=1)
    assert again.objective_after >= new.objective_after * (1 - 1e-10)


def test_permutation_scaling_planted_recovery():
    """B = a random D P of A: the staged solve recovers it exactly (J → 0)."""
    arch = architectures.mlp([10, 16, 16, 4])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    t = random_transforms(arch.graph, 3, classes=PermutationScaling())
    b = apply(arch.graph, a, t)
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes="permutation_scaling")
    assert sol.status == "converged" and sol.objective_after < 1e-10 * sol.objective_before  # tol 1e-12 relative
    truth = t.inverse()
    for s in truth:
        torch.testing.assert_close(sol.transforms[s].as_matrix(), truth[s].as_matrix(), rtol=1e-4, atol=1e-6)


def test_positive_scaling_planted():
    arch = architectures.mlp([10, 16, 16, 4])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    t = random_transforms(arch.graph, 4, classes=PositiveScaling())
    b = apply(arch.graph, a, t)
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes="positive_scaling")
    assert sol.status == "converged" and sol.objective_after < 1e-10 * sol.objective_before


# -- drawn coefficients: the fast paths never worse than the eigenvalue reference ------------------------
CROSS = st.one_of(st.just(0.0), st.floats(-50, 50), st.floats(-1e-6, 1e-6))
NORM = st.one_of(st.just(0.0), st.floats(1e-6, 50), st.floats(1e-9, 1e-6))


def _check_not_worse(terms, c_new, f_new):
    """``f(c_new) ≤ f(c_eig) + 1e-9·size`` (the exact minimum, to round-off relative to the terms), ``f_new``
    is ``f`` at ``c_new``, ``c_new`` in the box — on every row the eigenvalue path solves."""
    with np.errstate(all="ignore"):
        c_old, f_old = best_scale_eig(**terms)
    ok = np.isfinite(f_old)
    assert np.array_equal(ok, np.isfinite(f_new))
    size = sum(np.abs(np.broadcast_to(v, f_new.shape)) for v in terms.values())
    bound = 1e-9 * size * np.maximum(c_old, 1 / c_old) ** 2 + 1e-300
    assert np.all(f_new[ok] <= f_old[ok] + bound[ok])
    assert np.all((c_new[ok] >= C_MIN) & (c_new[ok] <= C_MAX))
    with np.errstate(all="ignore"):
        again = scale_loss(c_new, *(np.broadcast_to(terms.get(k, 0.0), f_new.shape) for k in
                                    ("alpha", "beta", "gamma", "delta", "zeta", "eps")))
    np.testing.assert_allclose(f_new[ok], again[ok], rtol=1e-9, atol=1e-12 * float(size.max(initial=0.0)))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 24).flatmap(lambda n: st.tuples(*(hnp.arrays(np.float64, n, elements=e) for e in
                                                        (CROSS, NORM, CROSS, NORM, CROSS, NORM)))),
       st.sampled_from(["none", "some", "all"]))
def test_drawn_coefficients_never_worse_than_eigenvalues(arrays, var):
    """Any sign, zeros (one-sided and empty rows), var edges on none, some or all rows."""
    a, b, g, d, z, e = arrays
    if var == "none":
        z, e = np.zeros_like(z), np.zeros_like(e)
    elif var == "some":
        z, e = np.where(np.arange(z.size) % 2 == 0, z, 0.0), np.where(np.arange(e.size) % 2 == 0, e, 0.0)
    terms = dict(alpha=a, beta=b, gamma=g, delta=d, zeta=z, eps=e)
    with np.errstate(all="ignore"):
        c_new, f_new = best_scale(**terms)
    _check_not_worse(terms, c_new, f_new)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(1e-3, 1e3))
def test_drawn_unit_pairs_never_worse_than_eigenvalues(k, seed, planted, ratio):
    """Coefficients from actual rows (Cauchy–Schwarz holds): A's unit a mix of a scaled copy of B's and
    noise (``planted`` = 1: an exact D P pair), norms of the two roles ``ratio`` apart."""
    g = np.random.default_rng(seed)
    b_out, b_in = g.normal(size=(16, k)), g.normal(size=(16, k)) * ratio
    c_true = np.exp(g.normal(size=16))
    a_out = planted * c_true[:, None] * b_out + (1 - planted) * g.normal(size=(16, k))
    a_in = planted * b_in / c_true[:, None] + (1 - planted) * g.normal(size=(16, k)) * ratio
    terms = dict(alpha=(a_out * b_out).sum(1), beta=(b_out ** 2).sum(1), gamma=(a_in * b_in).sum(1),
                 delta=(b_in ** 2).sum(1))
    c_new, f_new = best_scale(**terms)
    _check_not_worse(terms, c_new, f_new)
    if planted == 1.0:
        np.testing.assert_allclose(c_new, c_true, rtol=1e-6)


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_guarded_path_alone_matches_eigenvalues(monkeypatch, steps):
    """With the unguarded steps cut short every row goes to the guarded monotone Newton: same minima."""
    monkeypatch.setattr(scaling, "FAST_STEPS", steps)
    g = np.random.default_rng(7)
    n = 3000
    terms = dict(alpha=g.normal(size=n) * 3, beta=g.uniform(0.01, 5, n), gamma=g.normal(size=n) * 3,
                 delta=g.uniform(0.01, 5, n))
    c_new, f_new = best_scale(**terms)
    _check_not_worse(terms, c_new, f_new)
    np.testing.assert_allclose(f_new, best_scale_eig(**terms)[1], rtol=1e-10, atol=1e-10)


def test_fast_path_certifies_typical_grids():
    """The fast path's certificate holds where it should: no row of a typical grid needs the guarded path."""
    g = np.random.default_rng(3)
    a, gm = g.normal(size=(200, 200)) * 0.3, g.normal(size=(200, 200)) * 0.3
    _, ok = scaling._fast_root(a, gm)
    assert ok.mean() > 0.999
    big, bad = np.array([2.5, 1.4, 0.5]), np.array([3.0, -2.0, 0.9])  # G t_i ≥ 1: a concave-part root possible
    assert not scaling._fast_root(big, bad)[1][0]


def test_one_sided_rows_closed_form():
    """γ = δ = 0 (only producing tensors) and α = β = 0 (only consuming): the clamped quadratic, as eig."""
    g = np.random.default_rng(4)
    n = 400
    for terms in (dict(alpha=g.normal(size=n), beta=g.uniform(1e-3, 2, n), gamma=0.0, delta=0.0),
                  dict(alpha=0.0, beta=0.0, gamma=g.normal(size=n), delta=g.uniform(1e-3, 2, n)),
                  dict(alpha=g.normal(size=n) * 1e12, beta=g.uniform(1e-3, 2, n), gamma=0.0, delta=0.0)):
        c_new, f_new = best_scale(**terms)
        _check_not_worse(terms, c_new, f_new)
        one = scaling._one_sided(*(np.broadcast_to(np.asarray(terms[k], dtype=float), (n,)) for k in
                                   ("alpha", "beta", "gamma", "delta")), np.zeros(n), np.zeros(n))
        assert np.isfinite(one[0]).all()


# -- the scale descent -----------------------------------------------------------------------------------
class Fire(nn.Module):
    """SqueezeNet's fire module: a 1×1 squeeze, then 1×1 and 3×3 expands concatenated."""

    def __init__(self, c_in, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(c_in, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.e1(x)), torch.relu(self.e3(x))], 1)


class TinySqueeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.fire1, self.fire2 = Fire(8, 4, 6), Fire(12, 4, 6)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        x = self.fire2(self.fire1(torch.relu(self.stem(x))))
        return torch.relu(self.head(x)).mean((2, 3))


def _squeeze_pair():
    torch.manual_seed(0)
    m = TinySqueeze().double()
    graph = architectures.from_module(m, torch.zeros(1, 3, 12, 12, dtype=torch.float64))
    a = {k: v.detach().clone() for k, v in m.state_dict().items()}
    return graph, a


def _random_monomials(problem, seed):
    g = np.random.default_rng(seed)
    return {s: GatherElement.monomial(torch.from_numpy(g.permutation(problem.sizes[s][1])),
                                      torch.from_numpy(np.exp(g.normal(size=problem.sizes[s][1]) * 0.5)))
            for s in problem.spaces}


def _scaling_problem(net: str, widths: list[int]):
    """``(graph, problem)`` for ``PermutationScaling``: two seeds of an MLP of ``widths``, or the convnet with
    concatenations and a noisy copy of it (float64)."""
    if net == "mlp":
        arch = architectures.mlp(widths)
        graph, a = arch.graph, {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
        b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    else:
        graph, a = _squeeze_pair()
        b = {k: v + 0.3 * torch.randn_like(v) for k, v in a.items()}
    return graph, solvers.make_problem(graph, a, b, classes="permutation_scaling")


@pytest.mark.parametrize("net", ["mlp", "squeeze"])
def test_scale_views_equal_per_space_terms_and_objective(net):
    """Every space's scale terms from the views (split axes of a concatenation included) equal those of
    the per-space subproblem; the per-block sums give J's change under per-space multipliers exactly."""
    graph, problem = _scaling_problem(net, [7, 9, 8, 3])
    assert net == "mlp" or any(e.slice is not None for s in problem.spaces for e in graph.edges_at(s))
    tr = _random_monomials(problem, 1)
    views = ScaleViews.build(problem, problem.spaces, tr)
    assert views is not None
    matcher, scales = Matcher(problem), {s: tr[s].scales()[0].numpy() for s in problem.spaces}
    for s in problem.spaces:
        mine, ref = views.terms(s, scales), _scale_terms(matcher.local(s, tr), diagonal=True, index=tr[s].index)
        for k, v in mine.items():
            np.testing.assert_allclose(v, np.broadcast_to(ref[k], v.shape), rtol=1e-12, atol=1e-12)
    lam = {s: float(np.exp(0.3 * (i - 1))) for i, s in enumerate(problem.spaces)}
    moved = {s: GatherElement.monomial(tr[s].index, tr[s].scales()[0] * lam[s]) for s in problem.spaces}
    exps = {}
    for e, f, k in views.blocks(scales):
        m = np.prod([lam[s] ** p for s, p in k.items()])
        exps.setdefault("before", 0.0)
        exps["before"] += -2 * e + f
        exps["after"] = exps.get("after", 0.0) - 2 * e * m + f * m * m
    change = problem.objective(TransformSet(moved)) - problem.objective(TransformSet(tr))
    assert change == pytest.approx(exps["after"] - exps["before"], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("net", ["mlp", "squeeze"])
def test_polish_skips_solves_whose_inputs_did_not_change(net, monkeypatch):
    """The polish skips a space whose own and neighbours' scales are those its last solve read (and the
    multipliers when no scale moved since they last found nothing): the same scales, to the bit, as the plain
    loop that solves everything every pass — with fewer solves."""
    graph, problem = _scaling_problem(net, [7, 9, 8, 3])
    calls = []
    terms = ScaleViews.terms
    monkeypatch.setattr(ScaleViews, "terms", lambda self, *a, **k: calls.append(1) or terms(self, *a, **k))
    out = {}
    for skip in (False, True):
        monkeypatch.setattr(scale_descent, "_SKIP_UNCHANGED", skip)
        calls.clear()
        tr = _random_monomials(problem, 3)
        scale_descent.polish_scales(problem, Matcher(problem), problem.spaces, tr, 1e-12)
        out[skip] = ({s: tr[s].scales()[0].numpy() for s in problem.spaces}, len(calls))
    for s in problem.spaces:
        np.testing.assert_array_equal(out[True][0][s], out[False][0][s])
    assert out[True][1] < out[False][1]


def test_multipliers_lower_j_by_the_reported_gain():
    arch = architectures.mlp([10, 12, 12, 12, 4])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    problem = solvers.make_problem(arch.graph, a, b, classes="permutation_scaling")
    tr = _random_monomials(problem, 2)
    views = ScaleViews.build(problem, problem.spaces, tr)
    scales = {s: tr[s].scales()[0].numpy().copy() for s in problem.spaces}
    gain = multipliers(views, scales, problem.spaces, 0.0)
    new = {s: GatherElement.monomial(tr[s].index, torch.from_numpy(scales[s])) for s in problem.spaces}
    before, after = problem.objective(TransformSet(tr)), problem.objective(TransformSet(new))
    assert gain > 0 and before - after == pytest.approx(gain, rel=1e-9)
    assert multipliers(views, scales, problem.spaces, 0.0) < 1e-9 * gain  # at the optimum: no second gain


@pytest.mark.parametrize("net", ["mlp", "squeeze"])
def test_balanced_scales_are_least_norm(net):
    """After balancing, every unit's producing and consuming norms are equal (c = (δ/β)^¼ = 1 again) and
    ‖D B‖² is below that of random nearby scales (the problem is convex)."""
    if net == "mlp":
        arch = architectures.mlp([7, 9, 8, 8, 3])
        graph, b = arch.graph, {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    else:
        graph, b = _squeeze_pair()
    problem = solvers.make_problem(graph, b, b, classes="permutation_scaling")
    ident = {s: GatherElement.identity(problem.sizes[s][1]) for s in problem.spaces}
    scales = balanced_scales(problem, problem.spaces, ident)
    views = ScaleViews.build(problem, problem.spaces, ident)
    for s in problem.spaces:
        t = views.terms(s, {k: v.numpy() for k, v in scales.items()}, cross=False)
        np.testing.assert_allclose(t["beta"] * scales[s].numpy() ** 2, t["delta"] / scales[s].numpy() ** 2,
                                   rtol=1e-4)

    def norm(sc):
        tb = TransformSet({s: GatherElement.monomial(torch.arange(len(c)), c) for s, c in sc.items()})
        return sum(float((v ** 2).sum()) for v in apply(graph, b, tb).values())
    g = np.random.default_rng(0)
    base = norm(scales)
    for _ in range(5):
        other = {s: c * torch.from_numpy(np.exp(0.05 * g.normal(size=len(c)))) for s, c in scales.items()}
        assert norm(other) >= base


def test_permutation_scaling_planted_with_noise():
    """B = a random D P of A plus noise 1e-6 · scale: the permutations are recovered exactly, the scales to
    the noise level, J at the noise floor."""
    arch = architectures.mlp([10, 16, 16, 4])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    t = random_transforms(arch.graph, 5, classes=PermutationScaling())
    b = apply(arch.graph, a, t)
    gen = torch.Generator().manual_seed(0)
    b = {k: v + 1e-6 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in b.items()}
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes="permutation_scaling")
    truth = t.inverse()
    assert sol.status == "converged" and sol.objective_after < 1e-9 * sol.objective_before
    for s in truth:
        assert torch.equal(sol.transforms[s].index, truth[s].index)
        torch.testing.assert_close(sol.transforms[s].as_matrix(), truth[s].as_matrix(), rtol=1e-4, atol=1e-6)


def test_concatenation_net_planted_and_staged():
    """A net with fire modules (concatenated expands: axes split between spaces). Planted: recovered
    exactly; two independent inits: converged, J monotone, at or below the permutation optimum."""
    graph, a = _squeeze_pair()
    t = random_transforms(graph, 3, classes=PermutationScaling())
    b = apply(graph, a, t)
    sol = solvers.solve("weight_matching", graph, a, b, classes="permutation_scaling")
    assert sol.status == "converged" and sol.objective_after < 1e-10 * sol.objective_before
    torch.manual_seed(1)
    b = {k: v.detach().clone() for k, v in TinySqueeze().double().state_dict().items()}
    new = solvers.solve("weight_matching", graph, a, b, classes="permutation_scaling", seed=0)
    perm = solvers.solve("weight_matching", graph, a, b, classes="permutation", seed=0)
    assert new.status == "converged" and new.objective_after <= perm.objective_after
    assert all(y <= x * (1 + 1e-12) for x, y in zip(new.history, new.history[1:]))


def test_staged_start_with_init_keeps_b_as_is():
    """An ``init`` (here the identity) turns the balancing off — the start is the permutation solve on B
    itself; the solve still converges to a fixed point no worse than ``init``."""
    arch = architectures.mlp([12, 24, 24, 6])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    init = {s: GatherElement.identity(24) for s in ("hidden.0", "hidden.1")}
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes="permutation_scaling", init=init)
    assert sol.status == "converged" and sol.objective_after <= sol.objective_before


@pytest.mark.parametrize("net", ["mlp", "squeeze"])
def test_streamed_permutation_scaling_visit_equals_the_in_memory_one(net):
    """A ``D P`` visit reads only the role crosses and B's row norms: streamed (products summed, fixed edges'
    sums kept between visits) it gives the element, the scale terms and the loss change of the visit
    that holds the tensors."""
    from solvers.subproblems import gain, solve_local
    _, problem = _scaling_problem(net, [30, 9, 8, 20])  # the classifier's 20 outputs: a fixed edge of the last space
    matcher, tr = Matcher(problem), _random_monomials(problem, 3)
    assert any(matcher.fixed[s] for s in problem.spaces)
    for s in problem.spaces:
        cls, rows = problem.classes[s], matcher.local(s, tr)
        for _ in range(2):  # the second visit starts from the kept sums of the fixed edges
            streamed = matcher.local(s, tr, stream=True, norms=True)
            assert streamed.streamed and streamed.keeps_norms
            want, got = solve_local(cls, rows), solve_local(cls, streamed)
            assert torch.equal(want.index, got.index), s
            torch.testing.assert_close(got.scales()[0], want.scales()[0], rtol=1e-10, atol=0)
            assert gain(cls, streamed, tr[s], got) == pytest.approx(gain(cls, rows, tr[s], want), rel=1e-9, abs=1e-9)


def test_colour_classes_share_no_tensor():
    """Spaces solved together in the scale polish meet no common tensor (their problems are independent),
    and every space is in exactly one class."""
    graph, a = _squeeze_pair()
    b = {k: v + 0.3 * torch.randn_like(v) for k, v in a.items()}
    problem = solvers.make_problem(graph, a, b, classes="permutation_scaling")
    views = ScaleViews.build(problem, problem.spaces, _random_monomials(problem, 0))
    colours = views.colours(problem.spaces)
    assert sorted(s for c in colours for s in c) == sorted(problem.spaces) and len(colours) > 1
    for group in colours:
        for name in problem.params_a:
            met = {e.space for e in graph.edges_of(name)} & set(group)
            assert len(met) <= 1, (name, met)


def test_views_reused_from_a_previous_build_equal_fresh_ones_and_give_each_tensors_j():
    """A rebuild after one space's permutation moved keeps the sums of tensors that space does not touch and
    recomputes the others: the same E, F as a fresh build; each tensor's J_p from the views equals the
    problem's objective over that tensor."""
    graph, a = _squeeze_pair()
    b = {k: v + 0.3 * torch.randn_like(v) for k, v in a.items()}
    problem = solvers.make_problem(graph, a, b, classes="permutation_scaling")
    tr = _random_monomials(problem, 0)
    first = ScaleViews.build(problem, problem.spaces, tr)
    moved_space = problem.spaces[1]
    n = problem.sizes[moved_space][1]
    moved = dict(tr)
    moved[moved_space] = GatherElement.monomial(torch.roll(tr[moved_space].index, 1), tr[moved_space].scales()[0])
    reused = ScaleViews.build(problem, problem.spaces, moved, first)
    fresh = ScaleViews.build(problem, problem.spaces, moved)
    touched = {e.parameter for e in graph.edges_at(moved_space)}
    assert n > 1 and touched and set(reused.names) > touched
    for name, (e1, f1, _), (e0, f0, _), (e2, f2, _) in zip(reused.names, reused.tensors, first.tensors, fresh.tensors):
        np.testing.assert_array_equal(e1, e2)
        np.testing.assert_array_equal(f1, f2)
        assert (e1 is e0) == (name not in touched), name  # kept exactly where nothing moved
    scales = {s: moved[s].scales()[0].numpy() for s in problem.spaces}
    for name, value in reused.tensor_objectives(scales).items():
        assert value == pytest.approx(problem.objective(TransformSet(moved), (name,)), rel=1e-10, abs=1e-10), name


def test_views_after_a_few_moved_positions_recompute_only_those_slabs(monkeypatch):
    """Two units swapped in three spaces (at most a third of any axis): each touched tensor's E is recomputed
    at the moved positions only (slabs, not the whole tensor) and equals a fresh build's exactly; F is
    re-indexed from the kept B∘B sums."""
    import solvers.scale_views as sv
    graph, a = _squeeze_pair()
    b = {k: v + 0.3 * torch.randn_like(v) for k, v in a.items()}
    problem = solvers.make_problem(graph, a, b, classes="permutation_scaling")
    tr = _random_monomials(problem, 0)
    first = ScaleViews.build(problem, problem.spaces, tr)
    moved = dict(tr)
    for s in ("stem", "fire1.e1", "fire2.e3"):
        idx = tr[s].index.clone()
        idx[[0, 1]] = idx[[1, 0]]
        moved[s] = GatherElement.monomial(idx, tr[s].scales()[0])
    calls = []
    real = sv._cross_slab
    monkeypatch.setattr(sv, "_cross_slab", lambda *args: calls.append(args[-1]) or real(*args))
    reused = ScaleViews.build(problem, problem.spaces, moved, first)
    monkeypatch.undo()
    fresh = ScaleViews.build(problem, problem.spaces, moved)
    assert calls and all(rows is not None and rows.numel() == 2 for rows in calls)  # slabs of two positions
    for name, (e1, f1, _), (e2, f2, _) in zip(reused.names, reused.tensors, fresh.tensors):
        np.testing.assert_array_equal(e1, e2, err_msg=name)
        np.testing.assert_array_equal(f1, f2, err_msg=name)


def test_norm_only_views_serve_a_full_build():
    """Views built without cross terms hold F (E zero); a full build from them computes every E (none is taken
    from the norm-only views) and equals a fresh build."""
    graph, a = _squeeze_pair()
    b = {k: v + 0.3 * torch.randn_like(v) for k, v in a.items()}
    problem = solvers.make_problem(graph, a, b, classes="permutation_scaling")
    tr = _random_monomials(problem, 0)
    norms = ScaleViews.build(problem, problem.spaces, tr, cross=False)
    full = ScaleViews.build(problem, problem.spaces, tr, norms)
    fresh = ScaleViews.build(problem, problem.spaces, tr)
    for (e0, f0, _), (e1, f1, _), (e2, f2, _) in zip(norms.tensors, full.tensors, fresh.tensors):
        assert not e0.any() and e2.any()
        np.testing.assert_array_equal(f0, f2)
        np.testing.assert_array_equal(e1, e2)
        np.testing.assert_array_equal(f1, f2)


def test_permutation_scaling_visit_reads_kept_products_beside_permutation_spaces():
    """A ``D P`` space whose tensors' other axes carry permutations (a mixed problem: ``Permutation`` at the
    neighbours) reads the kept cross products and B's stored row norms (a gather keeps each row's entries):
    the visit equals the in-memory one, the second visit reuses the product, and when the neighbour's
    permutation moves the product is updated, not recomputed."""
    from solvers.subproblems import gain, solve_local
    arch = architectures.mlp([12, 16, 16, 16, 5])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    classes = {"hidden.0": "permutation", "hidden.1": "permutation_scaling", "hidden.2": "permutation"}
    problem = solvers.make_problem(arch.graph, a, b, classes=classes)
    matcher = Matcher(problem)
    g = np.random.default_rng(3)
    tr = {s: GatherElement(torch.from_numpy(g.permutation(16))) for s in ("hidden.0", "hidden.2")}
    tr["hidden.1"] = _random_monomials(problem, 4)["hidden.1"]
    cls = problem.classes["hidden.1"]
    for step in range(3):
        if step == 2:  # hidden.0 moves at two units: the kept products take the difference
            idx = tr["hidden.0"].index.clone()
            idx[[0, 1]] = idx[[1, 0]]
            tr["hidden.0"] = GatherElement(idx)
        before = dict(matcher.cache.stats)
        streamed = matcher.local("hidden.1", tr, stream=True, norms=True)
        used = {k: matcher.cache.stats[k] - before[k] for k in before}
        want_used = [dict(whole=2, reused=0, updated=0), dict(whole=0, reused=2, updated=0),
                     dict(whole=0, reused=1, updated=1)][step]  # step 2: the edge reading hidden.0 is updated
        assert {k: used[k] for k in want_used} == want_used, (step, used)
        rows = matcher.local("hidden.1", tr)
        for role in (Role.OUT, Role.IN):
            torch.testing.assert_close(streamed.row_norms(role, "b"), rows.row_norms(role, "b"), rtol=1e-14, atol=0)
        want, got = solve_local(cls, rows), solve_local(cls, streamed)
        assert torch.equal(want.index, got.index)
        torch.testing.assert_close(got.scales()[0], want.scales()[0], rtol=1e-10, atol=0)
        assert gain(cls, streamed, tr["hidden.1"], got) == pytest.approx(gain(cls, rows, tr["hidden.1"], want),
                                                                         rel=1e-9, abs=1e-9)
