"""GPT-2-style and ViT-style builders: the graph, and the function unchanged by every admitted
class (head permutation × per-head invertible QK/VO maps, MLP permutations, residual
permutations), changed by what is not admitted (untied heads, maps mixing heads, orthogonal
residual across LayerNorm, scaling across GELU, a wrong key role)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from architectures.transformer import example_inputs
from arch_checks import max_cond, param_conds
from conftest import RTOL
from symmetries.errors import NotAdmittedError, RoleClassError, TieError
from symmetries.roles import Role
from symmetries.testing.strategies import GROUPS, seeds


@st.composite
def transformers(draw, norm: str = "layernorm"):
    """A tiny GPT-2 or ViT: d_model 8–16, 2 heads, 1–2 layers, separate or packed QKV."""
    kind = draw(st.sampled_from(["gpt2", "vit"]))
    d = draw(st.sampled_from([8, 12, 16]))
    common = dict(n_heads=2, n_layers=draw(st.integers(1, 2)), d_mlp=draw(st.integers(4, 12)),
                  packed_qkv=draw(st.booleans()), norm=norm,
                  activation=draw(st.sampled_from(["gelu", "gelu_tanh"])))
    if kind == "gpt2":
        return architectures.gpt2(13, 6, d, tie_embeddings=draw(st.booleans()), **common)
    return architectures.vit(8, 4, 2, d, num_classes=5, **common)


def random_params(arch, seed: int, dtype) -> dict:
    """The module's initial weights with every gain, bias and embedding perturbed, so that no
    parameter sits at a special value (γ = 1, β = 0) that would hide a wrong rule."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in arch.module(seed=seed, dtype=torch.float64).state_dict().items():
        noise = torch.randn(v.shape, generator=gen, dtype=torch.float64)
        out[k] = (v + (0.5 if v.dim() == 1 or "embed" in k or k.startswith(("wte", "wpe", "cls")) else 0.1) * noise
                  ).to(dtype)
    return out


def outputs(arch, params, x, dtype=torch.float64):
    m = arch.module(dtype=dtype)
    m.load_state_dict(params)
    with torch.no_grad():
        return m(x if x.dtype == torch.long else x.to(dtype))


def assert_same(y, y2, dtype, cond=1.0):
    tol = RTOL[dtype] * cond * max(1.0, float(y.abs().max()))
    err = float((y - y2).abs().max())
    assert err <= tol, f"output changed by {err:.3e} (tolerance {tol:.3e})"


def assert_changed(y, y2):
    err = float((y - y2).abs().max())
    assert err > 1e-3 * float(y.abs().max()), f"output changed only by {err:.3e}"


def admitted_choices(graph, space):
    """Every group the space admits: per-head classes for head spaces, plain groups elsewhere."""
    s = graph.space(space)
    if s.head_group is not None:
        h = s.cls.num_heads
        return [sy.HeadStructured(h, c) for c in GROUPS if graph.admits(space, sy.HeadStructured(h, c))]
    return [c for c in GROUPS if graph.admits(space, c)]


def draw_transforms(data, graph, seed):
    classes = {s.name: data.draw(st.sampled_from(admitted_choices(graph, s.name)), label=s.name)
               for s in graph.spaces()}
    return sy.random_transforms(graph, seed, classes=classes)


# -- the graph ------------------------------------------------------------------------------------------
def test_gpt2_graph_spaces_roles_and_names():
    arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=2, d_mlp=10)
    g = arch.graph
    assert {p.name for p in g.parameters()} == set(arch.module().state_dict())
    assert g.space("residual").classes == (sy.Permutation(),)
    assert g.space("blocks.0.attn.qk").classes == (sy.HeadStructured(2, sy.Invertible()),)
    assert g.head_groups() == {f"blocks.{i}.attn": [f"blocks.{i}.attn.qk", f"blocks.{i}.attn.vo"] for i in (0, 1)}
    assert g.space("blocks.1.mlp").classes == (sy.Permutation(),) and g.space("blocks.1.mlp").size == 10
    roles = {(e.parameter, e.axis, str(e.role)) for e in g.edges_at("blocks.0.attn.qk")}
    assert roles == {("blocks.0.attn.q.weight", 0, "out"), ("blocks.0.attn.q.bias", 0, "out"),
                     ("blocks.0.attn.k.weight", 0, "in"), ("blocks.0.attn.k.bias", 0, "in")}
    roles = {(e.parameter, e.axis, str(e.role)) for e in g.edges_at("blocks.0.attn.vo")}
    assert roles == {("blocks.0.attn.v.weight", 0, "out"), ("blocks.0.attn.v.bias", 0, "out"),
                     ("blocks.0.attn.o.weight", 1, "in")}
    writers = {e.parameter for e in g.edges_at("residual") if str(e.role) == "out" and ".ln_" not in e.parameter
               and not e.parameter.startswith("ln_f")}
    assert writers == {"wte.weight", "wpe.weight"} | {f"blocks.{i}.{n}" for i in (0, 1) for n in
                                                      ("attn.o.weight", "attn.o.bias", "mlp.proj.weight",
                                                       "mlp.proj.bias")}
    readers = {e.parameter for e in g.edges_at("residual") if str(e.role) == "in"}
    assert readers == {"head.weight"} | {f"blocks.{i}.{n}.weight" for i in (0, 1)
                                         for n in ("attn.q", "attn.k", "attn.v", "mlp.fc")}
    assert g.parameter("head.weight").fixed is False and "head.bias" not in g


def test_packed_qkv_slices_and_tied_embeddings():
    arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=10, packed_qkv=True, tie_embeddings=True)
    g = arch.graph
    edges = sorted((e.slice, e.space, str(e.role)) for e in g.edges_of("blocks.0.attn.qkv.weight") if e.axis == 0)
    assert edges == [((0, 8), "blocks.0.attn.qk", "out"), ((8, 16), "blocks.0.attn.qk", "in"),
                     ((16, 24), "blocks.0.attn.vo", "out")]
    assert {str(e.role) for e in g.edges_of("wte.weight")} == {"out", "in"} and "head.weight" not in g
    with pytest.raises(RoleClassError, match="wte.weight"):
        g.with_classes({"residual": sy.Invertible()}).validate()
    with pytest.raises(ValueError, match="head_bias"):
        architectures.gpt2(13, 6, 8, 2, 1, 10, tie_embeddings=True, head_bias=True)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        architectures.gpt2(13, 6, 9, 2, 1, 10)
    with pytest.raises(ValueError, match="activation must be one of"):
        architectures.gpt2(13, 6, 8, 2, 1, 10, activation="relu")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        architectures.vit(9, 4, 3, 8, 2, 1)


def test_packed_and_separate_qkv_compute_the_same_function():
    sep = architectures.vit(8, 4, 2, 8, n_heads=2, n_layers=2, d_mlp=6)
    packed = architectures.vit(8, 4, 2, 8, n_heads=2, n_layers=2, d_mlp=6, packed_qkv=True)
    p = random_params(sep, 0, torch.float64)
    q = {k: v for k, v in p.items() if not any(f".attn.{n}." in k for n in "qkv")}
    for i in range(2):
        for t in ("weight", "bias"):
            q[f"blocks.{i}.attn.qkv.{t}"] = torch.cat([p[f"blocks.{i}.attn.{n}.{t}"] for n in "qkv"])
    x = example_inputs(sep, 3, dtype=torch.float64)
    assert_same(outputs(sep, p, x), outputs(packed, q, x), torch.float64)


def test_gpt2_is_causal():
    arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=2, d_mlp=10)
    p = random_params(arch, 1, torch.float64)
    x = example_inputs(arch, 2)
    x2 = x.clone()
    x2[:, -1] = (x[:, -1] + 1) % 13
    y, y2 = outputs(arch, p, x), outputs(arch, p, x2)
    assert torch.allclose(y[:, :-1], y2[:, :-1], rtol=0, atol=1e-12)
    assert_changed(y[:, -1], y2[:, -1])


# -- invariance under every admitted class ----------------------------------------------------------------
@settings(max_examples=300)
@given(transformers(), st.data(), st.sampled_from([torch.float64, torch.float32]), seeds)
def test_admitted_classes_leave_the_function_unchanged(arch, data, dtype, seed):
    g = arch.graph
    T = draw_transforms(data, g, seed)
    params = random_params(arch, seed % 1000, dtype)
    new = sy.apply(g, params, T)
    x = example_inputs(arch, 2, seed=seed % 1000, dtype=dtype)
    assert_same(outputs(arch, params, x, dtype), outputs(arch, new, x, dtype), dtype, max_cond(T, g))
    back, conds = sy.apply(g, new, T.inverse()), param_conds(g, T)
    for k in params:
        tol = RTOL[dtype] * conds[k] * 10
        torch.testing.assert_close(back[k], params[k], rtol=tol, atol=tol)


@settings(max_examples=100)
@given(transformers(), seeds)
def test_per_head_invertible_maps_alone_keep_the_function_in_float64(arch, seed):
    """The largest head class, nothing else moved: float64 to ~1e-10 relative."""
    h = sy.HeadStructured(2, sy.Invertible())
    heads = {s.name: h for s in arch.graph.spaces() if s.head_group is not None}
    T = sy.random_transforms(arch.graph, seed, classes=heads)
    params = random_params(arch, seed % 1000, torch.float64)
    x = example_inputs(arch, 2, seed=seed % 1000, dtype=torch.float64)
    y, y2 = outputs(arch, params, x), outputs(arch, sy.apply(arch.graph, params, T), x)
    assert float((y - y2).abs().max()) <= 1e-10 * max(1.0, float(y.abs().max()))


# -- what is not admitted changes the function ------------------------------------------------------------
def _setup(kind="gpt2", **kw):
    arch = (architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=10, **kw) if kind == "gpt2"
            else architectures.vit(8, 4, 2, 8, n_heads=2, n_layers=1, d_mlp=10, **kw))
    params = random_params(arch, 3, torch.float64)
    x = example_inputs(arch, 3, dtype=torch.float64)
    return arch, params, x, outputs(arch, params, x)


@pytest.mark.parametrize("kind", ["gpt2", "vit"])
@pytest.mark.parametrize("packed", [False, True])
def test_untied_head_permutations_break_attention(kind, packed):
    arch, params, x, y = _setup(kind, packed_qkv=packed)
    h = sy.HeadStructured(2, sy.Trivial())
    T = sy.random_transforms(arch.graph, 0, classes={"blocks.0.attn.qk": h, "blocks.0.attn.vo": h})
    untied = dict(T)
    untied["blocks.0.attn.vo"] = T["blocks.0.attn.vo"].with_head_perm(torch.tensor([1, 0]))
    untied["blocks.0.attn.qk"] = T["blocks.0.attn.qk"].with_head_perm(torch.tensor([0, 1]))
    with pytest.raises(TieError, match="blocks.0.attn"):
        sy.apply(arch.graph, params, untied)
    assert_changed(y, outputs(arch, sy.apply(arch.graph, params, untied, check=False), x))
    tied = dict(untied, **{"blocks.0.attn.qk": untied["blocks.0.attn.qk"].with_head_perm(torch.tensor([1, 0]))})
    assert_same(y, outputs(arch, sy.apply(arch.graph, params, tied), x), torch.float64)


@pytest.mark.parametrize("space", ["blocks.0.attn.qk", "blocks.0.attn.vo"])
def test_maps_mixing_heads_break_attention(space):
    arch, params, x, y = _setup("gpt2")
    with pytest.raises(NotAdmittedError, match=space):
        sy.random_transforms(arch.graph, 0, classes={space: sy.Orthogonal()})
    el = sy.Orthogonal().random(8, seed=1)
    assert_changed(y, outputs(arch, sy.apply(arch.graph, params, {space: el}, check=False), x))


@pytest.mark.parametrize("kind", ["gpt2", "vit"])
def test_orthogonal_residual_and_gelu_scaling_are_not_admitted(kind):
    arch, params, x, y = _setup(kind)
    for space, cls in [("residual", sy.Orthogonal()), ("residual", sy.SignFlip()),
                       ("blocks.0.mlp", sy.PositiveScaling()), ("blocks.0.mlp", sy.SignFlip())]:
        assert not arch.graph.admits(space, cls)
        T = sy.random_transforms(arch.graph, 5, classes={space: cls}, strict=False)
        assert_changed(y, outputs(arch, sy.apply(arch.graph, params, {space: T[space]}, check=False), x))


def test_a_wrong_key_role_is_caught_by_the_function():
    """Declaring W_K ← A W_K (role out) instead of A⁻ᵀ W_K changes the scores."""
    arch, params, x, y = _setup("gpt2")
    wrong = arch.graph.copy()
    for p in ("blocks.0.attn.k.weight", "blocks.0.attn.k.bias"):
        for data in wrong.nx.get_edge_data(p, "blocks.0.attn.qk").values():
            data["role"] = Role.OUT
    wrong._cache = None
    T = sy.random_transforms(wrong, 2, classes={"blocks.0.attn.qk": sy.HeadStructured(2, sy.Invertible()),
                                                "blocks.0.attn.vo": sy.HeadStructured(2, sy.Trivial())})
    assert_changed(y, outputs(arch, sy.apply(wrong, params, T), x))
    assert_same(y, outputs(arch, sy.apply(arch.graph, params, T), x), torch.float64, max_cond(T, arch.graph))


@pytest.mark.parametrize("packed", [False, True])
def test_pre_softmax_scores_are_invariant_including_the_key_bias(packed):
    """Softmax ignores ``q · b_K`` (constant over keys), so the model's output cannot see a wrong
    key-bias rule; the scores ``(W_Q z + b_Q)ᵀ (W_K z' + b_K)`` per head can, and are unchanged."""
    arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=10, packed_qkv=packed)
    params = random_params(arch, 4, torch.float64)
    qk = "blocks.0.attn.qk"
    T = sy.random_transforms(arch.graph, 6, classes={qk: sy.HeadStructured(2, sy.Invertible())})
    T = {qk: T[qk].with_head_perm(torch.arange(2)), "blocks.0.attn.vo": T["blocks.0.attn.vo"].with_head_perm(
        torch.arange(2))}
    z = torch.randn(5, 8, dtype=torch.float64)

    def scores(p):
        if packed:
            w, b = p["blocks.0.attn.qkv.weight"], p["blocks.0.attn.qkv.bias"]
            q, k = z @ w[:8].T + b[:8], z @ w[8:16].T + b[8:16]
        else:
            q = z @ p["blocks.0.attn.q.weight"].T + p["blocks.0.attn.q.bias"]
            k = z @ p["blocks.0.attn.k.weight"].T + p["blocks.0.attn.k.bias"]
        return torch.stack([q[:, h * 4:(h + 1) * 4] @ k[:, h * 4:(h + 1) * 4].T for h in range(2)])

    s, s2 = scores(params), scores(sy.apply(arch.graph, params, T))
    assert_same(s, s2, torch.float64, max_cond(T, arch.graph))
    T_bad = {qk: T[qk]}
    bias = "blocks.0.attn.qkv.bias" if packed else "blocks.0.attn.k.bias"
    moved = sy.apply(arch.graph, params, T_bad)
    wrong = dict(moved, **{bias: params[bias].clone()})
    if packed:
        wrong[bias][:8] = moved[bias][:8]
        wrong[bias][16:] = moved[bias][16:]
    else:
        wrong[bias] = T[qk].apply(params[bias], 0, "out")
    assert_changed(s, scores(wrong))


def test_docs_page_examples_run():
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "transformers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/transformers.md", "exec"), namespace)
