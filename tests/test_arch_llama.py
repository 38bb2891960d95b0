"""The Rotary class (group laws, commuting with every rotation, the rotate_half pairing), the Llama
builder's graph (every declared class keeps the function; undeclared ones break it), the RMSNorm
gain fold, and the rotary weight-matching subproblem."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import architectures
import solvers
import symmetries as sy
from solvers.local import Local
from solvers.rotary import rotary_update
from symmetries.roles import Role
from symmetries.testing import check_invariance

SEEDS = st.integers(0, 2**31 - 1)
FAST = settings(max_examples=12, deadline=None)


def rotation(d: int, angles, cos_scale: float = 1.0) -> torch.Tensor:
    """RoPE's rotation of a width-``d`` head: pair ``(i, i + d/2)`` by ``angles[i]`` (cos/sin optionally
    scaled, as HF's ``attention_scaling`` does)."""
    c, s = torch.cos(angles) * cos_scale, torch.sin(angles) * cos_scale
    return sy.RotaryElement(c, s).as_matrix()


# -- the class -------------------------------------------------------------------------------------
@FAST
@given(seed=SEEDS, pairs=st.integers(1, 6))
def test_rotary_group_laws(seed, pairs):
    cls, d = sy.Rotary(), 2 * pairs
    a, b = cls.random(d, seed=seed), cls.random(d, seed=seed + 1)
    x = torch.randn(d, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    for role in ("out", "in"):
        ab = (a @ b).apply(x, 0, role)
        assert torch.allclose(ab, a.apply(b.apply(x, 0, role), 0, role), atol=1e-12)
        assert torch.allclose(a.inverse().apply(a.apply(x, 0, role), 0, role), x, atol=1e-12)
        assert torch.allclose(cls.identity(d).apply(x, 0, role), x, atol=0)
    assert torch.allclose((a @ b).as_matrix(), a.as_matrix() @ b.as_matrix(), atol=1e-12)
    assert torch.allclose(a.in_matrix() @ a.as_matrix(), torch.eye(d, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(a.apply(x, 0, "in"), torch.einsum("ji,jkl->ikl", a.in_matrix(), x), atol=1e-12)
    for el in (a, b, a @ b, a.inverse(), cls.identity(d)):
        assert cls.contains(el.as_matrix()) and cls.contains_element(el)
    assert torch.allclose((a @ b).as_matrix(), (b @ a).as_matrix(), atol=1e-12)  # commutative
    f32 = a.to(dtype=torch.float32)
    y = f32.apply(x.float(), 0, "out")
    assert torch.allclose(f32.inverse().apply(y, 0, "out"), x.float(), atol=1e-5)
    assert cls.contains_element(f32)


@FAST
@given(seed=SEEDS)
def test_rotary_maps_commute_with_every_rotation(seed):
    """``Aᵀ R A⁻ᵀ = R`` for every rotation (and any cos/sin values): the score qᵀ R k is kept."""
    g = torch.Generator().manual_seed(seed)
    a = sy.Rotary().random(8, seed=seed).as_matrix()
    angles = torch.rand(4, generator=g, dtype=torch.float64) * 100
    r = rotation(8, angles, cos_scale=1.3)
    assert torch.allclose(a.T @ r @ torch.linalg.inv(a).T, r, atol=1e-12)
    assert torch.allclose(a @ r, r @ a, atol=1e-12)


def test_only_rotary_maps_commute_and_the_layout_is_rotate_half():
    """A generic invertible map, and the same scaled rotations on interleaved pairs (2i, 2i+1), do not
    commute with RoPE's rotations in HF's rotate_half layout; the class refuses them."""
    r = rotation(8, torch.tensor([0.3, 0.1, 0.03, 0.01], dtype=torch.float64))
    inv = sy.Invertible().random(8, seed=0).as_matrix()
    assert (inv @ r - r @ inv).abs().max() > 1e-3
    rot = sy.Rotary().random(8, seed=1).as_matrix()
    perm = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])            # interleaved layout (GPT-J/NeoX style)
    inter = rot[perm][:, perm]
    assert (inter @ r - r @ inter).abs().max() > 1e-3
    assert not sy.Rotary().contains(inter) and not sy.Rotary().contains(inv)
    assert not sy.Rotary().contains(torch.zeros(8, 8)) and not sy.Rotary().contains(torch.eye(7))
    with pytest.raises(sy.errors.ElementShapeError):
        sy.Rotary().random(7)
    with pytest.raises(sy.errors.InvalidElementError):
        sy.RotaryElement(torch.zeros(3))


def test_rotary_in_the_lattice():
    R = sy.Rotary()
    assert sy.lattice.is_subclass(R, sy.Invertible()) and not sy.lattice.is_subclass(R, sy.Orthogonal())
    assert not sy.lattice.is_subclass(sy.Permutation(), R) and sy.lattice.is_subclass(sy.Trivial(), R)
    assert sy.lattice.is_subclass(sy.HeadStructured(2, R), sy.HeadStructured(2, sy.Invertible()))
    assert sy.parse_class("rotary") == R and solvers.get("weight_matching").supports(sy.HeadStructured(2, R))


# -- the builder -----------------------------------------------------------------------------------
CONFIGS = {
    "mha": dict(n_kv_heads=2),
    "gqa-grouped": dict(n_kv_heads=2, n_heads=4),
    "gqa-grouped-r4": dict(n_kv_heads=2, n_heads=8, d_head=4, qkv_bias=True),
    "gqa-heads": dict(n_kv_heads=2, n_heads=4, gqa="heads"),
    "gqa-maps": dict(n_kv_heads=2, n_heads=4, gqa="maps"),
    "mqa-biases-tied": dict(n_kv_heads=1, n_heads=2, qkv_bias=True, o_bias=True, mlp_bias=True,
                            tie_embeddings=True),
    "window": dict(n_kv_heads=2, sliding_window=3),
}


def build(name, **extra):
    kw = {"n_heads": 2, **CONFIGS[name], **extra}
    return architectures.llama(13, 16, kw.pop("n_heads"), kw.pop("n_kv_heads"), 2, 24, 7, **kw)


def run(arch, params, ids, dtype=torch.float64):
    m = arch.module(dtype=dtype)
    m.load_state_dict(params)
    with torch.no_grad():
        return m(ids)


def params_of(arch, seed=0, dtype=torch.float64):
    return {k: v.detach().clone() for k, v in arch.module(seed=seed, dtype=dtype).state_dict().items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=6, deadline=None)
@given(seed=SEEDS)
def test_every_declared_class_keeps_the_function(name, seed):
    arch = build(name)
    p, ids = params_of(arch), arch.example_inputs(3)
    y = run(arch, p, ids)
    t = sy.random_transforms(arch.graph, seed=seed)
    assert float((run(arch, sy.apply(arch.graph, p, t), ids) - y).abs().max()) < 1e-10 * (1 + float(y.abs().max()))
    p32 = {k: v.float() for k, v in p.items()}
    y32 = run(arch, p32, ids, torch.float32)
    moved = sy.apply(arch.graph, p32, t.to(dtype=torch.float32))
    assert float((run(arch, moved, ids, torch.float32) - y32).abs().max()) < 1e-4 * (1 + float(y32.abs().max()))


@pytest.mark.parametrize("name", ["gqa-grouped", "gqa-grouped-r4", "mqa-biases-tied"])
def test_check_invariance_of_the_grouped_graph(name):
    """symmetries.testing.check_invariance (every declared class, each space alone and jointly, at a
    perturbed point) in float64 on the grouped-query graphs, and with the head permutation alone."""
    arch = build(name)
    report = check_invariance(arch, example_inputs=arch.example_inputs(2), dtype=torch.float64, examples=2)
    assert report.passed, [str(c) for c in report.failures]
    g = arch.config["n_kv_heads"]
    heads = {s.name: sy.HeadStructured(g, sy.Trivial()) for s in arch.graph.spaces() if s.head_group}
    report = check_invariance(arch, example_inputs=arch.example_inputs(2), dtype=torch.float64, examples=2,
                              classes=heads, spaces=sorted(heads))
    assert report.passed, [str(c) for c in report.failures]


def test_graph_spaces_and_classes():
    g = build("mha").graph
    assert g.space("layers.0.attn.qk").classes == (sy.HeadStructured(2, sy.Rotary()),)
    assert g.space("layers.0.attn.vo").classes == (sy.HeadStructured(2, sy.Invertible()),)
    assert g.space("residual").classes == (sy.Permutation(),) and g.space("layers.0.mlp").activation == "silu"
    g = build("gqa-maps").graph
    assert g.space("layers.1.attn.qk.1").classes == (sy.Rotary(),) and g.space("layers.1.attn.vo.0").size == 4
    g = build("gqa-heads").graph
    assert g.space("layers.0.attn.q").size == 16 and g.space("layers.0.attn.kv").size == 8
    g = build("gqa-grouped").graph          # the default: G = 2 groups of R = 2 query heads of width 4
    assert g.space("layers.0.attn.qk").classes == (sy.HeadStructured(2, sy.Rotary()),)
    assert g.space("layers.0.attn.vo").classes == (sy.HeadStructured(2, sy.Invertible()),)
    assert g.space("layers.0.attn.qk").size == g.space("layers.0.attn.vo").size == 8
    repeats = {(e.parameter.split(".")[-2], e.axis): e.repeat for s in ("qk", "vo")
               for e in g.edges_at(f"layers.0.attn.{s}")}
    assert repeats == {("q_proj", 0): (2, 4), ("k_proj", 0): None, ("v_proj", 0): None, ("o_proj", 1): (2, 4)}
    assert all(e.repeat is None for e in build("mha").graph.edges())      # G = H: plain edges
    with pytest.raises(ValueError, match="gqa"):
        architectures.llama(13, 16, 4, 2, 1, 8, 4, gqa="full")
    with pytest.raises(ValueError):
        architectures.llama(13, 15, 3, 3, 1, 8, 4)      # odd head width: no rotary pairs
    with pytest.raises(ValueError):
        architectures.llama(13, 16, 4, 3, 1, 8, 4)


def _moved(arch, p, ids, **transforms):
    return float((run(arch, sy.apply(arch.graph, p, transforms, check=False), ids) - run(arch, p, ids)).abs().max())


def test_undeclared_maps_change_the_function():
    """What the graph refuses is not a symmetry: Invertible on a rotary head, different rotary maps for
    two query heads of one key group, Orthogonal on the un-folded residual, scalings of SiLU units."""
    arch = build("mha")
    p, ids = params_of(arch), arch.example_inputs(2)
    qk = sy.HeadStructured(2, sy.Invertible()).random(16, seed=0)
    assert _moved(arch, p, ids, **{"layers.0.attn.qk": qk}) > 1e-3
    assert _moved(arch, p, ids, residual=sy.Orthogonal().random(16, seed=0)) > 1e-3
    assert _moved(arch, p, ids, **{"layers.0.mlp": sy.PositiveScaling().random(24, seed=0)}) > 1e-3
    gqa = build("gqa-maps")
    p, ids = params_of(gqa), gqa.example_inputs(2)
    a, b = sy.Rotary().random(4, seed=1), sy.Rotary().random(4, seed=2)
    q = p["model.layers.0.self_attn.q_proj.weight"].clone()
    q[:4] = a.apply(q[:4], 0, "out")                      # query head 0 of group 0 by A, head 1 by B,
    q[4:8] = b.apply(q[4:8], 0, "out")                    # key head 0 by A⁻ᵀ: head 1's scores change
    k = p["model.layers.0.self_attn.k_proj.weight"].clone()
    k[:4] = a.apply(k[:4], 0, "in")
    broken = dict(p, **{"model.layers.0.self_attn.q_proj.weight": q, "model.layers.0.self_attn.k_proj.weight": k})
    assert float((run(gqa, broken, ids) - run(gqa, p, ids)).abs().max()) > 1e-3


def _relayout(graph, repeat):
    """A copy of ``graph`` whose ``q`` rows and ``o`` columns hold the group spaces with ``repeat``."""
    g = graph.copy()
    for pname, space, key, d in list(g.nx.edges(keys=True, data=True)):
        if d.get("repeat") is not None:
            g.nx.remove_edge(pname, space, key=key)
            g.connect(pname, space, axis=d["axis"], role=d["role"], repeat=repeat)
    return g.validate()


def test_grouped_layout_is_repeat_interleave():
    """The grouped graph's repeat ``(R, d)`` is HF's ``repeat_kv`` layout ``(G, R, d)``; read as a tile
    ``(R, G·d)`` (``x.repeat(R)``, the layout of another model) a random map changes the function, and
    so does a map on the ``q`` rows' first group copy only."""
    arch = build("gqa-grouped")
    p, ids = params_of(arch), arch.example_inputs(2)
    y = run(arch, p, ids)
    for seed in range(3):
        t = sy.random_transforms(arch.graph, seed=seed)
        assert float((run(arch, sy.apply(arch.graph, p, t), ids) - y).abs().max()) < 1e-10
        tile = _relayout(arch.graph, (2, 8))
        assert float((run(arch, sy.apply(tile, p, t, check=False), ids) - y).abs().max()) > 1e-3
    qk = sy.tie_heads(arch.graph, {"layers.0.attn.qk": sy.HeadStructured(2, sy.Rotary()).random(8, seed=4)})
    plain = sy.apply(arch.graph, p, qk)
    q = p["model.layers.0.self_attn.q_proj.weight"].clone()
    q[:4] = plain["model.layers.0.self_attn.q_proj.weight"][:4]   # query head 0 moved, head 1 of group 0 not
    broken = dict(plain, **{"model.layers.0.self_attn.q_proj.weight": q})
    assert float((run(arch, broken, ids) - y).abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["gqa-grouped", "gqa-grouped-r4"])
def test_query_heads_within_a_group_are_exact_but_not_declared(name):
    """What the grouped graph leaves out is a true symmetry: permuting the query heads inside a group
    (``q`` rows and ``o`` columns together) keeps the function — and it is not in the graph's group,
    which moves the ``q`` rows only through the group's space."""
    arch = build(name)
    cfg = arch.config
    h, g, dh = cfg["n_heads"], cfg["n_kv_heads"], cfg["d_head"]
    r = h // g
    p, ids = params_of(arch), arch.example_inputs(2)
    y = run(arch, p, ids)
    heads = torch.arange(h).reshape(g, r).flip(1).reshape(-1)      # reverse the query heads of each group
    rows = (heads[:, None] * dh + torch.arange(dh)).reshape(-1)
    moved = dict(p)
    for name_, axis in (("q_proj.weight", 0), ("q_proj.bias", 0), ("o_proj.weight", 1)):
        key = f"model.layers.0.self_attn.{name_}"
        if key in moved:
            moved[key] = moved[key].index_select(axis, rows)
    assert float((run(arch, moved, ids) - y).abs().max()) < 1e-10
    assert float((run(arch, dict(p, **{k: moved[k] for k in moved if "o_proj" in k}), ids) - y).abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["mha", "gqa-grouped", "gqa-heads", "mqa-biases-tied"])
def test_fold_rmsnorm_keeps_the_function_and_admits_orthogonal(name):
    arch = build(name)
    p, ids = params_of(arch, seed=3), arch.example_inputs(2)
    y = run(arch, p, ids)
    folded, fp = architectures.fold_rmsnorm(arch, p)
    assert folded.graph.admits("residual", sy.Orthogonal()) and not arch.graph.admits("residual", sy.Orthogonal())
    assert float((run(folded, fp, ids) - y).abs().max()) < 1e-12 * (1 + float(y.abs().max()))
    for seed in range(3):
        t = sy.random_transforms(folded.graph, seed=seed)
        assert isinstance(t["residual"], sy.DenseElement)
        assert float((run(folded, sy.apply(folded.graph, fp, t), ids) - y).abs().max()) < 1e-10
    with pytest.raises(ValueError):
        architectures.fold_rmsnorm(folded, fp)


# -- the subproblem --------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, roles=st.sampled_from([("out",), ("in",), ("out", "in")]))
def test_rotary_subproblem_recovers_a_planted_map(seed, roles):
    g = torch.Generator().manual_seed(seed)
    planted = sy.Rotary().random(8, seed=seed, cond=100)
    local = Local(8, 8)
    for role in roles:
        b = torch.randn(8, 6, generator=g, dtype=torch.float64)
        local.add(Role.parse(role), planted.act(b, role), b)
    found = rotary_update(local)
    assert local.loss(found) < 1e-18 and found.allclose(planted, atol=1e-8)


@pytest.mark.parametrize("name", ["mha", "gqa-grouped", "gqa-grouped-r4", "mqa-biases-tied"])
def test_weight_matching_undoes_planted_rotary_heads(name):
    """B = planted (head permutation × per-group Rotary maps, on the repeated ``q`` rows for G < H; with
    permutations of the residual and MLP units) · A: weight matching recovers it, J → 0."""
    arch = build(name)
    a = params_of(arch, seed=0)
    ids = arch.example_inputs(2)
    g, dh = arch.config["n_kv_heads"], arch.config["d_head"]
    qk = [f"layers.{i}.attn.qk" for i in range(2)]
    els = {s: sy.HeadStructured(g, sy.Rotary()).random(g * dh, seed=i) for i, s in enumerate(qk)}
    els.update({"residual": sy.Permutation().random(16, seed=5),
                **{f"layers.{i}.mlp": sy.Permutation().random(24, seed=6 + i) for i in range(2)}})
    planted = sy.tie_heads(arch.graph, els)
    b = sy.apply(arch.graph, a, planted)
    sol = solvers.solve("weight_matching", arch.graph, a, b, seed=0)
    assert sol.objective_after < 1e-16 * sol.objective_before
    assert math.isfinite(sol.objective_after)
    aligned = sy.apply(arch.graph, b, sol.transforms)
    assert float((run(arch, aligned, ids) - run(arch, a, ids)).abs().max()) < 1e-10
    undo = sy.apply(arch.graph, a, sol.transforms.inverse() if hasattr(sol.transforms, "inverse") else
                    {k: v.inverse() for k, v in sol.transforms.items()})
    assert max(float((undo[k] - b[k]).abs().max()) for k in a) < 1e-8
