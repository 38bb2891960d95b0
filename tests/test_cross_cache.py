"""solvers.cross_cache: a kept ``A_e B̃_eᵀ`` updated where the neighbour's permutation moved equals the product
recomputed whole — plain edges, a repeated (flatten) edge, both roles — and weight matching finds the same
alignment with the cache on and off."""
import dataclasses
import functools

import pytest
import torch
from torch import nn

import architectures
import solvers
from solvers import cross_cache, memory
from solvers.local import Matcher
from solvers.problem import make_problem
from symmetries import Permutation, PermutationScaling, TransformSet, apply
from symmetries.elements import GatherElement
from symmetries.roles import Role


class ConvFlat(nn.Module):
    """conv → ReLU → conv → ReLU → flatten (channels × 3 × 3 positions: a repeated edge) → fc → ReLU → fc."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 6, 3), nn.Conv2d(6, 5, 3)
        self.f1, self.f2 = nn.Linear(45, width), nn.Linear(width, 3)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.f2(torch.relu(self.f1(h.flatten(1))))


def _problem(graph, seed_a=0, seed_b=1, module=None):
    if module is None:
        arch = graph
        a = {k: v.double() for k, v in arch.module(seed=seed_a).state_dict().items()}
        b = {k: v.double() for k, v in arch.module(seed=seed_b).state_dict().items()}
        return make_problem(arch.graph, a, b, classes="permutation", dtype=torch.float64)
    torch.manual_seed(seed_a)
    a = {k: v.double() for k, v in module().state_dict().items()}
    torch.manual_seed(seed_b)
    b = {k: v.double() for k, v in module().state_dict().items()}
    return make_problem(graph, a, b, classes="permutation", dtype=torch.float64)


def _moves(n, gen):
    """Permutations of ``n`` as a visit sequence: a start, one swap, the same again, a few more, all new."""
    p = torch.randperm(n, generator=gen)
    q = p.clone()
    q[[0, n - 1]] = q[[n - 1, 0]]
    r = q.clone()
    r[[1, 2]] = r[[2, 1]]
    return [p, q, q.clone(), r, torch.randperm(n, generator=gen)]


def _check_space(problem, space, neighbour):
    """Visit ``space`` under a sequence of permutations at ``neighbour``: the cached cross products equal
    those built from scratch, and the cache took each path (whole, updated, reused)."""
    cached, plain = Matcher(problem), Matcher(problem)
    plain.cache = None
    assert cached.cache is not None
    n = problem.sizes[neighbour][1]
    others = {s: GatherElement.identity(problem.sizes[s][1]) for s in problem.spaces if s not in (space, neighbour)}
    for perm in _moves(n, torch.Generator().manual_seed(0)):
        transforms = {**others, neighbour: GatherElement(perm, n)}
        got = cached.local(space, transforms, stream=True).cross(Role.OUT, Role.IN)
        want = plain.local(space, transforms, stream=True).cross(Role.OUT, Role.IN)
        assert torch.allclose(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))
    return cached.cache.stats


def test_updated_products_equal_whole_ones_on_an_mlp(monkeypatch):
    arch = architectures.mlp([4, 32, 8, 4])  # the 8-wide space reads 32-long rows of the 32-wide one's weights
    problem = _problem(arch)
    spaces = problem.spaces
    stats = _check_space(problem, spaces[1], spaces[0])
    assert stats["whole"] >= 1 and stats["updated"] >= 2 and stats["reused"] >= 1, stats


def test_updated_products_equal_whole_ones_through_a_flatten():
    graph = architectures.from_module(ConvFlat().double(), torch.zeros(1, 2, 7, 7, dtype=torch.float64))
    problem = _problem(graph, module=ConvFlat)
    repeated = [e for e in graph.edges_of("f1.weight") if e.repeat is not None]
    assert repeated, "the flatten should give f1.weight a repeated edge"
    conv_space, fc_space = repeated[0].space, next(e.space for e in graph.edges_of("f1.weight") if e.repeat is None)
    stats = _check_space(problem, fc_space, conv_space)  # out rows of f1 (4 × 45): the conv's 5 channels × 9 moved
    assert stats["updated"] >= 2, stats


def test_weight_matching_is_the_same_with_and_without_the_cache(monkeypatch):
    torch.manual_seed(0)
    net_a = ConvFlat().double()
    torch.manual_seed(1)
    net_b = ConvFlat().double()
    graph = architectures.from_module(net_a, torch.zeros(1, 2, 7, 7, dtype=torch.float64))
    a, b = net_a.state_dict(), net_b.state_dict()
    monkeypatch.setattr(cross_cache, "CACHE_BYTES", 0)
    off = solvers.solve("weight_matching", graph, a, b, classes=Permutation(), seed=0, mode="rebasin")
    monkeypatch.setattr(cross_cache, "CACHE_BYTES", 1 << 30)
    paths = []
    cross = cross_cache.CrossCache.cross

    def counted(self, *args, **kw):
        before = dict(self.stats)
        out = cross(self, *args, **kw)
        paths.extend(k for k in self.stats if self.stats[k] != before[k])
        return out
    monkeypatch.setattr(cross_cache.CrossCache, "cross", counted)
    on = solvers.solve("weight_matching", graph, a, b, classes=Permutation(), seed=0, mode="rebasin")
    assert "updated" in paths or "reused" in paths, paths  # the cache served some visits
    assert on.iterations == off.iterations > 1
    assert on.history == pytest.approx(off.history, rel=1e-12)
    for s in off.transforms:
        assert torch.equal(on.transforms[s].as_matrix(), off.transforms[s].as_matrix()), s


def test_a_small_problem_keeps_every_product_whatever_its_depth():
    """When every product a solve could keep fits in SMALL_BYTES (a small MLP), the cache takes edges whose
    rows are shorter than MIN_DEPTH × the width too — and the updated products still equal whole ones."""
    arch = architectures.mlp([6, 16, 16, 5])  # hidden rows are 16 + 5 long: below MIN_DEPTH × 16
    problem = _problem(arch)
    matcher = Matcher(problem)
    assert matcher.cache is not None and matcher.cache.min_depth == 1
    stats = _check_space(problem, problem.spaces[1], problem.spaces[0])
    assert stats["updated"] >= 2, stats


def test_a_large_problem_keeps_only_deep_edges(monkeypatch):
    """Past SMALL_BYTES the depth rule holds: the budget goes to edges long against the width."""
    monkeypatch.setattr(cross_cache, "SMALL_BYTES", 0)
    problem = _problem(architectures.mlp([6, 16, 16, 5]))
    matcher = Matcher(problem)
    assert matcher.cache is None or matcher.cache.min_depth == cross_cache.MIN_DEPTH


def test_a_full_budget_gives_way_to_a_product_that_costs_more_to_recompute():
    """The budget holds one product: a later product whose recomputation costs more multiply-adds takes the
    place of a cheaper one (VGG's classifier after a conv); a cheaper one never pushes out a costlier."""
    graph = architectures.from_module(ConvFlat().double(), torch.zeros(1, 2, 7, 7, dtype=torch.float64))
    problem = _problem(graph, module=ConvFlat)
    out_space = {e.parameter: e.space for s in problem.spaces for e in graph.edges_at(s) if e.axis == 0}
    conv, fc = out_space["c1.weight"], out_space["f1.weight"]  # 6 units reading c2's 5 × 9; 4 reading 5 × 9
    transforms = {s: GatherElement.identity(problem.sizes[s][1]) for s in problem.spaces}
    budget = 6 * 6 * 8  # the conv space's product, float64; the fc space's (4 × 4) is cheaper to recompute

    def run(order):
        matcher = Matcher(problem)
        matcher.cache = cross_cache.CrossCache(budget, min_depth=1)
        for space in order:
            matcher.local(space, transforms, stream=True)
        return {key[0] for key in matcher.cache._entries}, matcher.cache.stats["evicted"]

    assert run([fc]) == ({fc}, 0)  # it fits alone
    assert run([fc, conv]) == ({conv}, 1)
    assert run([conv, fc]) == ({conv}, 0)


def test_updated_products_equal_whole_ones_on_a_repeated_edge_of_the_visited_space():
    """The visited space meets a tensor through a repeated edge (the conv's 5 channels × 9 positions flattened
    into f1's inputs) while the other axis (f1's 16 units) moves: that product is kept and updated too."""
    wide = functools.partial(ConvFlat, 16)  # two units of 16 moved: below MAX_CHANGED
    graph = architectures.from_module(wide().double(), torch.zeros(1, 2, 7, 7, dtype=torch.float64))
    problem = _problem(graph, module=wide)
    repeated = next(e for e in graph.edges_of("f1.weight") if e.repeat is not None)
    fc_space = next(e.space for e in graph.edges_of("f1.weight") if e.repeat is None)
    stats = _check_space(problem, repeated.space, fc_space)
    assert stats["updated"] >= 2, stats


def test_a_widened_cache_keeps_edges_as_long_as_the_space_is_wide(monkeypatch):
    """Past WIDEN_AFTER sweeps a solve widens its cache: depth 1 within WIDE_SHARE of the models' bytes — and the
    products it then keeps (hidden rows shorter than MIN_DEPTH × the width) still equal whole ones."""
    monkeypatch.setattr(cross_cache, "SMALL_BYTES", 0)
    problem = _problem(architectures.mlp([64, 16, 16, 5]))  # WIDE_SHARE of the models holds a 16 × 16 product
    matcher = Matcher(problem)
    assert matcher.cache.min_depth == cross_cache.MIN_DEPTH
    narrow = _check_space(problem, problem.spaces[1], problem.spaces[0])
    assert narrow["updated"] == 0, narrow  # rows 16 long (the other hidden space's units): below 4 × 16
    matcher.widen_cache()
    assert matcher.cache.min_depth == 1
    assert matcher.cache.budget == min(cross_cache.CACHE_BYTES, int(cross_cache.WIDE_SHARE * memory.problem_bytes(problem)))
    widened = Matcher.widen_cache
    monkeypatch.setattr(Matcher, "__init__", _widened_init(Matcher.__init__, widened))
    wide = _check_space(problem, problem.spaces[1], problem.spaces[0])
    assert wide["updated"] >= 2, wide


def _widened_init(init, widen):
    def new(self, problem):
        init(self, problem)
        widen(self)
    return new


def test_a_streamed_problem_never_widens_its_cache(monkeypatch):
    """A lazy problem's memory is its tensors in flight: widening leaves its cache as it was (in memory, the same
    problem's cache widens)."""
    monkeypatch.setattr(cross_cache, "SMALL_BYTES", 0)
    arch = architectures.mlp([64, 16, 16, 5])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    for lazy in (False, True):
        matcher = Matcher(make_problem(arch.graph, a, b, classes="permutation", dtype=torch.float64, lazy=lazy))
        before = (matcher.cache.budget, matcher.cache.min_depth)
        matcher.widen_cache()
        assert ((matcher.cache.budget, matcher.cache.min_depth) == before) == lazy, (lazy, before)


def test_weight_matching_widens_its_cache_only_when_it_creeps(monkeypatch):
    """The forward start and two sweeps (the default mode on an MLP) never widen; the published loop's many
    sweeps from the identity widen once, at the third."""
    calls = []
    widen = Matcher.widen_cache
    monkeypatch.setattr(Matcher, "widen_cache", lambda self: (calls.append(1), widen(self))[1])
    arch = architectures.mlp([6, 16, 16, 5])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    quick = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), seed=0)
    assert quick.iterations <= cross_cache.WIDEN_AFTER and calls == []
    slow = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), seed=0, mode="rebasin")
    assert slow.iterations > cross_cache.WIDEN_AFTER and calls == [1]


def test_adopted_products_equal_whole_ones():
    """A Matcher adopts the products another built on B' = D B (scales at the c1 and fc spaces) where the edge's own
    space is scaled — out: M' diag(1/c), in: M' diag(c) — or not scaled, and none whose other axis is scaled."""
    graph = architectures.from_module(ConvFlat().double(), torch.zeros(1, 2, 7, 7, dtype=torch.float64))
    problem = _problem(graph, module=ConvFlat)
    out_space = {e.parameter: e.space for s in problem.spaces for e in graph.edges_at(s) if e.axis == 0}
    c1, c2, fc = out_space["c1.weight"], out_space["c2.weight"], out_space["f1.weight"]
    gen = torch.Generator().manual_seed(3)
    scales = {s: torch.rand(problem.sizes[s][1], generator=gen, dtype=torch.float64) + 0.5 for s in (c1, fc)}
    d = TransformSet({s: GatherElement.monomial(torch.arange(len(c)), c) for s, c in scales.items()})
    scaled = dataclasses.replace(problem, params_b=apply(graph, problem.params_b, d, check=False))
    transforms = {s: GatherElement(torch.randperm(problem.sizes[s][1], generator=gen), problem.sizes[s][1])
                  for s in problem.spaces}
    inner, outer, whole = Matcher(scaled), Matcher(problem), Matcher(problem)
    for matcher in (inner, whole):
        for space in problem.spaces:
            matcher.local(space, transforms, stream=True)
    kept = {key: product for key, _, product, _, _ in whole.cache.kept()}
    roles = {key: inner.edges[key[0]][key[1]][0].role for key in kept}
    assert outer.adopt(inner, scales) > 0
    adopted = {key: product for key, _, product, _, _ in outer.cache.kept()}
    # c1's in-edge on c2.weight (c2 unscaled) and fc's out-edge on f1.weight (c2 unscaled): taken; c2's edges read
    # c1 (c2.weight) or fc (f1.weight) on their other axis: left
    assert {key[0] for key in adopted} == {c1, fc} and c2 in {key[0] for key in kept}, adopted.keys()
    assert {roles[key] for key in adopted} == {Role.IN, Role.OUT}
    for key, product in adopted.items():
        assert torch.allclose(product, kept[key], rtol=0, atol=1e-12 * float(kept[key].abs().max())), key


def test_the_staged_start_hands_its_products_to_the_outer_solve(monkeypatch):
    """With PermutationScaling at the fc space only (its other axis read through the unscaled conv), the float32
    permutation stage's products on balanced B serve the outer float32 solve — the same alignment as without."""
    torch.manual_seed(0)
    net_a = ConvFlat(16)
    torch.manual_seed(1)
    net_b = ConvFlat(16)
    graph = architectures.from_module(net_a, torch.zeros(1, 2, 7, 7))
    out_space = {e.parameter: e.space for s in graph.spaces() for e in graph.edges_at(s.name) if e.axis == 0}
    classes = {out_space["c1.weight"]: Permutation(), out_space["c2.weight"]: Permutation(),
               out_space["f1.weight"]: PermutationScaling()}
    taken = []
    adopt = Matcher.adopt
    monkeypatch.setattr(Matcher, "adopt", lambda self, other, scales: taken.append(adopt(self, other, scales)) or taken[-1])
    on = solvers.solve("weight_matching", graph, net_a.state_dict(), net_b.state_dict(), classes=classes, seed=0,
                       dtype=torch.float32)
    assert taken and taken[0] > 0
    monkeypatch.setattr(Matcher, "adopt", lambda self, other, scales: 0)
    off = solvers.solve("weight_matching", graph, net_a.state_dict(), net_b.state_dict(), classes=classes, seed=0,
                        dtype=torch.float32)
    assert on.iterations == off.iterations
    assert on.objective_after == pytest.approx(off.objective_after, rel=1e-5)
    for s in off.transforms:
        assert torch.equal(on.transforms[s].index, off.transforms[s].index), s
