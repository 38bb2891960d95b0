"""symmetries.testing: the assertion passes for every builder (float64 and float32), fails with the
right space, class and activation named on wrong declarations (scaling across GELU, a split
residual, an orthogonal residual across LayerNorm, splitting GELU units), shrinks to the smallest
failing subclass, scales its tolerance as documented, never touches the user's model, and raises
typed errors on input that does not fit."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import architectures
import symmetries as sy
from arch_checks import split_space
from symmetries.errors import UnknownParameterError, UnknownSpaceError
from symmetries.testing.strategies import (cnn_architectures, dtypes, gcn_architectures, mlp_architectures,
                                   resnet_architectures, seeds, transformer_architectures)
from symmetries.testing.invariance import (ALL_SPACES, DEFAULT_RTOL, InvarianceError, assert_invariant, check_invariance,
                                example_inputs)


def _rows(graph) -> int:
    spaces = graph.spaces()
    return sum(len(s.classes) for s in spaces) + (1 if len(spaces) > 1 else 0)


# -- every builder passes ------------------------------------------------------------------------------
@settings(max_examples=40)
@given(arch=st.one_of(mlp_architectures(max_width=8), cnn_architectures(), resnet_architectures(),
                      gcn_architectures(), transformer_architectures(norm=st.sampled_from(["layernorm", "rms"]))),
       dtype=dtypes, seed=seeds)
def test_every_builder_passes_with_every_declared_class(arch, dtype, seed):
    report = assert_invariant(arch.module(seed=seed % 1000), arch.graph, example_inputs(arch, dtype=dtype),
                              examples=2, seed=seed, dtype=dtype)
    assert report.passed and len(report.checks) == _rows(arch.graph)
    assert report.examples == 2 * len(report.checks)
    assert all(c.max_error <= c.tolerance for c in report.checks)


def test_architecture_objects_are_accepted_and_rms_transformers_admit_orthogonal_residuals():
    arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=2, d_mlp=6, norm="rms")
    assert arch.graph.admits("residual", sy.Orthogonal())
    report = assert_invariant(arch, example_inputs=example_inputs(arch), examples=3, dtype=torch.float64)
    row = next(c for c in report.checks if c.space == "residual")
    assert row.cls == "Orthogonal" and row.passed and row.examples == 3 and row.max_error < 1e-12


# -- wrong declarations fail, naming the space --------------------------------------------------------------
@settings(max_examples=25)
@given(act=st.sampled_from(["gelu", "silu", "sigmoid"]), depth=st.integers(1, 3), which=st.integers(0, 2),
       dtype=dtypes, seed=seeds)
def test_scaling_declared_across_a_smooth_activation_fails_at_that_space(act, depth, which, dtype, seed):
    arch = architectures.mlp([4] + [6] * depth + [3], act)
    space = f"hidden.{which % depth}"
    wrong = arch.graph.with_classes({space: sy.PositiveScaling()})
    with pytest.raises(InvarianceError) as info:
        assert_invariant(arch.module(seed=1), wrong, example_inputs(arch, dtype=dtype), seed=seed, dtype=dtype)
    check = info.value.check
    assert check.space == space and check.cls == "PositiveScaling" and check.activation == act
    assert check.max_error > check.tolerance
    msg = str(info.value)
    assert f"space `{space}` declared PositiveScaling" in msg and f"activation is {act}" in msg
    assert isinstance(info.value, AssertionError)
    others = [c for c in info.value.report.checks if c.space not in (space, ALL_SPACES)]
    assert all(c.passed for c in others)  # attributed to the one space


def test_a_failing_product_class_shrinks_to_the_failing_factor():
    arch = architectures.mlp([4, 6, 5, 3], "gelu")
    wrong = arch.graph.with_classes({"hidden.1": sy.PermutationScaling()})
    with pytest.raises(InvarianceError, match=r"declared PermutationScaling: output changed by .* after a drawn "
                                              r"PositiveScaling .*activation is gelu"):
        assert_invariant(arch.module(seed=0), wrong, example_inputs(arch))


def test_semi_permutations_are_checked_widened_and_fail_across_gelu():
    arch = architectures.mlp([4, 6, 3], "gelu")
    wrong = arch.graph.with_classes({"hidden.0": sy.SemiPermutation()})
    report = check_invariance(arch.module(seed=0), wrong, example_inputs(arch))
    (row,) = [c for c in report.checks if c.space == "hidden.0"]
    assert not row.passed and row.note == ""  # widened (a square semi-permutation would be a permutation)
    ok = check_invariance(arch.module(seed=0), wrong, example_inputs(arch), widen=0)
    assert ok.passed


@pytest.mark.parametrize("space,moved", [
    ("stream.0", ["layer1.0.conv2.weight", "layer1.0.bn2.weight", "layer1.0.bn2.bias", "layer1.0.bn2.running_mean",
                  "layer1.0.bn2.running_var"]),
    ("stream.1", ["layer3.0.conv1.weight"]),
])
def test_a_resnet_whose_residual_space_is_split_fails_at_that_stream(space, moved):
    arch = architectures.resnet(8, channels=(3, 4, 5), in_channels=2)
    wrong = split_space(arch.graph, space, moved)
    with pytest.raises(InvarianceError) as info:
        assert_invariant(arch.module(seed=0), wrong, example_inputs(arch), examples=3)
    assert info.value.check.space in (space, space + "'")
    failing = {c.space for c in info.value.report.failures}
    assert failing <= {space, space + "'", ALL_SPACES}
    assert_invariant(arch.module(seed=0), arch.graph, example_inputs(arch), examples=3)  # the true graph holds


@pytest.mark.parametrize("kind", ["gpt2", "vit"])
def test_orthogonal_residual_without_the_layernorm_rewrite_fails_at_the_residual(kind):
    arch = (architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=6) if kind == "gpt2"
            else architectures.vit(8, 4, 2, 8, n_heads=2, n_layers=1))
    wrong = arch.graph.with_classes({"residual": sy.Orthogonal()})
    with pytest.raises(InvarianceError, match=r"space `residual` declared Orthogonal") as info:
        assert_invariant(arch.module(seed=0), wrong, example_inputs(arch, dtype=torch.float32), examples=3)
    assert info.value.check.max_error > 1e-3
    assert info.value.check.failing_class == "SignFlip"  # already a sign flip breaks LayerNorm's gain and bias


def test_untied_head_permutation_is_caught_and_attributed():
    arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=6)
    g = arch.graph.copy()
    g.nx.nodes["blocks.0.attn.vo"]["head_group"] = None  # forget to tie V/O heads to Q/K heads
    g._cache = None
    report = check_invariance(arch.module(seed=0), g, example_inputs(arch), examples=4)
    assert not report.passed
    assert [c.space for c in report.failures if c.space != ALL_SPACES] in (["blocks.0.attn.qk"],
                                                                           ["blocks.0.attn.vo"],
                                                                           ["blocks.0.attn.qk", "blocks.0.attn.vo"])


# -- tolerances -------------------------------------------------------------------------------------------------
def test_tolerance_is_rtol_times_conditioning_times_output_scale():
    arch = architectures.mlp([4, 6, 3], "gelu")
    model, x = arch.module(seed=0, dtype=torch.float64), example_inputs(arch)
    report = check_invariance(model, arch.graph, x, perturb=False, joint=False)
    (row,) = report.checks
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert row.tolerance == pytest.approx(DEFAULT_RTOL[torch.float64] * 1.0 * scale, rel=1e-12)  # κ(P) = 1
    scaled = check_invariance(model, arch.graph.with_classes({"hidden.0": sy.PositiveScaling()}), x, rtol=1.0,
                              perturb=False, joint=False, cond=9.0, examples=3)
    (row,) = scaled.checks
    assert scale < row.tolerance <= 9.0 * scale  # κ(D) ∈ (1, 9] multiplies the tolerance
    assert scaled.passed  # a huge rtol accepts even a broken symmetry: the tolerance is really used


def test_the_round_off_factor_is_the_worst_tensors_product_of_conditions():
    """Deep nets: the joint row's factor stays the worst adjacent pair's κ_a·κ_b (a sum over spaces
    would grow with depth); a running variance sees κ²."""
    from symmetries.testing import roundoff_factor
    deep = architectures.mlp([3] + [5] * 12 + [2], "relu")
    conds = [1.5 + 0.25 * i for i in range(11)]
    T = {f"hidden.{i}": sy.GatherElement.monomial(range(5), [c] + [1.0] * 4) for i, c in enumerate(conds)}
    assert roundoff_factor(deep.graph, T) == pytest.approx(conds[-1] * conds[-2], rel=1e-12)
    assert roundoff_factor(deep.graph, {"hidden.3": T["hidden.3"]}) == pytest.approx(conds[3], rel=1e-12)
    bn = architectures.vgg([4], batchnorm=True)
    space = bn.graph.spaces()[0].name
    scale = sy.GatherElement.monomial(range(4), [3.0, 1.0, 1.0, 1.0])
    assert roundoff_factor(bn.graph, {space: scale}) == pytest.approx(9.0, rel=1e-12)


def test_float32_tolerance_is_looser_than_float64():
    arch = architectures.mlp([4, 6, 3], "relu")
    r64 = check_invariance(arch.module(seed=0), arch.graph, example_inputs(arch), dtype=torch.float64)
    r32 = check_invariance(arch.module(seed=0), arch.graph, example_inputs(arch), dtype=torch.float32)
    assert r64.dtype == "float64" and r32.dtype == "float32"
    assert max(c.tolerance for c in r32.checks) > 1e3 * max(c.tolerance for c in r64.checks)


# -- the user's model is untouched; bad input is refused -------------------------------------------------------
def test_the_users_model_is_never_modified():
    arch = architectures.vgg((4, "M", 5), in_channels=2, batchnorm=True)
    model = arch.module(seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_invariance(model, arch.graph, example_inputs(arch, dtype=torch.float32), examples=2)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_graph_that_does_not_fit_the_model_is_a_typed_error():
    arch, other = architectures.mlp([4, 6, 3]), architectures.vgg((4,), in_channels=2)
    with pytest.raises(UnknownParameterError, match="features"):
        check_invariance(other.module(), arch.graph, example_inputs(other))
    with pytest.raises(UnknownSpaceError, match="nowhere"):
        check_invariance(arch.module(), arch.graph, example_inputs(arch), {"nowhere": sy.Permutation()})
    with pytest.raises(ValueError, match="examples"):
        check_invariance(arch.module(), arch.graph, example_inputs(arch), examples=0)
    with pytest.raises(TypeError, match="graph"):
        check_invariance(arch.module(), None, example_inputs(arch))


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) + torch.rand(2)


def test_a_non_deterministic_model_is_refused():
    g = architectures.WeightGraph("noisy")
    g.add_parameter("fc.weight", (2, 3), fixed=True).add_parameter("fc.bias", (2,), fixed=True)
    g.add_space("none", 1, sy.Permutation())
    with pytest.raises(RuntimeError, match="not deterministic"):
        check_invariance(_Noisy(), g, torch.randn(4, 3))


def test_report_rows_and_json_friendly_dict():
    arch = architectures.mlp([4, 6, 5, 3], "relu")
    report = check_invariance(arch.module(seed=0), arch.graph, example_inputs(arch), examples=3, seed=7)
    assert [(c.space, c.cls) for c in report.checks] == [
        ("hidden.0", "PermutationScaling"), ("hidden.0", "SemiPermutation"),
        ("hidden.1", "PermutationScaling"), ("hidden.1", "SemiPermutation"), (ALL_SPACES, report.checks[-1].cls)]
    d = report.to_dict()
    assert d["passed"] and d["examples"] == 15 and d["checks"][0]["verdict"] == "pass"
    again = check_invariance(arch.module(seed=0), arch.graph, example_inputs(arch), examples=3, seed=7)
    assert [c.seed for c in again.checks] == [c.seed for c in report.checks]  # reproducible from the seed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_the_gpu_is_checked_on_the_gpu():
    arch = architectures.vgg((4, "M", 5), in_channels=2, batchnorm=True)
    model = arch.module(seed=0).cuda()
    x = example_inputs(arch, dtype=torch.float32).cuda()
    report = assert_invariant(model, arch.graph, x, examples=3)
    assert report.passed and next(model.parameters()).is_cuda
    wrong = architectures.mlp([4, 6, 3], "gelu")
    with pytest.raises(InvarianceError, match="hidden.0"):
        assert_invariant(wrong.module(seed=0).cuda(), wrong.graph.with_classes({"hidden.0": sy.PositiveScaling()}),
                         example_inputs(wrong, dtype=torch.float32).cuda())


# -- non-finite outputs -------------------------------------------------------------------------------------------
class _Masked(nn.Module):
    """An MLP of the builders whose output carries a −inf column (as masked logits do)."""

    def __init__(self, inner: nn.Module, fill: float = float("-inf")):
        super().__init__()
        self.layers, self.fill = inner.layers, fill
        self.act = inner.act if hasattr(inner, "act") else None
        object.__setattr__(self, "_inner", inner)

    def forward(self, x):
        y = self._inner(x)
        return torch.cat([y, torch.full_like(y[:, :1], self.fill)], 1)


@pytest.mark.parametrize("fill", [float("-inf"), float("inf"), float("nan")])
def test_a_non_finite_mask_column_does_not_hide_a_broken_symmetry(fill):
    arch = architectures.mlp([4, 6, 3], "gelu")
    masked, x = _Masked(arch.module(seed=0), fill), example_inputs(arch)
    wrong = arch.graph.with_classes({"hidden.0": sy.PositiveScaling()})
    with pytest.raises(InvarianceError, match=r"space `hidden.0` declared PositiveScaling") as info:
        assert_invariant(masked, wrong, x, dtype=torch.float64)
    check = info.value.check
    assert 1e-3 < check.max_error < float("inf") and 0 < check.tolerance < 1e-6  # finite entries only
    report = assert_invariant(masked, arch.graph, x, dtype=torch.float64)  # the true symmetry holds
    assert all(0 < c.tolerance < 1e-6 for c in report.checks)


class _SqrtHead(nn.Module):
    """``[fc2(|h|), −inf, sqrt(h₀ − 2)]``: sign flips keep ``|h|``, but flipping unit 0 turns the finite
    last column into NaN."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc1(x)
        y = self.fc2(h.abs())
        return torch.cat([y, torch.full_like(y[:, :1], float("-inf")), torch.sqrt(h[:, :1] - 2.0)], 1)


def _sqrt_graph(cls):
    g = architectures.WeightGraph("sqrt-head")
    g.add_parameter("fc1.weight", (6, 4)).add_parameter("fc1.bias", (6,)).add_parameter("fc2.weight", (3, 6))
    g.add_parameter("fc2.bias", (3,), fixed=True)
    g.add_space("h", 6, cls)
    g.connect("fc1.weight", "h", axis=0, role="out").connect("fc1.bias", "h", axis=0, role="out")
    g.connect("fc2.weight", "h", axis=1, role="in")
    return g


def test_nan_where_the_reference_is_finite_fails_with_a_note():
    torch.manual_seed(0)
    model = _SqrtHead().double()
    with torch.no_grad():
        model.fc1.weight.mul_(0.1)
        model.fc1.bias[0] = 5.0  # h₀ − 2 > 0 at θ: the sqrt column is finite
    x = torch.randn(8, 4, dtype=torch.float64)
    report = check_invariance(model, _sqrt_graph(sy.SignFlip()), x, perturb=False, joint=False, examples=10)
    (row,) = report.checks
    assert not row.passed and row.max_error == float("inf")
    assert "nan" in row.note and "was finite" in row.note


def test_non_finite_pattern_compared_positionally():
    from symmetries.testing.outputs import output_difference as _difference
    inf, nan = float("inf"), float("nan")
    ref = [torch.tensor([1.0, -inf, nan, inf])]
    assert _difference(ref, [torch.tensor([1.5, -inf, nan, inf])])[0] == pytest.approx(0.5)  # same pattern
    for other in ([1.0, inf, nan, inf], [1.0, -inf, 2.0, inf], [1.0, 0.0, nan, inf], [nan, -inf, nan, inf]):
        err, note = _difference(ref, [torch.tensor(other)])
        assert err == inf and note


def test_a_reference_output_without_finite_entries_is_refused():
    arch = architectures.mlp([4, 6, 3], "relu")
    model = _Masked(arch.module(seed=0))
    model.forward = lambda x: torch.full((len(x), 3), float("nan"))
    with pytest.raises(ValueError, match="no finite entries"):
        check_invariance(model, arch.graph, example_inputs(arch))


# -- tied parameters ---------------------------------------------------------------------------------------------------
class _TiedLM(nn.Module):
    """``logits = E[t] Eᵀ`` with the output layer's weight tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(11, 6), nn.Linear(6, 11, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, t):
        return self.out(self.emb(t))


def _tied_graph(cls):
    g = architectures.WeightGraph("tied-lm")
    g.add_parameter("emb.weight", (11, 6)).add_parameter("out.weight", (11, 6))
    g.add_space("stream", 6, cls)
    g.connect("emb.weight", "stream", axis=1, role="out").connect("out.weight", "stream", axis=1, role="in")
    return g


def test_tied_parameters_are_checked_as_one_tensor():
    torch.manual_seed(0)
    model, ids = _TiedLM(), torch.randint(0, 11, (3, 5))
    report = assert_invariant(model, _tied_graph(sy.Orthogonal()), ids, dtype=torch.float64)  # Eᵀ Q Qᵀ E
    assert report.passed and report.checks[0].max_error < 1e-10
    # an invertible A keeps E Aᵀ A⁻ᵀ Eᵀ if the keys were separate, but one tensor cannot be both E Aᵀ and E A⁻¹
    with pytest.raises(InvarianceError, match=r"space `stream` declared Invertible") as info:
        assert_invariant(model, _tied_graph(sy.Invertible()), ids, dtype=torch.float64)
    note = info.value.check.note
    assert "tied" in note and "emb.weight" in note and "out.weight" in note


def test_a_module_with_tied_weights_from_module():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc, self.out = nn.Embedding(11, 6), nn.Linear(6, 6), nn.Linear(6, 11, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, t):
            return self.out(torch.relu(self.fc(self.emb(t))))

    torch.manual_seed(0)
    model, ids = Tiny(), torch.randint(0, 11, (3, 5))
    graph = architectures.from_module(model, ids)
    report = assert_invariant(model, graph, ids, examples=3)
    assert report.passed and report.examples >= 3


def _hf_gpt2():
    pytest.importorskip("transformers")
    return architectures.hf_gpt2(n_embd=8, n_head=2, n_layer=1, vocab_size=13, n_positions=6)


def test_hf_gpt2_with_its_tied_lm_head_passes():
    arch = _hf_gpt2()
    ids = example_inputs(arch)
    assert ids.dtype == torch.long and ids.shape[-1] == 6 and int(ids.max()) < 13
    report = assert_invariant(arch.module(seed=0), arch.graph, ids, examples=2, dtype=torch.float64)
    assert report.passed and {c.space for c in report.checks} >= {"residual", "transformer.h.0.mlp"}
    wrong = arch.graph.with_classes({"transformer.h.0.mlp": sy.PositiveScaling()})
    with pytest.raises(InvarianceError, match=r"space `transformer.h.0.mlp` declared PositiveScaling"):
        assert_invariant(arch.module(seed=0), wrong, ids, examples=2, dtype=torch.float64)


# -- messages ------------------------------------------------------------------------------------------------------------
def test_a_shrunk_failure_names_the_seed_of_the_failing_subclass_draw():
    from symmetries.testing.strategies import random_element
    arch = architectures.gpt2(13, 6, 8, n_heads=2, n_layers=1, d_mlp=6)
    wrong = arch.graph.with_classes({"residual": sy.Orthogonal()})
    x = example_inputs(arch)
    report = check_invariance(arch.module(seed=0), wrong, x, examples=3, dtype=torch.float64, joint=False)
    row = next(c for c in report.checks if c.space == "residual")
    assert row.failing_class == "SignFlip" and row.failing_seed is not None and row.failing_seed != row.seed
    msg = row.message()
    assert f"after a drawn SignFlip (seed {row.failing_seed}" in msg and f"seed {row.seed}" in msg
    # the named seed replays a failing sign flip
    model = arch.module(seed=0).double()
    el = random_element(sy.SignFlip(), 8, seed=row.failing_seed, cond=4.0)
    from symmetries.testing.invariance import _perturb, _seed
    theta = _perturb(wrong, dict(model.state_dict()), _seed(0, 1))
    with torch.no_grad():
        y = torch.func.functional_call(model, theta, (x,))
        y2 = torch.func.functional_call(model, sy.apply(wrong, theta, sy.TransformSet({"residual": el}), check=False),
                                        (x,))
    assert float((y - y2).abs().max()) == pytest.approx(row.failing_error, rel=1e-9)
