"""Helpers for the builder tests (MLP, CNN/VGG, ResNet, GCN, transformers; extraction): admitted
classes drawn per space, random parameters with non-trivial BatchNorm statistics, outputs in eval
mode, a dtype- and conditioning-scaled comparison (the round-off factor of a transform:
:func:`max_cond`, :func:`param_conds`), and a graph surgery that splits one space in two (to show
that an untied space breaks a model)."""
from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from architectures import WeightGraph
from conftest import RTOL
from symmetries.testing.strategies import GROUPS


def randomize(arch, seed: int, dtype=torch.float64, var_range=(1e-3, 1e-1)) -> dict:
    """A fresh state dict of ``arch`` with every float tensor perturbed — BatchNorm gains, biases,
    running means and (positive) running variances included, so that a wrong action on any of
    them shows in the output. Running variances default to [1e-3, 0.1] so that BatchNorm's ε = 1e-5
    matters (a scaling across BatchNorm then changes the output by far more than round-off)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in arch.module(seed=seed, dtype=dtype).state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            lo, hi = var_range
            out[k] = (lo + (hi - lo) * torch.rand(v.shape, generator=g, dtype=torch.float64)).to(dtype)
        else:
            out[k] = v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype)
    for k in out:  # BatchNorm gains γ ≈ √v so that γ/√(v + ε) stays near 1 through deep stacks
        stem = k[:-len("weight")]
        if k.endswith("weight") and stem + "running_var" in out:
            out[k] = out[k] * out[stem + "running_var"].sqrt()
    return out


def outputs(arch, params, *inputs, dtype=torch.float64, bn_eps: float | None = None, train: bool = False):
    """The module's output on ``inputs`` with ``params`` loaded (eval mode unless ``train``)."""
    m = arch.module(dtype=dtype)
    m.load_state_dict(params)
    if bn_eps is not None:
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eps = bn_eps
    m.train(train)
    with torch.no_grad():
        return m(*[x.to(dtype) if x.is_floating_point() else x for x in inputs])


def admitted_classes(data, graph) -> dict:
    """Draw, per space of ``graph``, one of the concrete groups it admits (``data`` is ``st.data()``)."""
    return {s.name: data.draw(st.sampled_from([c for c in GROUPS if graph.admits(s.name, c)]), label=s.name)
            for s in graph.spaces()}


def cond(element) -> float:
    """The 2-norm condition number of one drawn map."""
    s = torch.linalg.svdvals(element.as_matrix().to(torch.float64))
    return float(s[0] / s[-1])


# How round-off propagates through a transformed network. A weight W that reads space a and
# writes space b becomes W' = T_b W T_a⁻¹; the transformed network computes h'_l = T_l h_l. Map the
# errors of the transformed computation back to the original coordinates (multiply by T_l⁻¹):
#   * the rounding of W' itself and of the product W' h' at layer l has size u·‖W'‖‖h'‖, which is
#     ≤ u·κ(T_b)·κ(T_a)·‖W‖‖h‖ once mapped back — one factor per space the tensor touches;
#   * an error already in h'_{l-1} crosses W' as T_b W T_a⁻¹ e, i.e. back in the original
#     coordinates it crosses the original W: no new factor.
# So to first order each layer adds its own error, amplified by the product of the conditions of
# the (at most two) spaces its tensors touch, and the errors then travel through the *original*
# network. The total is Σ_l s_l·u·c_l ≤ max_l c_l · Σ_l s_l·u, where Σ_l s_l·u is the round-off of
# the untransformed network, which RTOL covers. The factor is therefore the maximum over tensors of
# the product of the conditions of the spaces it touches — not the product over every space, which
# for κ ≈ 5–10 per space and five spaces made float32 tolerances ≈ 1 relative (a check that could
# not fail). With this factor the checks compare outputs to RTOL·factor and round-tripped
# parameters to 10·RTOL·factor (they used 10× and 100× the old product): over several thousand
# draws and hypothesis seeds the worst error stays below 1/10 of the tolerance.
def param_conds(graph, transforms) -> dict[str, float]:
    """Per parameter of ``graph``: the product, over the axes its edges index, of the largest
    condition number among the maps on that axis (slices of one axis are separate blocks of rows,
    each mapped back by its own space's inverse; a ``var`` edge squares its map, so its condition)."""
    conds = {name: cond(el) for name, el in transforms.items()}
    out = {}
    for p in graph.parameters():
        per_axis: dict[int, float] = {}
        for e in graph.edges_of(p.name):
            if e.space not in conds:
                continue
            axis = e.axis % len(p.shape) if p.shape else e.axis
            c = conds[e.space] ** 2 if e.role.value == "var" else conds[e.space]
            per_axis[axis] = max(per_axis.get(axis, 1.0), c)
        out[p.name] = math.prod(per_axis.values())
    return out


def max_cond(transforms, graph=None) -> float:
    """The factor by which transforming a network with ``transforms`` can amplify round-off: the
    largest product of condition numbers over the spaces one tensor of ``graph`` touches (see the
    comment above). Without ``graph``: the product of the two largest conditions, an upper bound
    for every graph in which no tensor indexes spaces on more than two axes (every builder's)."""
    if graph is not None:
        return max(param_conds(graph, transforms).values(), default=1.0)
    worst = sorted((cond(el) for el in transforms.values()), reverse=True)[:2]
    return math.prod(worst) if worst else 1.0


def relative_change(y: torch.Tensor, y2: torch.Tensor) -> float:
    return float((y - y2).abs().max()) / max(1.0, float(y.abs().max()))


def assert_same(y: torch.Tensor, y2: torch.Tensor, dtype, cond: float = 1.0) -> None:
    tol = RTOL[dtype] * cond
    err = relative_change(y, y2)
    assert err <= tol, f"output changed by {err:.3e} relative (tolerance {tol:.3e})"


def assert_params_close(a: dict, b: dict, dtype, cond: float | dict = 1.0) -> None:
    """``a`` and ``b`` agree to round-off: ``cond`` is one factor, or one per parameter
    (:func:`param_conds` — a round trip ``T_b⁻¹ (T_b W T_a⁻¹) T_a`` loses ``κ(T_b)·κ(T_a)``)."""
    for k in a:
        tol = RTOL[dtype] * (cond.get(k, 1.0) if isinstance(cond, dict) else cond) * 10
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=lambda m, k=k: f"{k}: {m}")


def split_space(graph: WeightGraph, space: str, parameters) -> WeightGraph:
    """A copy of ``graph`` in which the edges of ``parameters`` at ``space`` go to a new space
    ``space + "'"`` of the same size and classes — the mistake of leaving part of a residual
    stream untied."""
    g = graph.copy()
    s = g.space(space)
    new = space + "'"
    g.add_space(new, s.size, s.classes, activation=s.activation)
    moved = [(p, sp, k, d) for p, sp, k, d in g.nx.edges(keys=True, data=True) if sp == space and p in parameters]
    assert moved, f"none of {parameters} touches {space}"
    for p, sp, k, d in moved:
        g.nx.remove_edge(p, sp, key=k)
        g.connect(p, new, axis=d["axis"], role=d["role"], slice=d["slice"], repeat=d.get("repeat"))
    g.validate()
    return g


def planted_alignment(model, graph, inputs, seed: int = 0, solver: str = "weight_matching") -> tuple[float, float]:
    """Plant ``B = T·A`` (``A`` the model's parameters, ``T`` drawn in the classes ``solver`` searches),
    align ``B`` back with ``solver`` and return ``(objective_after / objective_before, relative output
    change of the aligned B against A)`` — both round-off when the graph is right and the solver
    undoes the plant."""
    import copy

    import solvers
    import symmetries as sy
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    classes = sy.resolve_classes(graph, None, solver=solvers.get(solver))
    b = sy.apply(graph, a, sy.random_transforms(graph, seed, classes=classes))
    sol = solvers.solve(solver, graph, a, b, seed=seed)
    aligned = sol.apply(b)
    m = copy.deepcopy(model).eval()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    with torch.no_grad():
        y = m(*inputs)
        m.load_state_dict(aligned)
        y2 = m(*inputs)
    return sol.objective_after / max(sol.objective_before, 1e-300), relative_change(y, y2)


def perturb_norms(model):
    """``model`` with non-trivial BatchNorm statistics and BatchNorm/LayerNorm gains and biases (in
    place), so that a wrong action on any of them shows in the output; returns ``model``."""
    from torch import nn
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
            if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and mod.weight is not None:
                mod.weight.normal_()
                mod.bias.normal_()
    return model


def output_change(model, graph, inputs, elements) -> float:
    """The relative output change of ``model`` after ``elements`` (applied without the admission or tie
    checks: to show that a map a graph does not admit breaks the function); the model is restored."""
    import symmetries as sy
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    moved = sy.apply(graph, params, elements, check=False)
    with torch.no_grad():
        y = model(*inputs)
        model.load_state_dict(moved)
        y2 = model(*inputs)
        model.load_state_dict(params)
    return relative_change(y, y2)
