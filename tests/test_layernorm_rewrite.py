"""The LayerNorm → gain-free RMSNorm rewrite: same function, and the residual stream of the
rewritten model admits (square and widening) orthogonal maps, which change the original."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import architectures
import symmetries as sy
from architectures.transformer import example_inputs
from conftest import RTOL
from symmetries.errors import MissingParameterError
from symmetries.testing.strategies import seeds
from test_arch_transformer import (admitted_choices, assert_changed, assert_same, max_cond, outputs, random_params,
                                   transformers)

ORTHOGONAL_TYPE = [sy.Permutation(), sy.SignFlip(), sy.SignedPermutation(), sy.Orthogonal()]


@settings(max_examples=100)
@given(transformers(), seeds)
def test_rewrite_computes_the_same_function(arch, seed):
    params = random_params(arch, seed % 1000, torch.float64)
    before = {k: v.clone() for k, v in params.items()}
    new_arch, new = architectures.rewrite_layernorm(arch, params)
    x = example_inputs(arch, 3, seed=seed % 1000, dtype=torch.float64)
    y, y2 = outputs(arch, params, x), outputs(new_arch, new, x)
    assert float((y - y2).abs().max()) <= 1e-10 * max(1.0, float(y.abs().max()))
    assert all(torch.equal(before[k], params[k]) for k in params)  # input untouched
    assert new_arch.config["norm"] == "rms" and not any(".ln_" in k or k.startswith(("ln_f", "norm.")) for k in new)
    assert new_arch.graph.space("residual").classes == (sy.Orthogonal(),)
    assert arch.graph.space("residual").classes == (sy.Permutation(),)


@settings(max_examples=30)
@given(transformers(), seeds)
def test_rewrite_in_float32_to_round_off(arch, seed):
    params = random_params(arch, seed % 1000, torch.float32)
    new_arch, new = architectures.rewrite_layernorm(arch, params)
    assert all(v.dtype == torch.float32 for v in new.values())
    x = example_inputs(arch, 3, seed=seed % 1000, dtype=torch.float32)
    assert_same(outputs(arch, params, x, torch.float32), outputs(new_arch, new, x, torch.float32), torch.float32)


@settings(max_examples=150)
@given(transformers(), st.data(), st.sampled_from([torch.float64, torch.float32]), seeds)
def test_orthogonal_residual_leaves_the_rewritten_model_unchanged(arch, data, dtype, seed):
    """Every class the rewritten graph admits, the residual drawn among orthogonal-type classes."""
    params = random_params(arch, seed % 1000, torch.float64)
    new_arch, new = architectures.rewrite_layernorm(arch, params)
    g = new_arch.graph
    classes = {s.name: data.draw(st.sampled_from(admitted_choices(g, s.name)), label=s.name) for s in g.spaces()}
    classes["residual"] = data.draw(st.sampled_from(ORTHOGONAL_TYPE), label="residual")
    T = sy.random_transforms(g, seed, classes=classes)
    new = {k: v.to(dtype) for k, v in new.items()}
    x = example_inputs(arch, 2, seed=seed % 1000, dtype=dtype)
    y = outputs(new_arch, new, x, dtype)
    assert_same(y, outputs(new_arch, sy.apply(g, new, T), x, dtype), dtype, max_cond(T, g))


@settings(max_examples=60)
@given(transformers(), st.integers(1, 8), seeds)
def test_rectangular_orthogonal_widens_the_rewritten_stream_exactly(arch, extra, seed):
    """``O`` with orthonormal columns maps the stream to ``D + extra`` units; the normaliser keeps
    the constant ``D``, so the wider model computes the same function, and ``Oᵀ`` brings it back."""
    params = random_params(arch, seed % 1000, torch.float64)
    new_arch, new = architectures.rewrite_layernorm(arch, params)
    d = arch.config["d_model"]
    T = sy.random_transforms(new_arch.graph, seed, classes={"residual": sy.Orthogonal()},
                             sizes={"residual": d + extra})
    wide_arch = architectures.rebuild(new_arch, d_model=d + extra)
    assert wide_arch.config["norm_dim"] == d
    wide = sy.apply(new_arch.graph, new, T)
    wide_arch.graph.validate(wide)
    x = example_inputs(arch, 2, seed=seed % 1000, dtype=torch.float64)
    y, y2 = outputs(arch, params, x), outputs(wide_arch, wide, x)
    assert float((y - y2).abs().max()) <= 1e-10 * max(1.0, float(y.abs().max()))
    back = sy.apply(wide_arch.graph, wide, T.inverse())
    for k in new:
        torch.testing.assert_close(back[k], new[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,tied", [("gpt2", False), ("gpt2", True), ("vit", False)])
def test_orthogonal_residual_changes_the_original_but_not_the_rewrite(kind, tied):
    arch = (architectures.gpt2(13, 6, 12, n_heads=2, n_layers=2, d_mlp=8, tie_embeddings=tied) if kind == "gpt2"
            else architectures.vit(8, 4, 2, 12, n_heads=2, n_layers=2, d_mlp=8))
    params = random_params(arch, 7, torch.float64)
    new_arch, new = architectures.rewrite_layernorm(arch, params)
    assert not arch.graph.admits("residual", sy.Orthogonal()) and new_arch.graph.admits("residual", sy.Orthogonal())
    x = example_inputs(arch, 3, dtype=torch.float64)
    y = outputs(arch, params, x)
    O = sy.Orthogonal().random(12, seed=11)
    assert_changed(y, outputs(arch, sy.apply(arch.graph, params, {"residual": O}, check=False), x))
    assert_same(y, outputs(new_arch, sy.apply(new_arch.graph, new, {"residual": O}), x), torch.float64)
    # an invertible (non-orthogonal) map of the stream is not admitted even after the rewrite
    A = sy.Invertible().random(12, seed=12)
    assert not new_arch.graph.admits("residual", sy.Invertible())
    assert_changed(y, outputs(new_arch, sy.apply(new_arch.graph, new, {"residual": A}, check=False), x))


def test_rewrite_centres_writers_and_folds_gains_into_readers():
    arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=8, tie_embeddings=True)
    params = random_params(arch, 2, torch.float64)
    new_arch, new = architectures.rewrite_layernorm(arch, params)
    for k in ("wte.weight", "wpe.weight"):
        assert torch.allclose(new[k].mean(1), torch.zeros((), dtype=torch.float64), atol=1e-14)
    for k in ("blocks.0.attn.o.weight", "blocks.0.attn.o.bias", "blocks.0.mlp.proj.weight", "blocks.0.mlp.proj.bias"):
        assert torch.allclose(new[k].mean(0), torch.zeros((), dtype=torch.float64), atol=1e-14)
    gamma, beta = params["ln_f.weight"], params["ln_f.bias"]
    torch.testing.assert_close(new["head.weight"], params["wte.weight"] * gamma)
    torch.testing.assert_close(new["head.bias"], params["wte.weight"] @ beta)
    assert new_arch.config["tie_embeddings"] is False and new_arch.config["head_bias"] is True
    g1, b1 = params["blocks.0.ln_1.weight"], params["blocks.0.ln_1.bias"]
    torch.testing.assert_close(new["blocks.0.attn.q.weight"], params["blocks.0.attn.q.weight"] * g1)
    torch.testing.assert_close(new["blocks.0.attn.q.bias"],
                               params["blocks.0.attn.q.bias"] + params["blocks.0.attn.q.weight"] @ b1)


def test_rewrite_rejects_what_it_cannot_rewrite():
    arch = architectures.vit(8, 4, 2, 8, n_heads=2, n_layers=1, d_mlp=8)
    params = random_params(arch, 0, torch.float64)
    new_arch, new = architectures.rewrite_layernorm(arch, arch.module(seed=0))  # a module works too
    with pytest.raises(ValueError, match="no LayerNorm"):
        architectures.rewrite_layernorm(new_arch, new)
    with pytest.raises(TypeError, match="not built by"):
        architectures.rewrite_layernorm(architectures.mlp([3, 4, 2]), {})
    incomplete = {k: v for k, v in params.items() if k != "norm.bias"}
    with pytest.raises(MissingParameterError, match="norm.bias"):
        architectures.rewrite_layernorm(arch, incomplete)
    with pytest.raises(TypeError, match="unknown configuration"):
        architectures.rebuild(arch, width=3)
