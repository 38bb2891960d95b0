"""Activation matching: align each space from the two models' activations on data.

Both models run on the same data (a tensor, or an iterable/DataLoader of tensors or
``(inputs, …)`` tuples) with forward hooks at one module per space — its **site**, the module
whose output realises the space (its activation function applied when the space declares one;
channel axis: 1 for convolution/normalisation outputs with more than two dimensions, else the
last). Streaming moments ``Σ z_a z_aᵀ``, ``Σ z_b z_bᵀ``, ``Σ z_a z_bᵀ`` and means are kept, never
the activations. Each space ``s`` is solved independently (B's activations at ``s`` do not depend
on B's transforms elsewhere) on the activation objective ``Σ_s ‖Z_A,s − T_s Z_B,s‖²``:

* ``Permutation`` — LAP on the correlation matrix ``corr(z_a[j], z_b[i])`` (``statistic="cross"``:
  on ``Z_A Z_Bᵀ``, the exact minimiser of the objective); ``SignedPermutation`` — LAP on ``|corr|``,
  signs of ``corr``; ``SignFlip`` — signs of the diagonal;
* ``PermutationScaling`` / ``PositiveScaling`` — the permutation as above, then per unit the least-
  squares scale ``c = ⟨z_a, z_b⟩ / ‖z_b‖²`` (clamped positive; 1 for a unit never active on the data);
* ``Orthogonal`` — Procrustes: the polar factor of ``Z_A Z_Bᵀ``;
* ``Invertible`` — least squares ``T = (Z_A Z_Bᵀ)(Z_B Z_Bᵀ + λI)⁻¹`` (``ridge`` λ, relative), or with
  ``invertible="cca"`` the CCA map ``T = Σ_AA^{1/2} polar(Σ_AA^{-1/2} Σ_AB Σ_BB^{-1/2}) Σ_BB^{-1/2}`` on
  centred covariances (whiten both, rotate B's canonical directions onto A's, re-colour).

* ``HeadStructured(k, Permutation() | Orthogonal())`` — the heads of one attention (its head group:
  the ``qk`` and ``vo`` spaces) are matched jointly and exactly: for every (A head ``i``, B head ``j``)
  the inner oracle's best map ``E_ij`` on the block ``M_ij`` of ``Z_A Z_Bᵀ`` of each space, then
  one head permutation by LAP on ``Σ_spaces ⟨E_ij, M_ij⟩`` (for a fixed head permutation the
  per-head problems separate, so this is the exact minimiser of the activation objective over the
  head-structured class). ``HeadStructured(k, Invertible())`` is refused: queries move by ``A`` and
  keys by ``A⁻ᵀ``, so the objective is not a least-squares problem in ``A``.

Sites default to the module named by the space's producing weight (``layers.0.weight`` →
``layers.0``; the last such module in the model when several produce the space), except for a
residual stream, read at the block or stage that returns it — at **every** block of a
``ModuleList`` of blocks (a transformer's ``blocks.0`` … ``blocks.L-1``), its rows pooled — and
for attention heads: the outputs of the modules whose weight meets the space on its output axis
(``qk``: the queries ``q`` and keys ``k``, ``vo``: the values ``v``; with packed Q/K/V the slices
``qkv[0:Hd]``, ``qkv[Hd:2Hd]``, ``qkv[2Hd:3Hd]`` of its output) (:func:`default_sites`). A site
is a module name, optionally with a slice of its output features (``"blocks.0.attn.qkv[0:16]"``);
pass ``sites={space: name or [names]}`` otherwise. A site whose weight produces the space on a
repeated edge (grouped-query ``q``: ``repeat=(R, d)``) holds the space's units ``count`` times: each
copy is one more sample of the space's activations.
"""
from __future__ import annotations

from typing import Iterable

import re

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from symmetries.blocks import split_copies
from symmetries.classes import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling,
                                PositiveScaling, SignedPermutation, SignFlip, Trivial)
from symmetries.elements import DenseElement, GatherElement
from symmetries.roles import Role
from symmetries.transforms import TransformSet

from solvers.errors import SolverInputError
from solvers.registry import Solver, register
from solvers.solution import Solution

__all__ = ["ActivationMatching", "default_sites", "Moments"]

_CHANNEL_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)


def _module_of(parameter: str) -> str:
    return parameter.rsplit(".", 1)[0] if "." in parameter else ""


def _producer(graph, space: str, order: dict[str, int]) -> str | None:
    """The last module (in ``model.named_modules()`` order) whose ``.weight`` produces ``space``."""
    cands = [c for c in {_module_of(e.parameter) for e in graph.edges_at(space)
                         if e.role is Role.OUT and e.parameter.endswith(".weight")} if c in order]
    return max(cands, key=order.__getitem__) if cands else None


def default_sites(graph, model: nn.Module) -> dict[str, str | tuple[str, ...]]:
    """``space → site`` (a module name, or a tuple of them when the space is read at several
    modules, its rows pooled) whose output is the space's value. A plain space: its last producing
    module ``p`` (``X.weight`` with role ``out`` → ``X``; its activation is applied to the output). A
    residual stream — a space written again after it has been read (a consuming module between its
    first and its last producing module), its writes summed: the outermost module containing ``p``
    that contains no later module touching the space and is called (a ResNet stage ``layer2``, a
    transformer block ``blocks.11``), whose output is the stream itself, not the last branch added
    to it (no activation is applied: the module's output is the value the network computes); when
    that module is one of a ``ModuleList`` of blocks, every block of the list that writes the stream
    (``blocks.0`` … ``blocks.11``). An attention space (one with a head group): the outputs of the
    modules whose ``.weight`` meets the space on axis 0 — queries and keys for ``qk``, values for
    ``vo`` — as ``"module"`` or ``"module[start:stop]"`` (a slice of packed Q/K/V)."""
    return {s: (v[0] if len(v) == 1 else tuple(v)) for s, (v, _) in _site_plan(graph, model).items()}


def _site_plan(graph, model: nn.Module) -> dict[str, tuple[list[str], str]]:
    """``space → (default sites, last producing module)`` (see :func:`default_sites`)."""
    modules = dict(model.named_modules())
    order = {n: i for i, n in enumerate(modules)}
    sites = {}
    for space in graph.spaces():
        if space.head_group is not None:
            heads = []
            for e in graph.edges_at(space.name):
                m = _module_of(e.parameter)
                if e.parameter.endswith(".weight") and e.axis == 0 and m in order:
                    name = m if e.slice is None else f"{m}[{e.slice[0]}:{e.slice[1]}]"
                    heads.append(name) if name not in heads else None
            if heads:
                sites[space.name] = (heads, heads[0])
                continue
        p = _producer(graph, space.name, order)
        if p is None:
            continue
        sites[space.name] = ([p], p)
        edges = [(e, _module_of(e.parameter)) for e in graph.edges_at(space.name)]
        first = min(order[m] for e, m in edges if e.role is Role.OUT and m in order)
        if not any(e.role is Role.IN and m in order and first < order[m] < order[p] for e, m in edges):
            continue  # not a residual stream
        later = [m for _, m in edges if m in order and order[m] > order[p] and not _inside(m, p)]
        parts = p.split(".")
        for k in range(len(parts) - 1, 0, -1):
            outer = ".".join(parts[:k])
            if any(_inside(m, outer) for m in later):
                break
            if not isinstance(modules[outer], (nn.ModuleList, nn.ModuleDict)):
                sites[space.name] = ([outer], p)
        final = sites[space.name][0][0]
        blocks = _blocks(modules, edges)
        sites[space.name] = (blocks + ([] if any(_inside(final, b) for b in blocks) else [final]), p)
    return sites


def _blocks(modules: dict, edges: list) -> list[str]:
    """The blocks of a residual stream, in model order: children of a ``ModuleList``/``ModuleDict``
    that both read (role ``in``) and write (role ``out``) the stream — each returns the stream."""
    order = {n: i for i, n in enumerate(modules)}
    readers = [m for e, m in edges if e.role is Role.IN and m in modules]
    found = set()
    for e, w in edges:
        if e.role is not Role.OUT or w not in modules:
            continue
        parts = w.split(".")
        for k in range(1, len(parts)):
            block, parent = ".".join(parts[:k]), ".".join(parts[:k - 1])
            if isinstance(modules[parent], (nn.ModuleList, nn.ModuleDict)) and any(_inside(r, block) for r in readers):
                found.add(block)
                break
    return sorted(found, key=order.__getitem__)


_SLICE = re.compile(r"^(.*)\[(\d+):(\d+)\]$")


def _parse_site(site: str) -> tuple[str, tuple[int, int] | None]:
    """``"module"`` or ``"module[start:stop]"`` (a slice of the output features)."""
    found = _SLICE.match(site)
    return (site, None) if found is None else (found.group(1), (int(found.group(2)), int(found.group(3))))


def _site_repeat(graph, space: str, site: str) -> tuple[int, int] | None:
    """The repeat of the edge by which ``site``'s module produces ``space`` (its ``.weight`` on axis 0 with
    the site's slice), or ``None``: such a site's output holds the space's units repeated, each copy one
    more sample of the space (:mod:`symmetries.blocks`)."""
    module, cut = _parse_site(site)
    for e in graph.edges_at(space):
        if (e.repeat is not None and e.parameter == f"{module}.weight" and e.axis == 0 and e.slice == cut
                and e.role is not Role.VAR):
            return e.repeat
    return None


def _inside(module: str, outer: str) -> bool:
    return module == outer or module.startswith(outer + ".")


class Moments:
    """Running sums of the features of A (``m``) and B (``n``) at one space."""

    def __init__(self):
        self.count = 0
        self.sa = self.sb = self.aa = self.bb = self.ab = None

    def update(self, za: torch.Tensor, zb: torch.Tensor) -> None:
        za, zb = za.double(), zb.double()
        if self.sa is None:
            self.sa, self.sb = za.sum(0), zb.sum(0)
            self.aa, self.bb, self.ab = za.T @ za, zb.T @ zb, za.T @ zb
        else:
            self.sa += za.sum(0)
            self.sb += zb.sum(0)
            self.aa.addmm_(za.T, za)
            self.bb.addmm_(zb.T, zb)
            self.ab.addmm_(za.T, zb)
        self.count += za.shape[0]

    def correlation(self) -> torch.Tensor:
        n = self.count
        ma, mb = self.sa / n, self.sb / n
        cov = self.ab / n - torch.outer(ma, mb)
        va = (torch.diagonal(self.aa) / n - ma ** 2).clamp_min(0)
        vb = (torch.diagonal(self.bb) / n - mb ** 2).clamp_min(0)
        return cov / (torch.sqrt(torch.outer(va, vb)) + 1e-12)

    def covariances(self):
        """Centred ``Σ_AA``, ``Σ_BB``, ``Σ_AB``."""
        n = self.count
        ma, mb = self.sa / n, self.sb / n
        return (self.aa / n - torch.outer(ma, ma), self.bb / n - torch.outer(mb, mb),
                self.ab / n - torch.outer(ma, mb))

    def objective(self, el) -> float:
        """``‖Z_A − T Z_B‖² = tr(Z_A Z_Aᵀ) − 2⟨T, Z_A Z_Bᵀ⟩ + ⟨TᵀT, Z_B Z_Bᵀ⟩`` (from the moments)."""
        t = el.as_matrix().to(self.ab)
        return float(torch.trace(self.aa) - 2 * (t * self.ab).sum() + ((t.T @ t) * self.bb).sum())


def _batches(data) -> Iterable[torch.Tensor]:
    """Input batches: a tensor (in chunks of 256), an ``(x, y)`` pair of tensors (its inputs ``x``, the
    form learned matching takes), or an iterable of tensors or ``(inputs, …)`` batches."""
    if (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
            and data[0].dim() and data[1].dim() and len(data[0]) == len(data[1])):
        yield from _batches(data[0])
        return
    if isinstance(data, torch.Tensor):
        for start in range(0, data.shape[0], 256):
            yield data[start:start + 256]
        return
    if isinstance(data, np.ndarray):
        yield from _batches(torch.as_tensor(data))
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


def _features(out: torch.Tensor, channel_first: bool, activation) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if activation is not None:
        out = activation(out)
    axis = 1 if (out.dim() > 2 and channel_first) else -1
    return out.movedim(axis, -1).reshape(-1, out.shape[axis])


def collect(problem, sites: dict[str, list[str]], apply_activation: bool,
            streams: dict[str, str] | None = None) -> dict[str, Moments]:
    """Run both models on the data with hooks at the sites (``space → [site, …]``, each a module name
    or ``"module[start:stop]"``; the rows of all sites of a space are pooled); return the moments
    per space. ``streams``: ``space → producing module`` for sites whose output is the space's value
    as computed (no activation applied; the producing module's type gives the channel axis)."""
    from architectures.activations import activation as lookup

    streams = streams or {}
    model_a, model_b = problem.models
    moments = {s: Moments() for s in sites}
    acts = {}
    for s in sites:
        name = problem.graph.space(s).activation
        acts[s] = lookup(name).module() if (apply_activation and name and s not in streams) else None
    store: dict[tuple[int, str, int], torch.Tensor] = {}
    handles = []
    for k, model in enumerate((model_a, model_b)):
        for s, names in sites.items():
            for i, site in enumerate(names):
                module_name, cut = _parse_site(site)
                try:
                    module = model.get_submodule(module_name)
                except AttributeError:
                    raise SolverInputError(f"space {s!r}: model {'AB'[k]} has no module {module_name!r} (sites=)",
                                           space=s) from None
                channel_first = isinstance(model.get_submodule(streams[s]) if s in streams else module,
                                           _CHANNEL_FIRST)

                rep = _site_repeat(problem.graph if k == 0 else problem.graph_b, s, site)

                def hook(mod, inputs, out, k=k, s=s, i=i, channel_first=channel_first, cut=cut, rep=rep):
                    z = _features(out, channel_first, acts[s])
                    z = z if cut is None else z[:, cut[0]:cut[1]]
                    if rep is not None and z.shape[1] % rep[0] == 0:  # each copy is a sample of the space
                        z = split_copies(z, 1, *rep).reshape(-1, z.shape[1] // rep[0])
                    store[(k, s, i)] = z
                handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for x in _batches(problem.data):
                x = x.to(problem.device, problem.dtype) if x.is_floating_point() else x.to(problem.device)
                functional_call(model_a, problem.params_a, (x,))
                functional_call(model_b, problem.params_b, (x,))
                for s, names in sites.items():
                    m, n = problem.sizes[s]
                    for i, site in enumerate(names):
                        if (0, s, i) not in store or (1, s, i) not in store:
                            raise SolverInputError(f"space {s!r}: site {site!r} was not called", space=s)
                        za, zb = store[(0, s, i)], store[(1, s, i)]
                        if za.shape[1] != m or zb.shape[1] != n:
                            raise SolverInputError(f"space {s!r}: site {site!r} yields {za.shape[1]} / "
                                                   f"{zb.shape[1]} features, the space has {m} / {n}", space=s)
                        moments[s].update(za, zb)
                store.clear()
    finally:
        for h in handles:
            h.remove()
    if not moments or next(iter(moments.values())).count == 0:
        raise SolverInputError("activation matching got no data")
    return moments


def _psd_power(c: torch.Tensor, power: float, ridge: float) -> torch.Tensor:
    w, v = torch.linalg.eigh(c)
    w = w.clamp_min(ridge * float(w.abs().max().clamp_min(1e-300)))
    return (v * w ** power) @ v.T


def _cca(mom: Moments, ridge: float) -> DenseElement:
    caa, cbb, cab = mom.covariances()
    u, _, vh = torch.linalg.svd(_psd_power(caa, -0.5, ridge) @ cab @ _psd_power(cbb, -0.5, ridge),
                                full_matrices=False)
    return DenseElement(_psd_power(caa, 0.5, ridge) @ (u @ vh) @ _psd_power(cbb, -0.5, ridge))


def _solve_space(cls, mom: Moments, statistic: str, ridge: float, backend: str, invertible: str = "lstsq"):
    n = mom.ab.shape[1]
    corr = mom.correlation() if statistic == "correlation" else mom.ab
    if isinstance(cls, (Permutation, SignFlip, SignedPermutation)):  # the class oracles: LAP, signs, signed LAP
        return cls.project(corr, backend=backend)
    if isinstance(cls, (PermutationScaling, PositiveScaling)):
        perm = (Permutation().project(corr, backend=backend).index if isinstance(cls, PermutationScaling)
                else torch.arange(n))
        rows = torch.arange(n)
        energy = torch.diagonal(mom.bb)[perm]
        live = energy > 1e-12 * float(energy.max().clamp_min(1e-300))  # a dead unit says nothing: scale 1
        c = torch.where(live, mom.ab[rows, perm] / energy.clamp_min(1e-300), torch.ones_like(energy))
        return GatherElement.monomial(perm, c.clamp_min(1e-8))
    if isinstance(cls, Orthogonal):
        return cls.project(mom.ab)
    if isinstance(cls, Invertible) and invertible == "cca":
        return _cca(mom, ridge)
    if isinstance(cls, Invertible):
        bb = mom.bb + ridge * torch.trace(mom.bb) / n * torch.eye(n, dtype=mom.bb.dtype)
        return DenseElement(torch.linalg.solve(bb, mom.ab.T).T)
    raise TypeError(f"activation matching has no rule for {cls!r}")


class ActivationMatching(Solver):
    """Per space, the class's best map between the two models' activations on data."""

    name = "activation_matching"
    needs_data = True
    description = ("activations on data via forward hooks: LAP on correlations, signed LAP, Procrustes, "
                   "least squares, heads by LAP over per-head maps (minimises sum_s ||Z_A - T Z_B||^2); "
                   "heads: HeadStructured(k, Permutation | Orthogonal) only")
    classes = (Trivial, Permutation, SignFlip, SignedPermutation, PermutationScaling, PositiveScaling, Orthogonal,
               Invertible, HeadStructured)

    head_inner = (Permutation, Orthogonal)
    head_refusal = ("with an invertible per-head map queries move by A and keys by A^-T, so the activation "
                    "objective is not a least-squares problem in A (weight_matching searches it)")

    def solve(self, problem, *, statistic: str = "correlation", ridge: float = 1e-10, backend: str = "auto",
              apply_activation: bool = True, invertible: str = "lstsq") -> Solution:
        """``statistic``: ``"correlation"`` or ``"cross"`` (for the permutation LAP; head-structured
        spaces always use the cross moments ``Z_A Z_Bᵀ``, which makes their joint solution exact);
        ``ridge``: relative Tikhonov term of the invertible least squares (eigenvalue floor for CCA);
        ``apply_activation``: apply the space's declared activation to the site's output;
        ``invertible``: ``"lstsq"`` or ``"cca"``."""
        from solvers.algorithms.learned import project_heads

        if statistic not in ("correlation", "cross"):
            raise SolverInputError(f"statistic must be 'correlation' or 'cross', got {statistic!r}")
        if invertible not in ("lstsq", "cca"):
            raise SolverInputError(f"invertible must be 'lstsq' or 'cca', got {invertible!r}")
        if problem.models is None or problem.data is None:
            raise SolverInputError("activation matching needs data= and models=(module_a, module_b) (or pass "
                                   "an Architecture as the graph)")
        plan = _site_plan(problem.graph, problem.models[0])
        sites = {s: list(names) for s, (names, _) in plan.items()}
        sites.update({s: [v] if isinstance(v, str) else list(v) for s, v in (problem.sites or {}).items()})
        sites = {s: names for s, names in sites.items() if s in problem.spaces}
        streams = {s: plan[s][1] for s, names in sites.items()
                   if s in plan and names == plan[s][0] and plan[s][1] not in names}
        missing = [s for s in problem.spaces if s not in sites]
        if missing:
            raise SolverInputError(f"no activation site for space(s) {', '.join(map(repr, missing))}: pass "
                                   f"sites={{space: module name}} or classes={{space: Trivial()}}", space=missing[0])
        moments = collect(problem, sites, apply_activation, streams)
        transforms, before, after, groups = {}, 0.0, 0.0, {}
        for s, mom in moments.items():
            cls = problem.classes[s]
            group = problem.graph.space(s).head_group
            if isinstance(cls, HeadStructured) and group is not None:
                groups.setdefault(group, []).append(s)
            elif isinstance(cls, HeadStructured):
                transforms[s] = project_heads({s: mom.ab}, problem.classes, [s], backend)[s]
            else:
                transforms[s] = _solve_space(cls, mom, statistic, ridge, backend, invertible)
        for names in groups.values():  # one head permutation per attention: the exact joint minimiser
            transforms.update(project_heads({s: moments[s].ab for s in names}, problem.classes, names, backend))
        for s, mom in moments.items():
            m, n = problem.sizes[s]
            before += mom.objective(GatherElement.identity(n)) if m == n else float("nan")
            after += mom.objective(transforms[s])
        t = TransformSet({s: transforms[s] for s in moments})
        j_before, j_after = problem.objective(None), problem.objective(t)
        return Solution(t, before, after, iterations=1, status="converged",
                        objective="sum_s ||Z_A,s - T_s Z_B,s||^2 on the data",
                        message=f"{len(moments)} space(s), {next(iter(moments.values())).count} samples per space",
                        history=[before, after],
                        extra={"weight_objective_before": j_before, "weight_objective_after": j_after,
                               "sites": {s: (v[0] if len(v) == 1 else tuple(v)) for s, v in sites.items()}})


register("activation_matching", ActivationMatching)
