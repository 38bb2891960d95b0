"""from_module on models no builder knows: the extracted graphs are exact (hypothesis invariance in
float64), and a class the graph does not admit changes the function."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import symmetries as sy
from arch_checks import max_cond
from conftest import RTOL
from extract_models import GRAPHS, MODELS, RULE_CLASSES, build_model, model_inputs, run_model
from symmetries.testing.strategies import seeds, transform_sets


# -- exactness of the extracted graphs ------------------------------------------------------------------
@settings(max_examples=150)
@given(st.sampled_from(sorted(MODELS)), st.data(), st.integers(0, 1000),
       st.sampled_from([torch.float64, torch.float32]))
def test_extracted_graphs_are_exact(name, data, seed, dtype):
    """Transforms drawn from the extracted graph's own classes leave every model's outputs
    unchanged: float64 to ~1e-10 relative, float32 to round-off (scaled by the maps' conditioning)."""
    g = GRAPHS[name]
    T = data.draw(transform_sets(g), label="transforms")
    model, inputs = build_model(name, seed).to(dtype), tuple(x.to(dtype) if x.is_floating_point() else x
                                                         for x in model_inputs(name))
    params = model.state_dict()
    y, y2 = run_model(model, params, inputs), run_model(model, sy.apply(g, params, T), inputs)
    tol = RTOL[dtype] * max_cond(T, g) * max(1.0, float(y.abs().max()))
    assert float((y - y2).abs().max()) <= tol


@settings(max_examples=10)
@given(st.sampled_from(["res_mlp", "transformer", "two_branch"]), seeds)
def test_a_class_the_graph_does_not_admit_changes_the_function(name, seed):
    """The invariance check can fail: orthogonal maps on every non-head space break these models."""
    g = GRAPHS[name]
    classes = {s.name: sy.Orthogonal() for s in g.spaces() if s.head_group is None}
    assert not all(g.admits(s, c) for s, c in classes.items())
    T = sy.random_transforms(g, seed, classes=classes, strict=False)
    model, inputs = build_model(name), model_inputs(name)
    params = model.state_dict()
    y, y2 = run_model(model, params, inputs), run_model(model, sy.apply(g, params, T, check=False), inputs)
    assert float((y - y2).abs().max()) > 1e-6 * max(1.0, float(y.abs().max()))


@pytest.mark.parametrize("rule", sorted(RULE_CLASSES))
def test_small_rules(rule):
    g = GRAPHS[f"rule:{rule}"]
    expected = RULE_CLASSES[rule]
    if expected is None:
        assert g.spaces() == [] and all(p.fixed for p in g.parameters())
    else:
        assert [s.classes for s in g.spaces()] == [expected]


@pytest.mark.parametrize("name,cls", [("conv_bn", sy.PositiveScaling()), ("conv_bn", sy.SignFlip()),
                                      ("mobile", sy.SignFlip()), ("odd_mlp", sy.Orthogonal()),
                                      ("rule:plus_one", sy.PositiveScaling()), ("rule:centred", sy.PositiveScaling()),
                                      ("rule:square", sy.SignFlip()), ("transformer", sy.SignFlip())])
def test_classes_refused_by_the_walk_are_not_exact(name, cls):
    """What the walk refuses (scaling across BatchNorm's ε, signs across a product…) does change outputs."""
    g = GRAPHS[name]
    classes = {s.name: cls for s in g.spaces() if s.head_group is None}
    assert not any(g.admits(s, cls) for s in classes)
    T = sy.random_transforms(g, 0, classes=classes, strict=False)
    model, inputs = build_model(name), model_inputs(name)
    params = model.state_dict()
    y, y2 = run_model(model, params, inputs), run_model(model, sy.apply(g, params, T, check=False), inputs)
    assert float((y - y2).abs().max()) > 1e-8 * max(1.0, float(y.abs().max()))
