"""Helpers for the builder tests (MLP, CNN/VGG, ResNet, GCN; extraction): admitted classes drawn
per space, random parameters with non-trivial BatchNorm statistics, outputs in eval mode, a dtype-
and conditioning-scaled comparison, and a graph surgery that splits one space in two (to show
that an untied space breaks a model)."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from architectures import WeightGraph
from conftest import RTOL
from symmetries.strategies import GROUPS


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


def max_cond(transforms) -> float:
    """Product of the condition numbers of the drawn maps (bounds the amplification of round-off)."""
    worst = 1.0
    for el in transforms.values():
        s = torch.linalg.svdvals(el.as_matrix())
        worst *= float(s[0] / s[-1])
    return worst


def relative_change(y: torch.Tensor, y2: torch.Tensor) -> float:
    return float((y - y2).abs().max()) / max(1.0, float(y.abs().max()))


def assert_same(y: torch.Tensor, y2: torch.Tensor, dtype, cond: float = 1.0) -> None:
    tol = RTOL[dtype] * cond * 10
    err = relative_change(y, y2)
    assert err <= tol, f"output changed by {err:.3e} relative (tolerance {tol:.3e})"


def assert_params_close(a: dict, b: dict, dtype, cond: float = 1.0) -> None:
    tol = RTOL[dtype] * cond * 100
    for k in a:
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
        g.connect(p, new, axis=d["axis"], role=d["role"], slice=d["slice"])
    g.validate()
    return g
