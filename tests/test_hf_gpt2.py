"""Hugging Face ``GPT2LMHeadModel``: the graph matches its state dict (Conv1D (in, out) layouts,
packed ``c_attn``, tied ``lm_head``), and the function is unchanged by every admitted class.
Tiny random models built from a ``GPT2Config`` — nothing is downloaded."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

import architectures  # noqa: E402
import symmetries as sy  # noqa: E402
from symmetries.errors import TieError  # noqa: E402
from symmetries.testing.strategies import seeds  # noqa: E402
from test_arch_transformer import admitted_choices, assert_changed, assert_same, max_cond  # noqa: E402

transformers.logging.set_verbosity_error()
VOCAB, POSITIONS = 17, 7


def tiny(n_layer=2, n_embd=8, n_head=2, **kw):
    return architectures.hf_gpt2(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=n_embd, n_layer=n_layer,
                                 n_head=n_head, bos_token_id=0, eos_token_id=0, **kw)


_ARCHS: dict = {}


def cached(n_layer, n_embd, n_inner=None):
    key = (n_layer, n_embd, n_inner)
    if key not in _ARCHS:
        _ARCHS[key] = tiny(n_layer, n_embd, n_inner=n_inner)
    return _ARCHS[key]


def random_params(arch, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in arch.module(seed=seed, dtype=torch.float64).state_dict().items():
        if not v.is_floating_point():
            out[k] = v
            continue
        scale = 0.5 if v.dim() == 1 or ".w" in k else 0.2
        out[k] = (v + scale * torch.randn(v.shape, generator=gen, dtype=torch.float64)).to(dtype)
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied in the module
    return out


def logits(arch, params, ids, dtype=torch.float64):
    m = arch.module(dtype=dtype)
    m.load_state_dict(params)
    with torch.no_grad():
        return m(ids).logits


def ids(seed=0, batch=2):
    return torch.randint(0, VOCAB, (batch, POSITIONS), generator=torch.Generator().manual_seed(seed))


def test_graph_matches_the_state_dict_and_layouts():
    arch = tiny(n_layer=2, n_embd=8)
    g, sd = arch.graph, arch.module(seed=0).state_dict()
    assert {p.name for p in g.parameters()} == set(sd)
    g.validate(sd)
    assert g.space("residual").classes == (sy.Permutation(),)
    assert g.space("transformer.h.0.mlp").classes == (sy.Permutation(),)  # gelu_new: elementwise only
    assert g.head_groups()["transformer.h.1.attn"] == ["transformer.h.1.attn.qk", "transformer.h.1.attn.vo"]
    c_attn = sorted((e.axis, e.slice, e.space, str(e.role)) for e in g.edges_of("transformer.h.0.attn.c_attn.weight"))
    assert c_attn == [(0, None, "residual", "in"), (1, (0, 8), "transformer.h.0.attn.qk", "out"),
                      (1, (8, 16), "transformer.h.0.attn.qk", "in"), (1, (16, 24), "transformer.h.0.attn.vo", "out")]
    proj = sorted((e.axis, e.space, str(e.role)) for e in g.edges_of("transformer.h.0.attn.c_proj.weight"))
    assert proj == [(0, "transformer.h.0.attn.vo", "in"), (1, "residual", "out")]
    assert arch.module().config._attn_implementation == "eager" and not arch.module().training
    relu = tiny(n_layer=1, activation_function="relu")
    assert relu.graph.space("transformer.h.0.mlp").classes == (sy.PermutationScaling(), sy.SemiPermutation())


@settings(max_examples=100)
@given(st.integers(1, 2), st.sampled_from([8, 12]), st.data(), st.sampled_from([torch.float64, torch.float32]),
       seeds)
def test_admitted_classes_leave_hf_gpt2_unchanged(n_layer, n_embd, data, dtype, seed):
    arch = cached(n_layer, n_embd)
    g = arch.graph
    classes = {s.name: data.draw(st.sampled_from(admitted_choices(g, s.name)), label=s.name) for s in g.spaces()}
    T = sy.random_transforms(g, seed, classes=classes)
    params = random_params(arch, seed % 1000, dtype)
    new = sy.apply(g, params, T)
    assert torch.equal(new["lm_head.weight"], new["transformer.wte.weight"])
    x = ids(seed % 1000)
    assert_same(logits(arch, params, x, dtype), logits(arch, new, x, dtype), dtype, max_cond(T, g))


@settings(max_examples=30)
@given(seeds)
def test_per_head_invertible_maps_in_float64(seed):
    arch = cached(2, 8)
    h = sy.HeadStructured(2, sy.Invertible())
    T = sy.random_transforms(arch.graph, seed, classes={s.name: h for s in arch.graph.spaces() if s.head_group})
    params = random_params(arch, seed % 1000, torch.float64)
    y, y2 = logits(arch, params, ids(1)), logits(arch, sy.apply(arch.graph, params, T), ids(1))
    assert float((y - y2).abs().max()) <= 1e-10 * max(1.0, float(y.abs().max()))


def test_what_is_not_admitted_changes_hf_gpt2():
    arch = cached(1, 8)
    g = arch.graph
    params = random_params(arch, 3, torch.float64)
    x = ids(2, batch=3)
    y = logits(arch, params, x)
    # untied head permutations between QK and VO
    h = sy.HeadStructured(2, sy.Trivial())
    T = dict(sy.random_transforms(g, 0, classes={"transformer.h.0.attn.qk": h, "transformer.h.0.attn.vo": h}))
    T["transformer.h.0.attn.qk"] = T["transformer.h.0.attn.qk"].with_head_perm(torch.tensor([0, 1]))
    T["transformer.h.0.attn.vo"] = T["transformer.h.0.attn.vo"].with_head_perm(torch.tensor([1, 0]))
    with pytest.raises(TieError):
        sy.apply(g, params, T)
    assert_changed(y, logits(arch, sy.apply(g, params, T, check=False), x))
    # orthogonal residual across LayerNorm; scaling across GELU
    for space, cls in [("residual", sy.Orthogonal()), ("transformer.h.0.mlp", sy.PositiveScaling())]:
        assert not g.admits(space, cls)
        el = sy.random_transforms(g, 4, classes={space: cls}, strict=False)[space]
        new = sy.apply(g, params, {space: el}, check=False)
        assert_changed(y, logits(arch, new, x))


@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
def test_hf_model_moves_into_the_own_gpt2_builder(act):
    """HF GPT-2 and ``architectures.gpt2(packed_qkv=True, tie_embeddings=True)`` are the same
    network up to layout (Conv1D (in, out) = Linear (out, in) transposed)."""
    arch = tiny(n_layer=2, n_embd=8, activation_function=act)
    params = random_params(arch, 5, torch.float64)
    own, mine = architectures.hf_to_gpt2(arch, params)
    assert own.config["packed_qkv"] and own.config["tie_embeddings"]
    assert own.config["activation"] == ("gelu_tanh" if act == "gelu_new" else "gelu")
    m = own.module(dtype=torch.float64)
    m.load_state_dict(mine)
    x = ids(3)
    with torch.no_grad():
        y = logits(arch, params, x)
        assert float((y - m(x)).abs().max()) <= 1e-12 * max(1.0, float(y.abs().max()))
    with pytest.raises(ValueError, match="activation_function"):
        architectures.hf_to_gpt2(tiny(n_layer=1, activation_function="relu"), {})
    with pytest.raises(TypeError, match="not built by"):
        architectures.hf_to_gpt2(own, mine)


def test_rewritten_hf_gpt2_admits_orthogonal_residual_maps():
    """HF GPT-2 → LayerNorm rewrite: same logits, and square or widening orthogonal maps of the
    stream keep them, which they do not for the HF model itself."""
    arch = cached(2, 8)
    params = random_params(arch, 6, torch.float64)
    rms, new = architectures.rewrite_layernorm(arch, params)
    assert rms.config["norm"] == "rms" and rms.graph.admits("residual", sy.Orthogonal())
    x = ids(4)
    y = logits(arch, params, x)

    def run(a, p):
        m = a.module(dtype=torch.float64)
        m.load_state_dict(p)
        with torch.no_grad():
            return m(x)
    assert float((y - run(rms, new)).abs().max()) <= 1e-10 * max(1.0, float(y.abs().max()))
    for width in (8, 13):
        O = sy.Orthogonal().random(8, m=width, seed=width)
        wide = architectures.rebuild(rms, d_model=width)
        y2 = run(wide, sy.apply(rms.graph, new, {"residual": O}))
        assert float((y - y2).abs().max()) <= 1e-10 * max(1.0, float(y.abs().max()))
    O = sy.Orthogonal().random(8, seed=1)
    assert_changed(y, logits(arch, sy.apply(arch.graph, params, {"residual": O}, check=False), x))


def test_config_forms_and_the_user_config_is_not_modified():
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=8, n_layer=1, n_head=2,
                                  resid_pdrop=0.3, bos_token_id=0, eos_token_id=0)
    a = architectures.hf_gpt2(cfg)
    b = architectures.hf_gpt2(cfg.to_dict())
    assert cfg.resid_pdrop == 0.3 and a.module().config.resid_pdrop == 0.0
    assert [p.name for p in a.graph.parameters()] == [p.name for p in b.graph.parameters()]
    with pytest.raises(ValueError, match="multiple of n_head"):
        architectures.hf_gpt2(cfg, n_head=3)
    for field, value in (("n_head", 0), ("n_embd", -8), ("vocab_size", 0), ("n_positions", 0), ("n_layer", -1),
                         ("n_inner", 0), ("layer_norm_epsilon", -1e-5)):  # n_head=0 was a ZeroDivisionError
        with pytest.raises(ValueError, match=f"^{field} must be .*got {value}"):
            architectures.hf_gpt2(cfg, **{field: value})


def test_from_module_on_hf_gpt2_is_a_typed_error_pointing_to_the_builder():
    """fx cannot trace GPT2LMHeadModel's decorated ``forward(*args, **kwargs)`` (a raw ValueError
    from inside torch.fx before): an ExtractionError that says so and names hf_gpt2."""
    arch = cached(1, 8)
    for unknown in ("error", "fixed"):
        with pytest.raises(architectures.ExtractionError, match="torch.fx could not trace GPT2LMHeadModel") as info:
            architectures.from_module(arch.module(seed=0), ids(), unknown=unknown)
        assert "architectures.hf_gpt2" in str(info.value) and info.value.__cause__ is not None
