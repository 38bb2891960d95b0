"""The canonical input every solver receives: a validated, standardised ``Problem``.

A problem asks for a transform set ``T`` (one element per space, mapping B's width to A's)
that aligns model B to model A. The reference objective of every weight-space solver is

    J(T) = Σ_p ‖θ_A[p] − (T·θ_B)[p]‖²        (sum over every floating tensor of the state dict)

:func:`make_problem` checks everything at the door (the ``standardize_*`` step of
``scipy.optimize.minimize``) so that algorithms receive canonical input.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from symmetries.action import apply
from symmetries.classes import SymmetryClass, Trivial
from symmetries.graph import WeightGraph
from symmetries.elements import HeadElement
from symmetries.errors import ElementShapeError, UnknownSpaceError
from symmetries.policy import resolve_classes
from symmetries.transforms import TransformSet

from symmetries._args import integer

from solvers.errors import SolverInputError
from solvers.stream import LazyParams, check_streamable, meta_params
from symmetries.action import apply_axis
from symmetries.blocks import merged_block

__all__ = ["Problem", "make_problem", "PROBLEM_OPTIONS", "as_batches"]

#: Keyword options of :func:`solvers.solve` that build the problem (the rest go to the solver).
PROBLEM_OPTIONS = ("classes", "init", "seed", "device", "dtype", "data", "models", "sites", "graph_b", "lazy")


@dataclass(frozen=True)
class Problem:
    """Align B to A. ``classes[s]`` is the class searched at space ``s``; ``sizes[s] = (m, n)``
    are A's and B's widths there (``m > n`` for width-changing problems, whose B is described by
    ``graph_b``). ``data``/``models``/``sites`` serve data-driven solvers (activation matching)."""
    graph: WeightGraph
    params_a: dict[str, torch.Tensor]
    params_b: dict[str, torch.Tensor]
    classes: dict[str, SymmetryClass]
    graph_b: WeightGraph
    sizes: dict[str, tuple[int, int]]
    init: TransformSet | None = None
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float64
    data: Any = None
    models: tuple | None = None
    sites: dict[str, str] | None = None
    lazy: bool = False

    def shape(self, name: str, side: str = "b") -> tuple[int, ...]:
        """The shape of tensor ``name`` of model ``side`` (``"a"``/``"b"``), without reading it when lazy."""
        params = self.params_a if side == "a" else self.params_b
        return tuple(params.shape(name)) if self.lazy else tuple(params[name].shape)

    @property
    def spaces(self) -> list[str]:
        """Spaces searched (those whose class is not ``Trivial``), in graph order."""
        return [s for s, c in self.classes.items() if not isinstance(c, Trivial)]

    @property
    def width_changing(self) -> bool:
        return any(m != n for m, n in self.sizes.values())

    def aligned(self, transforms: TransformSet) -> dict[str, torch.Tensor]:
        """``T · θ_B`` (B's parameters moved into A's basis)."""
        return apply(self.graph_b, self.params_b, transforms, check=False)

    def objective(self, transforms: TransformSet | None, parameters=None) -> float | None:
        """``J(T) = Σ_p ‖θ_A[p] − (T·θ_B)[p]‖²``; ``None`` if ``T`` is ``None`` and widths differ.
        ``parameters``: sum over these tensors only (default: every floating tensor). Tensor by tensor
        (a lazy problem reads each pair once and drops it)."""
        if transforms is None:
            if self.width_changing:
                return None
            transforms = TransformSet()
        total = 0.0
        names = self.params_a if parameters is None else parameters
        for name in names:  # one tensor (or chunk) at a time: no aligned copy of the model
            if self.lazy:  # shapes from the metadata; a tensor is read whole, or in blocks of rows below
                if not self.params_a.is_floating(name):
                    continue
                a = b = None
                shape = self.params_b.shape(name)
            else:
                a = self.params_a[name]
                if not a.is_floating_point():
                    continue
                b = self.params_b[name]
                shape = tuple(b.shape)
            dim = len(shape)
            by_axis: dict[int, list] = {}
            for e in self.graph_b.edges_of(name):
                if e.space in transforms and dim:
                    by_axis.setdefault(e.axis % dim, []).append(e)
            touched = set(by_axis)
            free = [ax for ax in range(dim) if ax not in touched]
            if self.lazy and (not touched or not free or free[0] != 0):
                a, b = self.params_a[name], self.params_b[name]
            if not touched:
                total += float(torch.linalg.vector_norm(a - b) ** 2)
                continue
            ax = free[0] if free else 0
            size = shape[ax] if dim else 1
            numel = 1
            for s in shape:
                numel *= s
            step = max(1, (1 << 20) // max(1, numel // max(size, 1))) if free else size
            for start in range(0, size, step):  # chunks along an axis no transform touches
                if b is None:  # streamed, the first axis free: read only these rows
                    stop = min(size, start + step)
                    chunk_a, chunk_b = self.params_a.rows(name, start, stop), self.params_b.rows(name, start, stop)
                else:
                    chunk_b = b.narrow(ax, start, min(step, size - start)) if free else b
                    chunk_a = a.narrow(ax, start, chunk_b.shape[ax]) if free else a
                aligned = chunk_b
                for axis, group in by_axis.items():
                    aligned = apply_axis(aligned, axis, group, transforms)
                total += float(torch.linalg.vector_norm(chunk_a - aligned) ** 2)
                del chunk_a, chunk_b, aligned
        return total


def _tensor(x, name: str, dtype, device) -> torch.Tensor:
    t = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else np.asarray(x))
    if t.is_floating_point():
        t = t.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(t).all()):
            raise SolverInputError(f"parameter {name!r} contains NaN or infinite entries", parameter=name)
    return t


def _working_dtype(dtype) -> torch.dtype | None:
    """``dtype`` if it is float32 or float64; half precision is refused (its range and round-off break the
    score matrices: 'assignment score matrix contains NaN'); half-precision *models* compute in float32."""
    if dtype is None or dtype in (torch.float32, torch.float64):
        return dtype
    raise SolverInputError(f"dtype={dtype!r}: solvers compute in torch.float32 or torch.float64 (half-precision "
                           f"overflows and rounds the score matrices); leave dtype unset — float16/bfloat16 models "
                           f"are computed in float32 — or pass torch.float32")


def _device(device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else a :class:`SolverInputError`."""
    if device is None:
        return torch.device("cpu")
    try:
        d = torch.device(device)
        torch.empty(0, device=d)
    except (RuntimeError, TypeError, AssertionError) as exc:  # torch says 'not compiled with CUDA' by assert
        raise SolverInputError(f"device={device!r} is not available on this machine: {exc}") from None
    return d


def _check_range(params: dict, side: str, dtype: torch.dtype) -> None:
    """Refuse a model whose squared norm — the scale of every objective and score — overflows ``dtype``
    (the objective would be inf) or underflows it to zero (every transform would score 0: 'converged'
    at the identity)."""
    total, peak, name_peak = 0.0, 0.0, None
    for name, t in params.items():
        if not t.is_floating_point() or not t.numel():
            continue
        sq = float(torch.linalg.vector_norm(t) ** 2)
        top = float(t.abs().max())
        if top > peak:
            peak, name_peak = top, name
        if not math.isfinite(sq):
            total = math.inf
            break
        total += sq
    info = torch.finfo(dtype)
    if total > info.max:
        raise SolverInputError(f"model {side} overflows {dtype}: the sum of its squared entries exceeds {info.max:.3g} "
                               f"(largest |entry| {peak:.3g}, in parameter {name_peak!r}); the objective would be "
                               f"infinite — pass dtype=torch.float64 or rescale the model", parameter=name_peak)
    if peak > 0 and total < info.tiny:
        raise SolverInputError(f"model {side} underflows {dtype}: its squared entries sum to less than {info.tiny:.3g} "
                               f"(largest |entry| {peak:.3g}, in parameter {name_peak!r}); every transform would "
                               f"score the same — pass dtype=torch.float64 or rescale the model", parameter=name_peak)


def _float64(el) -> bool:
    """Whether an element's stored numbers are float64 (else membership allows single-precision round-off)."""
    if isinstance(el, HeadElement):
        return all(_float64(e) for e in el.inner)
    matrix = getattr(el, "matrix", None)
    return matrix is None or matrix.dtype == torch.float64


def _common_dtype(*param_sets) -> torch.dtype:
    dtypes = [torch.as_tensor(v).dtype for p in param_sets for v in p.values()
              if torch.as_tensor(v).is_floating_point()]
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, d)
    return out if out in (torch.float32, torch.float64) else torch.float32


def make_problem(graph, params_a: Mapping, params_b: Mapping, *, classes=None, init=None, seed: int = 0,
                 device=None, dtype=None, data=None, models=None, sites=None, graph_b=None, solver=None,
                 lazy: bool = False) -> Problem:
    """Validate and standardise a problem.

    ``graph`` — A's weight graph (or an ``Architecture``, whose ``.graph`` is used and which lets
    data-driven solvers build the modules); ``graph_b`` — B's graph when widths differ (same
    parameter and space names, narrower spaces); ``classes`` — one class spec for every space or a
    mapping ``space → spec`` read by :func:`symmetries.resolve_classes` (an instance, a class type
    or a name); unnamed spaces take the standard class ``solver`` searches (the declared default
    group without a solver); each must be admitted by its space (lattice), else
    :class:`~symmetries.errors.NotAdmittedError`. ``init`` — a starting
    transform set; ``dtype`` — floating dtype of the computation (default: the inputs', at least
    float32); ``models`` — ``(module_a, module_b)`` for activation matching; ``lazy`` — keep A and B
    as :class:`solvers.stream.LazyParams` (read a tensor when a solver asks for it; shapes validated from
    the sources' metadata, finiteness checked as each tensor is first read), for solvers that stream.
    """
    architecture = None
    if hasattr(graph, "graph") and hasattr(graph, "module"):
        architecture, graph = graph, graph.graph
    if graph_b is not None and hasattr(graph_b, "graph") and hasattr(graph_b, "module"):
        graph_b = graph_b.graph
    if not isinstance(params_a, Mapping) or not isinstance(params_b, Mapping):
        raise TypeError("params_a and params_b must be mappings name → tensor (a state_dict works)")
    if lazy:
        _check_lazy(solver, data, models)
        sources = (params_a, params_b)
        params_a, params_b = meta_params(params_a), meta_params(params_b)  # shapes and dtypes: nothing is read
    graph.validate(params_a)
    gb = graph if graph_b is None else graph_b
    gb.validate(params_b)
    if graph_b is not None:
        if {p.name for p in graph_b.parameters()} != {p.name for p in graph.parameters()}:
            raise SolverInputError("graph_b must declare the same parameters as graph")
        if {s.name for s in graph_b.spaces()} != {s.name for s in graph.spaces()}:
            raise SolverInputError("graph_b must declare the same spaces as graph")
    seed = integer("seed", seed, 0, error=SolverInputError)
    dtype = _working_dtype(dtype) or _common_dtype(params_a, params_b)
    device = _device(device)
    if lazy:  # the range check needs every tensor: a streamed J that overflows fails the solution instead
        pa, pb = (LazyParams(src, dtype=dtype, device=device, side=side) for src, side in zip(sources, "AB"))
        meta_a, meta_b = params_a, params_b
    else:
        pa = meta_a = {k: _tensor(v, k, dtype, device) for k, v in params_a.items()}
        pb = meta_b = {k: _tensor(v, k, dtype, device) for k, v in params_b.items()}
        _check_range(pa, "A", dtype)
        _check_range(pb, "B", dtype)
    for name in pa:  # a solver computes with every tensor a space touches: those must be floating
        for params, g, side in ((meta_a, graph, "A"), (meta_b, gb, "B")):
            if not params[name].is_floating_point() and g.edges_of(name):
                raise SolverInputError(f"parameter {name!r} of model {side} is a {params[name].dtype} tensor but space "
                                       f"{g.edges_of(name)[0].space!r} acts on it; convert it to a floating dtype "
                                       f"(non-floating tensors are allowed only where no space acts)", parameter=name)
    widening = {s.name: gb.space(s.name).size != s.size for s in graph.spaces()}
    chosen = resolve_classes(graph, classes, solver=solver, widening=widening)
    sizes = {s.name: (s.size, gb.space(s.name).size) for s in graph.spaces()}
    if graph_b is not None:
        _check_repeats(graph, gb, sizes)
    for name, (m, n) in sizes.items():
        cls = chosen[name]
        if m < n:
            raise SolverInputError(f"space {name!r}: B is wider ({n}) than A ({m}); align the narrow model into "
                                   f"the wide one (swap A and B)", space=name)
        if m != n and not cls.rectangular:
            raise SolverInputError(f"space {name!r} changes width ({n} → {m}) but {cls!r} maps a space to itself; "
                                   f"use SemiPermutation or Orthogonal there", space=name)
    if init is not None:
        init = init if isinstance(init, TransformSet) else TransformSet(init)
        for name, el in init.items():
            if name not in sizes:
                raise UnknownSpaceError(f"initial transform for unknown space {name!r}", space=name)
            if tuple(el.shape) != sizes[name]:
                raise ElementShapeError(f"initial transform for space {name!r} has shape {tuple(el.shape)}, "
                                        f"expected {sizes[name]} (A's width × B's width)")
            if not chosen[name].contains(el.as_matrix(), atol=1e-8 if _float64(el) else 1e-4):
                raise SolverInputError(f"initial transform for space {name!r} is not an element of "
                                       f"{chosen[name]!r}, the class searched there", space=name, cls=chosen[name])
        init = init.to(device)
    if models is None and architecture is not None and data is not None:
        models = _modules(architecture, pa, pb, graph_b, dtype, device)
    if models is not None and (not isinstance(models, (tuple, list)) or len(models) != 2):
        raise TypeError("models must be a pair (module_a, module_b)")
    if sites is not None:
        sites = dict(sites)
        for name in sites:
            graph.space(name)
    if lazy:
        check_streamable(chosen)
    return Problem(graph=graph, params_a=pa, params_b=pb, classes=chosen, graph_b=gb, sizes=sizes,
                   init=init, seed=seed, device=device, dtype=dtype, data=data,
                   models=None if models is None else tuple(models), sites=sites, lazy=bool(lazy))


def _check_repeats(graph, graph_b, sizes) -> None:
    """Where widths differ, A's repeated edges must hold B's copies in the block a map from B's width to A's
    gives them (:func:`symmetries.blocks.merged_block`): aligned B is laid out as A."""
    a_edges = defaultdict(list)
    for e in graph.edges():
        a_edges[(e.parameter, e.space, e.axis, e.role)].append(e)
    for eb in graph_b.edges():
        ea = a_edges[(eb.parameter, eb.space, eb.axis, eb.role)]
        ea = ea.pop(0) if ea else None
        if ea is None or (ea.repeat is None and eb.repeat is None):
            continue
        m, n = sizes[eb.space]
        want = None if eb.repeat is None else (eb.count, merged_block(eb, n, m))
        if ea.repeat != want:
            raise SolverInputError(f"{eb.parameter!r} axis {eb.axis} → space {eb.space!r}: graph_b repeats it "
                                   f"{eb.repeat}, so the aligned model is laid out with repeat {want}, but graph "
                                   f"declares {ea.repeat}", space=eb.space, parameter=eb.parameter)


def _check_lazy(solver, data, models) -> None:
    """Only solvers that declare ``streams = True`` read a lazy problem; data-driven ones need the models."""
    if solver is not None and not getattr(solver, "streams", False):
        raise SolverInputError(f"solver {getattr(solver, 'name', solver)!r} does not stream (lazy=True): it needs "
                               f"the models in memory; weight_matching streams")
    if data is not None or models is not None:
        raise SolverInputError("lazy=True streams the weights; data-driven options (data=, models=) need the "
                               "models in memory")


def _modules(architecture, pa, pb, graph_b, dtype, device):
    if graph_b is not None:
        raise SolverInputError("pass models=(module_a, module_b) for width-changing activation problems")
    mods = []
    for params in (pa, pb):
        m = architecture.module(dtype=dtype, device=device)
        m.load_state_dict(params)
        mods.append(m.eval())
    return tuple(mods)


def as_batches(data, *, batch_size: int = 256, seed: int = 0):
    """An ``(x, y)`` pair as a list of shuffled ``(x, y)`` minibatches (seeded) — the form every data-driven
    solver reads (activation matching takes each batch's inputs, learned matching inputs and targets);
    other data (a tensor, a DataLoader, a list of batches) is passed through."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(t, "shape") for t in data):
        x, y = (torch.as_tensor(t) for t in data)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
        return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, len(x), batch_size)]
    return data
