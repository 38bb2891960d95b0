"""Weight matching on planted problems for every class, monotone sweeps, Git Re-Basin mode
against a transcription of the published loop, backends, semi-permutations and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.optimize import linear_sum_assignment

import architectures
import solvers
from architectures import WeightGraph
from symmetries import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling, PositiveScaling,
                        SemiPermutation, SignedPermutation, SignFlip, apply, random_transforms)

EXACT = (Permutation(), SignFlip(), SignedPermutation())


def _double(params):
    return {k: v.detach().double() for k, v in params.items()}


def _noisy(params, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    noise = {k: sigma * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
    return {k: v + noise[k] for k, v in params.items()}, sum(float((n ** 2).sum()) for n in noise.values())


def _net(cls):
    """A small MLP (input wider than the hidden layers, so each planted transform is identifiable)
    whose activation admits ``cls``."""
    act = {Permutation: "relu", SignFlip: "tanh", SignedPermutation: "tanh", PositiveScaling: "relu",
           PermutationScaling: "relu", Orthogonal: "identity", Invertible: "identity"}[type(cls)]
    return architectures.mlp([12, 9, 7, 4], activation=act)


def _planted(arch, cls, seed, sigma):
    a = _double(arch.module(seed=seed).state_dict())
    t = random_transforms(arch.graph, seed, classes=cls)
    b, noise = _noisy(apply(arch.graph, a, t), sigma, seed + 1)
    return a, b, t, noise


@pytest.mark.parametrize("cls", EXACT + (PositiveScaling(), PermutationScaling(), Orthogonal(), Invertible()),
                         ids=lambda c: type(c).__name__)
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16))
def test_planted_recovery_every_class(cls, seed):
    arch = _net(cls)
    sigma = 1e-4 if cls in EXACT else 1e-6
    a, b, t, noise = _planted(arch, cls, seed, sigma)
    # this noise floor is ~1e-10 of J at the start, the default stopping rule's 1e-12 of it is ~1% of
    # the floor: a tighter tol lets the bound below be relative to the floor alone
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes=cls, seed=seed, max_iter=300,
                        tol=None if cls in EXACT else 1e-16)
    truth = t.inverse()
    problem = solvers.make_problem(arch.graph, a, b, classes=cls)
    floor = problem.objective(truth)  # the distance the true alignment leaves: the noise level
    assert sol.objective_before > 100 * max(floor, 1e-8)
    assert sol.objective_after <= floor * (1 + 1e-3)  # relative to the floor: no absolute slack above it
    for space in t:
        got, want = sol.transforms[space].as_matrix(), truth[space].as_matrix()
        if cls in EXACT:
            assert torch.equal(got, want), space  # exactly the planted permutation / signs
        else:
            assert torch.allclose(got, want, atol=1e-3, rtol=1e-3), (space, (got - want).abs().max())


def _attention_graph(heads=2, d_head=3, d_model=8, vocab=20):
    """Hand-built attention block: residual stream (Orthogonal) written by the embedding and the
    output map, read by q, k, v; query/key and value/output spaces tied by one head group."""
    inner = heads * d_head
    g = WeightGraph("attention")
    g.add_space("res", d_model, Orthogonal())
    g.add_space("qk", inner, HeadStructured(heads, Invertible()), head_group="attn")
    g.add_space("vo", inner, HeadStructured(heads, Invertible()), head_group="attn")
    g.add_parameter("embed.weight", (vocab, d_model)).connect("embed.weight", "res", axis=1, role="out")
    for name, space, role in (("q", "qk", "out"), ("k", "qk", "in"), ("v", "vo", "out")):
        g.add_parameter(f"{name}.weight", (inner, d_model))
        g.connect(f"{name}.weight", space, axis=0, role=role).connect(f"{name}.weight", "res", axis=1, role="in")
    g.add_parameter("o.weight", (d_model, inner))
    g.connect("o.weight", "res", axis=0, role="out").connect("o.weight", "vo", axis=1, role="in")
    return g.validate()


@pytest.mark.parametrize("inner", [Permutation(), Orthogonal(), Invertible()], ids=lambda c: type(c).__name__)
@settings(max_examples=3)
@given(seed=st.integers(0, 2**16))
def test_planted_heads_group_and_orthogonal_residual(inner, seed):
    g = _attention_graph()
    classes = {"res": Orthogonal(), "qk": HeadStructured(2, inner), "vo": HeadStructured(2, inner)}
    gen = torch.Generator().manual_seed(seed)
    a = {p.name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in g.parameters()}
    t = random_transforms(g, seed, classes=classes)
    b, _ = _noisy(apply(g, a, t), 1e-5, seed)
    sol = solvers.solve("weight_matching", g, a, b, classes=classes, seed=seed, max_iter=300)
    truth = t.inverse()
    floor = solvers.make_problem(g, a, b).objective(truth)
    assert sol.objective_after <= floor * (1 + 1e-3), (sol.objective_after, floor, sol.message)
    assert sol.transforms["qk"].head_perm.tolist() == sol.transforms["vo"].head_perm.tolist()
    assert sol.transforms["qk"].head_perm.tolist() == truth["qk"].head_perm.tolist()
    for space in classes:
        assert torch.allclose(sol.transforms[space].as_matrix(), truth[space].as_matrix(), atol=1e-3)


@pytest.mark.parametrize("classes", ["standard", "declared"])
@pytest.mark.parametrize("packed", [False, True])
def test_planted_gpt2_default_classes_recovered_and_function_kept(packed, classes):
    """The GPT-2 builder (RMS rewrite): Orthogonal residual, HeadStructured(H, Invertible) heads tied
    per attention, Permutation MLP units, tied embeddings, packed QKV slices. ``standard``: the
    classes solve searches by default (head permutations × per-head permutations, orthogonal
    residual, permuted MLP units); ``declared``: the spaces' declared groups, named explicitly."""
    from architectures import gpt2
    from symmetries import resolve_classes
    arch = gpt2(50, 16, 16, 4, 2, 32, packed_qkv=packed, norm="rms", tie_embeddings=True)
    a = _double(arch.module(seed=0).state_dict())
    standard = resolve_classes(arch.graph, solver=solvers.get("weight_matching"))
    assert standard["residual"] == Orthogonal() and standard["blocks.0.mlp"] == Permutation()
    assert standard["blocks.0.attn.qk"] == HeadStructured(4, Permutation())
    declared = {s.name: s.cls for s in arch.graph.spaces()}
    chosen = standard if classes == "standard" else declared
    t = random_transforms(arch.graph, 1, classes=chosen)
    b = apply(arch.graph, a, t)
    sol = solvers.solve("weight_matching", arch, a, b, seed=0, **({} if classes == "standard" else {"classes": declared}))
    assert sol.objective_after <= 1e-20 * sol.objective_before
    truth = t.inverse()
    for space in t:
        assert torch.allclose(sol.transforms[space].as_matrix(), truth[space].as_matrix(), atol=1e-9), space
    x = torch.randint(0, 50, (2, 7))
    ma, mb = arch.module(dtype=torch.float64), arch.module(dtype=torch.float64)
    ma.load_state_dict(a)
    mb.load_state_dict(sol.apply(b))
    assert torch.allclose(ma(x), mb(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [Permutation(), SignedPermutation(), PermutationScaling(), Orthogonal(),
                                 Invertible()], ids=lambda c: type(c).__name__)
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16))
def test_objective_never_increases_across_sweeps(cls, seed):
    arch = _net(cls)
    a = _double(arch.module(seed=seed).state_dict())
    b = _double(arch.module(seed=seed + 1).state_dict())  # unrelated models: a real descent
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes=cls, seed=seed, max_iter=15)
    h = np.array(sol.history)
    assert sol.history[0] == pytest.approx(sol.objective_before)
    assert np.all(np.diff(h) <= 1e-12 * h[0]), h
    assert h[-1] < h[0]
    assert sol.objective_after == pytest.approx(solvers.make_problem(arch.graph, a, b).objective(sol.transforms))


def _rnn_graph(n=10, d=4, cls=Permutation(), activation="tanh"):
    """RNN-like: ``h ← σ(W_ih x + W_hh h)``; ``W_hh`` meets the hidden space on both axes (``T W Tᵀ``)."""
    g = WeightGraph("rnn")
    g.add_space("h", n, cls, activation=activation)
    g.add_parameter("w_ih", (n, d)).connect("w_ih", "h", axis=0, role="out")
    g.add_parameter("w_hh", (n, n)).connect("w_hh", "h", axis=0, role="out").connect("w_hh", "h", axis=1, role="in")
    g.add_parameter("b_h", (n,)).connect("b_h", "h", axis=0, role="out")
    g.add_parameter("w_out", (3, n)).connect("w_out", "h", axis=1, role="in")
    return g.validate()


class _SharedLayer(torch.nn.Module):
    """One hidden layer applied twice: from_module gives ``mid.weight`` one space on both axes."""

    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = torch.nn.Linear(6, 12), torch.nn.Linear(12, 12), torch.nn.Linear(12, 3)

    def forward(self, x):
        h = torch.relu(self.mid(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.mid(h)))


def _assert_monotone_and_converged(sol, g, a, b, converged=True):
    h = np.array(sol.history)
    assert np.all(np.diff(h) <= 1e-12 * h[0]), h
    assert sol.status == "converged" or not converged, (sol.status, h)
    assert h[-1] < h[0]
    assert sol.objective_after == pytest.approx(solvers.make_problem(g, a, b).objective(sol.transforms))


@pytest.mark.parametrize("cls", [Permutation(), SignedPermutation(), Orthogonal(), Invertible()],
                         ids=lambda c: type(c).__name__)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_objective_never_increases_when_a_tensor_meets_one_space_on_two_axes(cls, seed):
    g = _rnn_graph(cls=cls, activation="tanh" if isinstance(cls, (Permutation, SignedPermutation)) else "identity")
    gen = torch.Generator().manual_seed(seed)
    a = {p.name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in g.parameters()}
    b = {p.name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in g.parameters()}
    discrete = isinstance(cls, (Permutation, SignedPermutation))  # continuous ones may descend slowly
    sol = solvers.solve("weight_matching", g, a, b, classes=cls, seed=seed, max_iter=100 if discrete else 30)
    _assert_monotone_and_converged(sol, g, a, b, converged=discrete)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_objective_never_increases_for_a_layer_applied_twice(seed):
    torch.manual_seed(seed)
    g = architectures.from_module(_SharedLayer(), torch.randn(2, 6))
    assert {e.axis for e in g.edges_of("mid.weight")} == {0, 1}
    assert len({e.space for e in g.edges_of("mid.weight")}) == 1
    a = _double(_SharedLayer().state_dict())
    b = _double(_SharedLayer().state_dict())
    sol = solvers.solve("weight_matching", g, a, b, classes=Permutation(), seed=seed)
    _assert_monotone_and_converged(sol, g, a, b)


def test_planted_rnn_permutation_is_recovered():
    g = _rnn_graph()
    gen = torch.Generator().manual_seed(0)
    a = {p.name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in g.parameters()}
    t = random_transforms(g, 3, classes=Permutation())
    b = apply(g, a, t)
    sol = solvers.solve("weight_matching", g, a, b, classes=Permutation())
    assert torch.equal(sol.transforms["h"].as_matrix(), t.inverse()["h"].as_matrix())
    assert sol.objective_after <= 1e-20 * sol.objective_before and sol.status == "converged"


# -- Git Re-Basin: a direct transcription of the published weight_matching loop --------------------------
def _mlp_permutation_spec(num_hidden):
    """``axes_to_perm`` of Git Re-Basin's ``mlp_permutation_spec`` with this library's names."""
    axes = {}
    for i in range(num_hidden + 1):
        out = f"hidden.{i}" if i < num_hidden else None
        inp = f"hidden.{i - 1}" if i > 0 else None
        axes[f"layers.{i}.weight"] = (out, inp)
        axes[f"layers.{i}.bias"] = (out,)
    perm_to_axes = {}
    for wk, ps in axes.items():
        for axis, p in enumerate(ps):
            if p is not None:
                perm_to_axes.setdefault(p, []).append((wk, axis))
    return axes, perm_to_axes


def _get_permuted_param(axes_to_perm, perm, k, params, except_axis=None):
    w = params[k]
    for axis, p in enumerate(axes_to_perm[k]):
        if axis == except_axis:
            continue
        if p is not None:
            w = np.take(w, perm[p], axis=axis)
    return w


def _reference_weight_matching(seed, axes_to_perm, perm_to_axes, params_a, params_b, max_iter=100):
    perm_sizes = {p: params_a[axes[0][0]].shape[axes[0][1]] for p, axes in perm_to_axes.items()}
    perm = {p: np.arange(n) for p, n in perm_sizes.items()}
    perm_names = list(perm.keys())
    rng = np.random.default_rng(seed)
    iterations = 0
    for iteration in range(max_iter):
        iterations += 1
        progress = False
        for p_ix in rng.permutation(len(perm_names)):
            p = perm_names[p_ix]
            n = perm_sizes[p]
            A = np.zeros((n, n))
            for wk, axis in perm_to_axes[p]:
                w_a = params_a[wk]
                w_b = _get_permuted_param(axes_to_perm, perm, wk, params_b, except_axis=axis)
                w_a = np.moveaxis(w_a, axis, 0).reshape((n, -1))
                w_b = np.moveaxis(w_b, axis, 0).reshape((n, -1))
                A += w_a @ w_b.T
            ri, ci = linear_sum_assignment(A, maximize=True)
            assert (ri == np.arange(len(ri))).all()
            oldL = np.vdot(A, np.eye(n)[perm[p]])
            newL = np.vdot(A, np.eye(n)[ci, :])
            progress = progress or newL > oldL + 1e-12
            perm[p] = np.array(ci)
        if not progress:
            break
    return perm, iterations


@settings(max_examples=12)
@given(seed=st.integers(0, 2**16), widths=st.lists(st.integers(2, 12), min_size=3, max_size=5))
def test_rebasin_mode_equals_the_published_loop(seed, widths):
    arch = architectures.mlp(widths, activation="relu")
    a = _double(arch.module(seed=seed).state_dict())
    b = _double(arch.module(seed=seed + 7).state_dict())
    axes, perm_to_axes = _mlp_permutation_spec(len(widths) - 2)
    na, nb = ({k: v.numpy() for k, v in p.items()} for p in (a, b))
    ref, ref_iters = _reference_weight_matching(seed, axes, perm_to_axes, na, nb)
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), seed=seed, mode="rebasin",
                        backend="scipy")
    for p, ci in ref.items():
        assert sol.transforms[p].index.tolist() == ci.tolist(), p
    assert sol.iterations == ref_iters
    aligned = {k: _get_permuted_param(axes, ref, k, nb) for k in nb}
    ref_objective = sum(float(((na[k] - aligned[k]) ** 2).sum()) for k in na)
    assert sol.objective_after == pytest.approx(ref_objective, rel=1e-12, abs=1e-12)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_planted_rectangular_orthogonal_procrustes(seed):
    """graph_b narrower (6 → 9, 5 → 7 units, linear activations): B's spaces embed into A's by
    matrices with orthonormal columns; weight matching recovers them (rectangular Procrustes)."""
    wide = architectures.mlp([10, 9, 7, 3], activation="identity")
    narrow = architectures.mlp([10, 6, 5, 3], activation="identity")
    b = _double(narrow.module(seed=seed).state_dict())
    t = random_transforms(narrow.graph, seed, classes=Orthogonal(), sizes={"hidden.0": 9, "hidden.1": 7})
    a, _ = _noisy(apply(narrow.graph, b, t), 1e-6, seed)
    sol = solvers.solve("weight_matching", wide.graph, a, b, graph_b=narrow.graph, classes=Orthogonal(), seed=seed)
    floor = solvers.make_problem(wide.graph, a, b, graph_b=narrow.graph, classes=Orthogonal()).objective(t)
    assert sol.objective_before is None and sol.status == "converged"
    assert sol.objective_after <= floor * (1 + 1e-3), (sol.objective_after, floor)
    for space in t:
        got = sol.transforms[space].as_matrix()
        assert got.shape == t[space].shape and Orthogonal().contains(got)
        assert torch.allclose(got, t[space].as_matrix(), atol=1e-3), (space, (got - t[space].as_matrix()).abs().max())
    x = torch.randn(4, 10, dtype=torch.float64)
    net_b, net_w = narrow.module(dtype=torch.float64), wide.module(dtype=torch.float64)
    net_b.load_state_dict(b)
    net_w.load_state_dict(sol.apply(b))
    assert torch.allclose(net_w(x), net_b(x), rtol=1e-10, atol=1e-12)


def test_auto_backend_is_lapx_when_installed(monkeypatch):
    lap = pytest.importorskip("lap")  # installed by the lapx distribution
    from importlib.metadata import PackageNotFoundError, version

    from symmetries import assignment
    try:
        version("lapx")
    except PackageNotFoundError:
        pytest.skip("the importable 'lap' is not lapx's")
    assert assignment.default_backend() == "lapjvh"
    calls = []
    real = lap.lapjvh

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)
    monkeypatch.setattr(lap, "lapjvh", spy)
    arch = architectures.mlp([12, 9, 7, 4])
    a, b = (_double(arch.module(seed=s).state_dict()) for s in (0, 1))
    auto = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), backend="auto")
    assert calls and all(shape in ((9, 9), (7, 7)) for shape in calls)
    calls.clear()
    scipy = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), backend="scipy")
    assert not calls and scipy.objective_after == pytest.approx(auto.objective_after, rel=1e-12)


def test_backends_agree_and_are_selectable():
    arch = architectures.mlp([20, 32, 32, 5])
    a, b = (_double(arch.module(seed=s).state_dict()) for s in (0, 1))
    results = {backend: solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), backend=backend)
               for backend in ("scipy", "lapjvh", "lapjvx", "auto")}
    values = [r.objective_after for r in results.values()]
    assert max(values) - min(values) <= 1e-9 * values[0]
    with pytest.raises(ValueError, match="backend"):
        solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), backend="nope")


@settings(max_examples=4)
@given(seed=st.integers(0, 2**16))
def test_semi_permutation_aligns_a_narrow_model_into_a_wide_one(seed):
    wide, narrow = architectures.mlp([10, 9, 7, 3]), architectures.mlp([10, 6, 5, 3])
    b = _double(narrow.module(seed=seed).state_dict())
    t = random_transforms(narrow.graph, seed, classes=SemiPermutation(), sizes={"hidden.0": 9, "hidden.1": 7})
    a, noise = _noisy(apply(narrow.graph, b, t), 1e-4, seed)
    sol = solvers.solve("semi_permutation", wide.graph, a, b, graph_b=narrow.graph, seed=seed)
    floor = solvers.make_problem(wide.graph, a, b, graph_b=narrow.graph).objective(t)  # the noise level
    assert sol.objective_before is None and sol.status == "converged"
    assert sol.objective_after <= floor * (1 + 1e-3), (sol.objective_after, floor, noise)
    for space in t:
        got = sol.transforms[space]
        assert SemiPermutation().contains(got.as_matrix())
        assert torch.equal(got.index, t[space].index), space  # the assignment exactly
        assert torch.allclose(got.as_matrix(), t[space].as_matrix(), atol=1e-3), space  # fractions to the noise
    # the split network computes what the narrow one computes
    x = torch.randn(5, 10, dtype=torch.float64)
    net_b, net_w = narrow.module(dtype=torch.float64), wide.module(dtype=torch.float64)
    net_b.load_state_dict(b)
    net_w.load_state_dict(sol.apply(b))
    assert torch.allclose(net_w(x), net_b(x), rtol=1e-10, atol=1e-12)


def test_identity_start_of_a_width_changing_space_without_init_is_a_typed_error():
    wide, narrow = architectures.mlp([4, 8, 3]), architectures.mlp([4, 6, 3])
    a, b = wide.module(seed=0).state_dict(), narrow.module(seed=1).state_dict()
    with pytest.raises(solvers.SolverInputError, match="'hidden.0' changes width"):
        solvers.solve("semi_permutation", wide.graph, a, b, graph_b=narrow.graph, start="identity")


def test_input_errors_are_typed():
    arch = architectures.mlp([6, 5, 3])
    a, b = (_double(arch.module(seed=s).state_dict()) for s in (0, 1))
    with pytest.raises(solvers.SolverInputError, match="hidden.0"):
        solvers.solve("weight_matching", arch.graph, a, b, mode="rebasin", classes="permutation_scaling")
    with pytest.raises(ValueError, match="mode"):
        solvers.solve("weight_matching", arch.graph, a, b, mode="fast")
    with pytest.raises(solvers.SolverInputError, match=r"no option 'max_iters' \(did you mean 'max_iter'\?\).*max_iter"):
        solvers.solve("weight_matching", arch.graph, a, b, max_iters=3)  # refused at the door, not deep inside
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), max_iter=0, start="identity")
    assert sol.objective_after == sol.objective_before and sol.iterations == 0
    with pytest.raises(ValueError, match="start"):
        solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), start="random")


def test_a_singular_invertible_start_keeps_the_current_map():
    """Seed 611 of the two-axes test: the forward pass's Sylvester start for the RNN's hidden space is
    singular; it scored as infinite (no LinAlgError) and the descent goes on."""
    g = _rnn_graph(cls=Invertible(), activation="identity")
    gen = torch.Generator().manual_seed(611)
    a = {p.name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in g.parameters()}
    b = {p.name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in g.parameters()}
    sol = solvers.solve("weight_matching", g, a, b, classes=Invertible(), seed=611, max_iter=5)
    _assert_monotone_and_converged(sol, g, a, b, converged=False)
