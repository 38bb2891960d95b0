"""Attention heads in the data-driven solvers, on planted problems (B = T·A, T a known head
permutation × per-head map, with an orthogonal residual and MLP permutations), and the precise
refusals where the maths has no algorithm (an invertible per-head map)."""
from __future__ import annotations

import pytest
import torch

import architectures
import solvers
import symmetries as sy
from symmetries import HeadStructured, Invertible, Orthogonal, Permutation


def _gpt(packed=False, norm="rms", heads=4):
    return architectures.gpt2(vocab_size=11, n_positions=8, d_model=16, n_heads=heads, n_layers=2, d_mlp=32,
                              norm=norm, packed_qkv=packed)


def _planted(arch, classes, seed=3, noise=0.0):
    a = arch.module(seed=0, dtype=torch.float64).state_dict()
    t = sy.random_transforms(arch.graph, seed, classes=classes)
    b = sy.apply(arch.graph, a, t)
    if noise:
        g = torch.Generator().manual_seed(seed)
        b = {k: v + noise * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in b.items()}
    return a, b, t.inverse()


def _tokens(n=64, seed=0):
    return torch.randint(0, 11, (n, 8), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("inner", [Permutation(), Orthogonal()], ids=["perm", "orth"])
def test_activation_matching_recovers_planted_heads(packed, inner):
    gpt = _gpt(packed)
    classes = {s.name: HeadStructured(4, inner) for s in gpt.graph.spaces() if "attn" in s.name}
    a, b, want = _planted(gpt, {**sy.resolve_classes(gpt.graph, solver=solvers.get("activation_matching")), **classes})
    sol = solvers.solve("activation_matching", gpt, a, b, classes=classes, data=_tokens())
    assert sol.objective_after <= 1e-9 * sol.objective_before
    for space in want:
        got, exp = sol.transforms[space], want[space]
        if "attn" in space:
            assert torch.equal(got.head_perm, exp.head_perm), space
        assert torch.allclose(got.as_matrix(), exp.as_matrix(), atol=1e-7), space
    assert sol.extra["weight_objective_after"] <= 1e-10 * sol.extra["weight_objective_before"]
    # the function is kept: aligned B computes what A computes
    m = gpt.module(dtype=torch.float64)
    m.load_state_dict(a)
    ya = m(_tokens(4, 1))
    m.load_state_dict(sol.apply(b))
    assert torch.allclose(ya, m(_tokens(4, 1)), atol=1e-9)


def test_activation_matching_default_sites_and_noise():
    """Default classes on the RMS GPT: heads × orthogonal residual × MLP permutations, with weight
    noise; the residual is read at every block, the heads at their queries/keys and values."""
    gpt = _gpt()
    default = sy.resolve_classes(gpt.graph, solver=solvers.get("activation_matching"))
    assert default["blocks.0.attn.qk"] == HeadStructured(4, Permutation()) and default["residual"] == Orthogonal()
    a, b, want = _planted(gpt, default, seed=5, noise=1e-4)
    sol = solvers.solve("activation_matching", gpt, a, b, data=_tokens(128))
    assert sol.extra["sites"]["residual"] == ("blocks.0", "blocks.1")
    assert sol.extra["sites"]["blocks.1.attn.qk"] == ("blocks.1.attn.q", "blocks.1.attn.k")
    assert sol.extra["sites"]["blocks.1.attn.vo"] == "blocks.1.attn.v"
    for space in want:
        if "attn" in space:
            assert torch.equal(sol.transforms[space].head_perm, want[space].head_perm), space
        assert torch.allclose(sol.transforms[space].as_matrix(), want[space].as_matrix(), atol=1e-2), space


def test_vit_heads_and_layernorm_residual_sites():
    vit = architectures.vit(image_size=8, patch_size=4, channels=3, d_model=16, n_heads=2, n_layers=2, d_mlp=32,
                            num_classes=10)
    default = sy.resolve_classes(vit.graph, solver=solvers.get("activation_matching"))
    a, b, want = _planted(vit, default, seed=1)
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = solvers.solve("activation_matching", vit, a, b, data=x)
    assert sol.extra["sites"]["residual"] == ("blocks.0", "blocks.1", "norm")
    for space in want:
        assert torch.equal(sol.transforms[space].as_matrix(), want[space].as_matrix()), space


@pytest.mark.parametrize("solver", ["activation_matching", "learned_matching"])
def test_invertible_heads_refused_precisely(solver):
    gpt = _gpt()
    a = gpt.module(seed=0).state_dict()
    b = gpt.module(seed=1).state_dict()
    with pytest.raises(solvers.UnsupportedClassError) as err:
        solvers.solve(solver, gpt, a, b, classes={"blocks.0.attn.qk": HeadStructured(4, Invertible()),
                                                  "blocks.0.attn.vo": HeadStructured(4, Invertible())},
                      data=(_tokens(8), _tokens(8, 1)))
    msg = str(err.value)
    assert solver in msg and "blocks.0.attn" in msg and "Invertible" in msg
    assert "HeadStructured(4, Permutation())" in msg and "HeadStructured(4, Orthogonal())" in msg
    assert err.value.solver == solver and isinstance(err.value.cls.inner, Invertible)


def test_learned_matching_keeps_planted_heads():
    """Learned matching from its default start (weight matching) on a planted GPT with noise keeps the
    planted head permutations and per-head maps (a few small steps: the targets are A's own arg-max,
    for which A is not a loss minimum, so long training may trade the exact alignment for a sharper
    midpoint; the residual rotation moves by O(lr))."""
    gpt = _gpt(heads=2)
    default = sy.resolve_classes(gpt.graph, solver=solvers.get("learned_matching"))
    a, b, want = _planted(gpt, default, seed=2, noise=1e-5)
    x = _tokens(32)
    m = gpt.module(dtype=torch.float64)
    m.load_state_dict(a)
    with torch.no_grad():
        y = m(x).argmax(-1)
    sol = solvers.solve("learned_matching", gpt, a, b, data=(x, y), steps=10, lr=1e-3)
    for space in want:
        got, exp = sol.transforms[space].as_matrix(), want[space].as_matrix()
        if space == "residual":
            assert torch.allclose(got, exp, atol=0.05)
        else:
            assert torch.equal(got, exp), space
    assert sol.status == "max_iter" and sol.iterations == 10


BUILTIN = ["weight_matching", "semi_permutation", "semi_permutation_qp", "activation_matching", "optimal_transport",
           "relaxation", "learned_matching", "posterior_matching"]
OPTIONS = {"learned_matching": dict(steps=3), "relaxation": dict(time_limit=5)}


def _builders():
    gln = _gpt(heads=2, norm="layernorm")
    a = gln.module(seed=0, dtype=torch.float64).state_dict()
    b = gln.module(seed=1, dtype=torch.float64).state_dict()
    gpt, a = architectures.rewrite_layernorm(gln, a)
    _, b = architectures.rewrite_layernorm(gln, b)
    x = _tokens(16)
    yield "gpt2-rms", gpt, a, b, (x, _tokens(16, 1)), x
    vit = architectures.vit(image_size=8, patch_size=4, channels=3, d_model=16, n_heads=2, n_layers=2, d_mlp=32,
                            num_classes=10)
    xi = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    yield ("vit", vit, vit.module(seed=0, dtype=torch.float64).state_dict(),
           vit.module(seed=1, dtype=torch.float64).state_dict(), (xi, torch.arange(16) % 10), xi)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_solver_runs_on_transformers_or_is_not_applicable(name):
    """With default classes each built-in solver either runs on the GPT-2 (RMS form) and ViT builders
    and keeps the function (aligned B computes what B computes), or is left out of
    ``solvers.applicable`` and says why when its classes are resolved."""
    solver = solvers.get(name)
    for label, arch, a, b, data, x in _builders():
        if name not in solvers.applicable(arch):
            with pytest.raises(sy.errors.NotAdmittedError, match=name):
                sy.resolve_classes(arch.graph, solver=solver)
            continue
        kw = dict(OPTIONS.get(name, {}))
        if solver.needs_data:
            kw["data"] = data
        sol = solvers.solve(name, arch, a, b, seed=0, **kw)
        assert sol.status in ("converged", "optimal", "max_iter", "time_limit"), (label, sol.status, sol.message)
        m = arch.module(dtype=torch.float64)
        m.load_state_dict(b)
        with torch.no_grad():
            yb = m(x[:4])
            m.load_state_dict(sol.apply(b))
            assert torch.allclose(m(x[:4]), yb, atol=1e-8), (label, name)


def test_applicable_on_transformers():
    for label, arch, *_ in _builders():
        ok = set(solvers.applicable(arch))
        assert {"weight_matching", "activation_matching", "relaxation", "learned_matching"} <= ok, label
        assert "optimal_transport" not in ok and "posterior_matching" not in ok, label
