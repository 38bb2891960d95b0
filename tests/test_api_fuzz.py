"""Fuzzing the public API with malformed input: only the library's typed errors come out.

Graphs declared with bad names, shapes, sizes, classes, axes, slices and roles; parameter dicts
holding ``None``, strings, lists and wrongly shaped tensors; transform sets holding non-elements,
elements of the wrong size or of classes the space does not admit; class specs that name nothing;
solver options ``seed``, ``device`` and ``dtype`` of every wrong kind. Every call either succeeds or
raises a :class:`~symmetries.errors.SymmetryError` — never a raw ``TypeError``, ``AttributeError``,
``AssertionError``, ``IndexError`` or ``LinAlgError``.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import solvers
import symmetries as sy
from symmetries.errors import SymmetryError

CLASSES = [sy.Permutation(), sy.PermutationScaling(), sy.Orthogonal(), sy.Invertible(), sy.SignFlip(),
           sy.SemiPermutation(), sy.HeadStructured(2, sy.Permutation())]
junk = st.one_of(st.none(), st.integers(-3, 5), st.floats(allow_nan=True), st.text(max_size=3),
                 st.lists(st.integers(-2, 4), max_size=3), st.just(object()))
names = st.one_of(st.sampled_from(["w1", "b1", "w2", "h", "nope"]), junk)
axes = st.one_of(st.integers(-3, 3), st.floats(-2, 2), st.none(), st.text(max_size=2))
slices = st.one_of(st.none(), st.tuples(st.integers(-2, 6), st.integers(-2, 6)),
                   st.lists(st.one_of(st.integers(0, 6), st.floats(0, 6), st.none()), max_size=3), st.integers())
roles = st.one_of(st.sampled_from(["out", "in", "var"]), junk)
class_specs = st.one_of(st.sampled_from(CLASSES), st.lists(st.sampled_from(CLASSES), max_size=2),
                        st.sampled_from(["permutation", "orthogonal", "no such class"]), junk)


def typed(call, *args, **kwargs):
    """Run ``call``; the only exceptions allowed out are the library's."""
    try:
        return call(*args, **kwargs)
    except SymmetryError:
        return None


def base_graph(size=4) -> sy.WeightGraph:
    g = sy.WeightGraph("fuzz")
    g.add_parameter("w1", (size, 3)).add_parameter("b1", (size,)).add_parameter("w2", (2, size))
    g.add_space("h", size, (sy.PermutationScaling(), sy.SemiPermutation()))
    return g.connect("w1", "h", axis=0, role="out").connect("b1", "h", axis=0, role="out") \
        .connect("w2", "h", axis=1, role="in")


@settings(max_examples=150)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("parameter"), names, st.one_of(st.none(), st.lists(junk, max_size=3), junk)),
    st.tuples(st.just("space"), names, st.one_of(st.integers(-1, 6), junk), class_specs),
    st.tuples(st.just("connect"), names, names, axes, roles, slices),
    st.tuples(st.just("classes"), names, class_specs),
), max_size=6))
def test_building_graphs_from_bad_declarations_raises_typed_errors(ops):
    g = base_graph()
    for op in ops:
        if op[0] == "parameter":
            typed(g.add_parameter, op[1], op[2])
        elif op[0] == "space":
            typed(g.add_space, op[1], op[2], op[3])
        elif op[0] == "connect":
            typed(g.connect, op[1], op[2], axis=op[3], role=op[4], slice=op[5])
        else:
            typed(g.set_classes, op[1], op[2])
    typed(g.validate)
    for name in ("w1", "h", "nope", None):
        typed(g.edges_of, name)
        typed(g.space, name)
    repr(g)


values = st.one_of(junk, st.lists(st.integers(0, 3), min_size=1, max_size=3).map(lambda s: torch.zeros(*s)),
                   st.lists(st.integers(0, 3), min_size=1, max_size=3).map(lambda s: np.zeros(s)),
                   st.sampled_from([torch.zeros(4, 3), torch.zeros(4), torch.zeros(2, 4), torch.zeros(4, 3).long()]))


@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(["w1", "b1", "w2", "extra", "h"]), values, max_size=4), st.booleans())
def test_bad_parameter_dicts_raise_typed_errors(overrides, as_list):
    g = base_graph()
    params = {"w1": torch.randn(4, 3), "b1": torch.randn(4), "w2": torch.randn(2, 4)}
    params.update(overrides)
    arg = list(params.items()) if as_list else params
    typed(g.validate, arg)
    typed(sy.apply, g, arg, {"h": sy.Permutation().random(4, seed=0)})


elements = st.one_of(
    junk, st.just(torch.eye(4)),
    # well-formed elements of every class (sizes each class admits: a 2-head class needs an even size),
    # applied to spaces they may not fit — the door must refuse those with a typed error
    st.sampled_from(CLASSES).flatmap(lambda c: st.builds(
        lambda n, seed: c.random(n, seed=seed) if not c.rectangular else c.random(n, m=n + 1, seed=seed),
        st.sampled_from([2, 4] if isinstance(c, sy.HeadStructured) else [2, 4, 5]), st.integers(0, 9))),
    st.builds(lambda idx, s: sy.GatherElement(idx, 4, s), st.lists(st.integers(0, 3), min_size=4, max_size=4),
              st.lists(st.sampled_from([0.0, -1.0, 1.0, 2.0, float("nan"), float("inf")]), min_size=4, max_size=4)),
    st.builds(lambda m: m, st.lists(st.lists(st.sampled_from([0.0, 1.0, 2.0, float("nan")]), min_size=4,
                                             max_size=4), min_size=4, max_size=4)),
)


@settings(max_examples=150)
@given(st.one_of(st.dictionaries(st.sampled_from(["h", "nope"]) | junk.filter(lambda v: v.__hash__ is not None),
                                 elements, max_size=2), junk))
def test_bad_transform_sets_raise_typed_errors(transforms):
    g = base_graph()
    params = {"w1": torch.randn(4, 3), "b1": torch.randn(4), "w2": torch.randn(2, 4)}
    typed(sy.apply, g, params, transforms)


@settings(max_examples=100)
@given(st.one_of(class_specs, st.dictionaries(st.sampled_from(["h", "nope"]), class_specs, max_size=2)),
       st.one_of(st.integers(0, 5), st.none()))
def test_bad_class_specs_raise_typed_errors(classes, seed):
    g = base_graph()
    typed(sy.random_transforms, g, seed, classes=classes)
    typed(sy.resolve_classes, g, classes)


@settings(max_examples=40)
@given(st.fixed_dictionaries({}, optional={
    "seed": st.one_of(st.integers(-3, 3), junk),
    "device": st.one_of(st.sampled_from(["cpu", "cuda", "cuda:7", "meta?", "mps"]), junk),
    "dtype": st.one_of(st.sampled_from([torch.float16, torch.bfloat16, torch.int32, torch.float32, torch.float64,
                                        torch.complex64]), junk),
}))
def test_bad_solver_options_raise_typed_errors(options):
    g = base_graph()
    gen = torch.Generator().manual_seed(0)
    pa = {"w1": torch.randn(4, 3, generator=gen), "b1": torch.randn(4, generator=gen), "w2": torch.randn(2, 4, generator=gen)}
    typed(solvers.make_problem, g, pa, pa, **options)
