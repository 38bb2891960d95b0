"""symmetries.testing.strategies: drawn elements belong to their class, respect the conditioning bound, the
requested dtype and widening; transform sets use admitted classes and share head permutations;
drawn architectures are valid graphs whose modules run on their example inputs; the module
imports without pytest."""
from __future__ import annotations

import subprocess
import sys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import symmetries as sy
from symmetries.elements import HeadElement
from symmetries.testing.strategies import (GROUPS, architectures_, dtypes, elements, random_element, symmetry_classes,
                                   transform_sets, transformer_architectures)
from symmetries.testing import example_inputs


def _cond(el) -> float:
    s = torch.linalg.svdvals(el.as_matrix().double())
    return float(s[0] / s[-1])


@settings(max_examples=150)
@given(cls=symmetry_classes(groups_only=False), data=st.data(), cond=st.sampled_from([1.5, 4.0, 10.0]))
def test_elements_belong_to_their_class_and_respect_the_conditioning_bound(cls, data, cond):
    el = data.draw(elements(cls, max_size=6, widen=2, cond=cond))
    assert cls.contains(el.as_matrix(), atol=1e-9)
    m, n = el.shape
    assert m >= n and (m == n or cls.rectangular)
    if cls.is_group and m == n:
        assert _cond(el) <= cond * (1 + 1e-9)


@settings(max_examples=40)
@given(cls=st.sampled_from(GROUPS), dtype=dtypes, data=st.data())
def test_elements_are_cast_to_the_drawn_dtype(cls, dtype, data):
    el = data.draw(elements(cls, size=5, dtype=dtype))
    x = torch.randn(5, 3, dtype=dtype)
    assert el.apply(x, 0, "out").dtype == dtype and el.apply(x, 0, "in").dtype == dtype
    torch.testing.assert_close(el.inverse().apply(el.apply(x, 0, "out"), 0, "out"), x,
                               rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-5 if dtype == torch.float32
                               else 1e-12)


def test_random_element_is_reproducible_and_bounds_scalings():
    a = random_element(sy.PositiveScaling(), 50, seed=3, cond=4.0)
    b = random_element(sy.PositiveScaling(), 50, seed=3, cond=4.0)
    assert torch.equal(a.as_matrix(), b.as_matrix())
    d = torch.diagonal(a.as_matrix())
    assert float(d.max() / d.min()) <= 4.0 + 1e-12 and float(d.max() / d.min()) > 1.5


@settings(max_examples=40)
@given(arch=transformer_architectures(), data=st.data())
def test_transform_sets_use_admitted_classes_and_share_head_permutations(arch, data):
    T = data.draw(transform_sets(arch.graph))
    assert set(T) == {s.name for s in arch.graph.spaces()}
    for names in arch.graph.head_groups().values():
        perms = {tuple(T[n].head_perm.tolist()) for n in names if isinstance(T[n], HeadElement)}
        assert len(perms) <= 1


@settings(max_examples=40)
@given(arch=architectures_(), seed=st.integers(0, 100))
def test_drawn_architectures_are_valid_and_run(arch, seed):
    module = arch.module(seed=seed, dtype=torch.float64)
    arch.graph.validate(module.state_dict())
    x = example_inputs(arch)
    with torch.no_grad():
        y = module(*x) if isinstance(x, tuple) else module(x)
    assert torch.isfinite(y).all()


def test_strategies_import_without_pytest():
    code = "import sys, symmetries.testing.strategies, symmetries.testing; assert 'pytest' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@settings(max_examples=40)
@given(arch=st.one_of(transformer_architectures(norm="rms"), architectures_()), data=st.data())
def test_one_space_transform_sets_touch_one_space_and_keep_the_function(arch, data):
    T = data.draw(transform_sets(arch.graph, one_space=True, cond=4.0))
    (space, *rest) = list(T)
    group = arch.graph.space(space).head_group
    assert all(arch.graph.space(r).head_group == group is not None for r in rest)
    model = arch.module(seed=0, dtype=torch.float64)
    x = example_inputs(arch)
    x = x if isinstance(x, tuple) else (x,)
    params = model.state_dict()
    with torch.no_grad():
        y = model(*x)
        model.load_state_dict(sy.apply(arch.graph, params, T))
        y2 = model(*x)
    assert float((y - y2).abs().max()) <= 1e-9 * max(1.0, float(y.abs().max()))


@settings(max_examples=30)
@given(arch=st.one_of(architectures_(), transformer_architectures(norm="rms")), data=st.data(),
       cond=st.sampled_from([1.5, 4.0]))
def test_transform_sets_of_all_spaces_respect_the_conditioning_bound(arch, data, cond):
    T = data.draw(transform_sets(arch.graph, cond=cond))
    assert set(T) == {s.name for s in arch.graph.spaces()}
    for el in T.values():
        if el.shape[0] == el.shape[1]:
            assert _cond(el) <= cond * (1 + 1e-9)


def test_transform_sets_cond_applies_to_every_space_of_an_mlp():
    import architectures
    arch = architectures.mlp([4, 8, 3], "relu")
    worst = []

    @settings(max_examples=30, database=None)
    @given(T=transform_sets(arch.graph, cond=1.5))
    def draw(T):
        worst.append(max(_cond(el) for el in T.values()))

    draw()
    assert max(worst) <= 1.5 * (1 + 1e-9) and max(worst) > 1.05  # bounded, and scalings really drawn


@settings(max_examples=20)
@given(data=st.data())
def test_transform_sets_with_classes_for_every_space(data):
    import architectures
    arch = architectures.mlp([4, 6, 5, 3], "relu")
    T = data.draw(transform_sets(arch.graph, sy.PositiveScaling(), cond=2.0))
    assert all(sy.PositiveScaling().contains(el.as_matrix(), atol=1e-12) and _cond(el) <= 2.0 + 1e-9
               for el in T.values())
    T = data.draw(transform_sets(arch.graph, {"hidden.1": sy.Permutation()}, cond=2.0))
    assert sy.Permutation().contains(T["hidden.1"].as_matrix(), atol=0) and _cond(T["hidden.0"]) <= 2.0 + 1e-9
    import pytest
    from symmetries.errors import NotAdmittedError
    with pytest.raises(NotAdmittedError, match="hidden.0"):  # ReLU does not admit sign flips
        data.draw(transform_sets(arch.graph, {"hidden.0": sy.SignFlip()}))
