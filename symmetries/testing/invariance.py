"""Invariance checks for any pytest suite: ``f(T · θ) = f(θ)`` for drawn transforms ``T``.

:func:`check_invariance` draws, for every space and every class it declares, ``examples``
elements (that space alone transformed; a head group shares its head permutation), applies them to
a copy of the model's parameters and compares the outputs in eval mode; a last row transforms
all spaces at once. The error is ``max |f(T·θ) − f(θ)|`` over every output entry; the tolerance is
``rtol · κ(T) · max |f(θ)| + atol`` with ``rtol`` by dtype and ``κ`` the round-off factor of the
drawn maps (:func:`roundoff_factor`: the worst tensor's product of condition numbers). Non-finite
output entries (masked logits) are compared positionally: the same ``±inf`` or NaN at the same
place is equal, any other change of the non-finite pattern is a failure, and error and scale are
taken over the finite entries only (:mod:`symmetries.testing.outputs`). Parameters tied in the module (one
tensor under several state-dict keys) are checked as one tensor: a transform that gives the tied
keys different values fails. :func:`assert_invariant` raises :class:`InvarianceError` (an
``AssertionError``) naming the space, the declared class, the smallest failing subclass, the error
and the activation.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from symmetries.action import apply
from symmetries.classes import HeadStructured, SymmetryClass, Trivial
from symmetries.elements import Element
from symmetries.roles import Role
from symmetries.errors import SymmetryError
from symmetries.testing.outputs import ModelRunner, cast_inputs, output_difference, output_scale, tied_groups
from symmetries.policy import parse_class
from symmetries.testing.strategies import GROUPS, example_inputs, random_element
from symmetries.transforms import TransformSet, tie_heads

__all__ = ["DEFAULT_RTOL", "InvarianceError", "SpaceCheck", "InvarianceReport", "check_invariance",
           "assert_invariant", "example_inputs", "cast_inputs", "tied_groups", "roundoff_factor"]  # example_inputs re-exported from strategies

#: Relative tolerance by dtype, before scaling by conditioning and output scale.
DEFAULT_RTOL: dict[torch.dtype, float] = {torch.float64: 1e-9, torch.float32: 1e-4,
                                          torch.float16: 2e-2, torch.bfloat16: 1e-1}
ALL_SPACES = "(all spaces)"


class InvarianceError(AssertionError):
    """A declared symmetry changed the model's output; ``.check`` is the failing :class:`SpaceCheck`."""

    def __init__(self, message: str, check: "SpaceCheck", report: "InvarianceReport"):
        super().__init__(message)
        self.check, self.report = check, report


@dataclass
class SpaceCheck:
    """One row: ``examples`` draws of ``cls`` at ``space``; ``max_error`` against ``tolerance``."""
    space: str
    cls: str
    examples: int = 0
    max_error: float = 0.0
    tolerance: float = 0.0
    passed: bool = True
    activation: str | None = None
    failing_class: str | None = None   # smallest failing subclass (shrunk), when it fails
    seed: int | None = None            # seed of the worst draw: random_element(cls, n, m, seed=…)
    note: str = ""
    failing_seed: int | None = None    # the failing subclass's draw: random_element(failing_class, …, seed=…)
    failing_error: float | None = None
    failing_tolerance: float | None = None

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"

    def message(self) -> str:
        if self.space == ALL_SPACES:
            head = (f"all spaces at once ({self.cls}): output changed by {self.max_error:.2g} "
                    f"(tolerance {self.tolerance:.2g})")
        elif self.failing_class and self.failing_class != self.cls and self.failing_seed is not None:
            # the error, tolerance and seed all of the shrunk draw; the declared class's worst draw after
            head = (f"space `{self.space}` declared {self.cls}: output changed by {self.failing_error:.2g} "
                    f"(tolerance {self.failing_tolerance:.2g}) after a drawn {self.failing_class} "
                    f"(seed {self.failing_seed}; worst drawn {self.cls}: {self.max_error:.2g}, seed {self.seed})")
        else:
            head = (f"space `{self.space}` declared {self.cls}: output changed by {self.max_error:.2g} "
                    f"(tolerance {self.tolerance:.2g}) after a drawn {self.cls}")
            if self.seed is not None:
                head += f" (seed {self.seed})"
        if self.space == ALL_SPACES and self.seed is not None:
            head += f" (seed {self.seed})"
        if self.activation:
            head += f"; activation is {self.activation}"
        return head + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict:
        return dict(asdict(self), verdict=self.verdict)


@dataclass
class InvarianceReport:
    """Every row of a check, the model's dtype, the number of forward passes and the wall time."""
    checks: list[SpaceCheck] = field(default_factory=list)
    dtype: str = ""
    forward_passes: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[SpaceCheck]:
        return [c for c in self.checks if not c.passed]

    @property
    def examples(self) -> int:
        return sum(c.examples for c in self.checks)

    def to_dict(self) -> dict:
        return dict(passed=self.passed, dtype=self.dtype, examples=self.examples,
                    forward_passes=self.forward_passes, seconds=self.seconds,
                    checks=[c.to_dict() for c in self.checks])


def _perturb(graph, params: dict, seed: int, tied: Sequence[Sequence[str]] = ()) -> dict:
    """A generic point near ``θ``: every tensor a space acts on gets 20% noise (running variances a
    positive factor), so no parameter sits at a special value (γ = 1, β = 0) that hides a wrong rule.
    Keys of one ``tied`` group (one tensor in the module) get one perturbed value."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(params)
    for p in graph.parameters():
        v = params[p.name]
        edges = graph.edges_of(p.name)
        if not edges or not v.is_floating_point():
            continue
        noise = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.device)
        if p.name.endswith("running_var") or any(e.role.value == "var" for e in edges):
            out[p.name] = (v.double() * torch.exp(0.2 * noise)).to(v.dtype)
        else:
            rms = float(v.double().pow(2).mean().sqrt()) if v.numel() else 0.0
            out[p.name] = (v.double() + 0.2 * (rms or 1.0) * noise).to(v.dtype)
    for group in tied:
        moved = next((k for k in group if k in out and out[k] is not params.get(k)), None)
        if moved is not None:
            for k in group:
                if k in out:
                    out[k] = out[moved]
    return out


# -- drawing transforms ----------------------------------------------------------------------------
def _label(cls: SymmetryClass) -> str:
    text = repr(cls)
    return text[:-2] if text.endswith("()") else text


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _cond(el: Element) -> float:
    s = torch.linalg.svdvals(el.as_matrix().double())
    return float(s[0] / s[-1]) if s.numel() and float(s[-1]) > 0 else float("inf")


def roundoff_factor(graph, transforms: Mapping[str, Element]) -> float:
    """How much ``transforms`` can amplify round-off: the largest, over tensors, product over the
    tensor's axes of the condition numbers ``κ`` of the maps acting there (``var`` edges: ``κ²``).

    A tensor between spaces ``a`` and ``b`` becomes ``T_b W T_a⁻¹``; its rounding errors map back to
    the original coordinates amplified by ``κ(T_b)·κ(T_a)``, while errors already present flow through
    the original network, so the output error grows by at most the worst tensor's factor."""
    conds = {space: _cond(el) for space, el in transforms.items()}
    worst = 1.0
    for p in graph.parameters():
        per_axis: dict[int, float] = {}
        for e in graph.edges_of(p.name):
            if e.space in conds:
                axis = e.axis % len(p.shape) if p.shape else 0
                c = conds[e.space] ** (2 if e.role is Role.VAR else 1)
                per_axis[axis] = max(per_axis.get(axis, 1.0), c)
        worst = max(worst, math.prod(per_axis.values()))
    return worst


def _subclasses(cls: SymmetryClass) -> list[SymmetryClass]:
    """Proper, non-trivial group subclasses of ``cls``, smallest first (for shrinking a failure)."""
    from symmetries.lattice import is_subclass
    def rank(c):
        return sum(is_subclass(d, c) for d in GROUPS)
    if isinstance(cls, HeadStructured):  # a head permutation alone (inner Trivial) comes first
        inner = sorted((c for c in GROUPS if is_subclass(c, cls.inner) and c != cls.inner), key=rank)
        return [HeadStructured(cls.num_heads, c) for c in inner]
    return sorted((c for c in GROUPS if c != cls and not isinstance(c, Trivial) and is_subclass(c, cls)), key=rank)


# -- the check ---------------------------------------------------------------------------------------
def check_invariance(model, graph=None, example_inputs=None, classes=None, *, examples: int = 5,
                     rtol: float | None = None, atol: float = 0.0, seed: int = 0, dtype: torch.dtype | None = None,
                     cond: float = 4.0, widen: int = 2, perturb: bool = True, joint: bool = True,
                     spaces: Sequence[str] | None = None) -> InvarianceReport:
    """Check ``f(T · θ) = f(θ)`` space by space and class by class; returns the report (never raises
    on a broken symmetry; raises typed errors on a graph that does not fit the model).

    ``model`` — an ``nn.Module`` (or an ``Architecture``: its seeded module and graph); ``graph`` —
    its ``WeightGraph`` (state-dict keys = parameter names); ``classes`` — ``None`` (every class each
    space declares), a class for all spaces, or ``{space: class or classes}`` (instances, types or
    names such as ``"permutation"``: :func:`symmetries.parse_class`); ``cond`` — bound on
    the condition number of drawn maps; ``widen`` — extra units for rectangular classes
    (semi-permutations, orthogonal embeddings), dropped with a note when the module rejects wider
    weights; ``perturb`` — check at a generic point near ``θ`` (20% noise on every tensor a space
    acts on) rather than at ``θ`` itself.
    """
    from architectures import Architecture
    start = time.perf_counter()
    if isinstance(model, Architecture):
        graph = model.graph if graph is None else graph
        model = model.module(seed=seed)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or an Architecture, got {type(model).__name__}")
    if graph is None or example_inputs is None:
        raise TypeError("check_invariance needs the model's graph and example_inputs")
    if examples < 1:
        raise ValueError(f"examples must be ≥ 1, got {examples}")
    run = ModelRunner(model, example_inputs, dtype)
    theta = dict(run.model.state_dict())
    graph.validate(theta)
    if perturb:
        theta = _perturb(graph, theta, _seed(seed, 1), run.tied)
    rtol = DEFAULT_RTOL.get(run.dtype, 1e-4) if rtol is None else float(rtol)
    y = run(theta)
    scale = output_scale(y)
    if output_difference(y, run(theta))[0] > rtol * scale + atol:
        raise RuntimeError("the model is not deterministic in eval mode: two calls with the same parameters "
                           "differ beyond the tolerance, so no invariance can be checked")
    device = next((t.device for t in theta.values() if isinstance(t, torch.Tensor)), torch.device("cpu"))
    plan = _plan(graph, classes, spaces)
    report = InvarianceReport(dtype=str(run.dtype).replace("torch.", ""))

    def trial(transforms: Mapping[str, Element], kappa: float, wide: bool):
        tol = rtol * kappa * scale + atol
        try:
            moved = apply(graph, theta, TransformSet(transforms).to(device), check=not wide)
        except SymmetryError as exc:
            return float("inf"), 0.0, f"cannot apply: {exc}"
        except (RuntimeError, ValueError, IndexError) as exc:
            if wide:
                return None, 0.0, f"{type(exc).__name__}: {exc}"
            raise
        untied = run.untie(moved, rtol, kappa)
        if untied:
            return float("inf"), tol, untied
        try:
            y2 = run(moved)
        except (RuntimeError, ValueError, IndexError) as exc:
            if wide:
                return None, 0.0, f"{type(exc).__name__}: {exc}"
            raise
        err, note = output_difference(y, y2)
        return err, tol, note

    def run_class(space, cls, k0: int, row: SpaceCheck, count: int) -> None:
        s = graph.space(space)
        m = s.size + (widen * (cls.num_heads if isinstance(cls, HeadStructured) else 1)
                      if widen and cls.rectangular else 0)
        for k in range(count):
            sd = _seed(seed, k0, k)
            el = random_element(cls, s.size, m, seed=sd, cond=cond)
            tied = tie_heads(graph, {space: el})
            err, tol, note = trial(tied, roundoff_factor(graph, tied), m != s.size)
            if err is None:  # the module rejects wider weights: check square maps instead
                row.note = f"checked without widening (the module rejects {m} > {s.size} units: {note[:120]})"
                m = s.size
                el = random_element(cls, s.size, m, seed=sd, cond=cond)
                tied = tie_heads(graph, {space: el})
                err, tol, note = trial(tied, roundoff_factor(graph, tied), False)
            row.examples += 1
            if row.seed is None or err - tol > row.max_error - row.tolerance:
                row.max_error, row.tolerance, row.seed = err, tol, sd
            if err > tol:
                row.passed = False
                row.note = note or row.note
                return

    for i, (space, declared) in enumerate(plan):
        for j, cls in enumerate(declared):
            row = SpaceCheck(space, _label(cls), activation=graph.space(space).activation)
            run_class(space, cls, _seed(seed, 2, i, j), row, examples)
            if not row.passed:
                probe = _shrink(graph, space, cls, seed, i, j, run_class, examples)
                if probe is None:
                    row.failing_class = _label(cls)
                else:
                    row.failing_class, row.failing_seed = probe.cls, probe.seed
                    row.failing_error, row.failing_tolerance = probe.max_error, probe.tolerance
            report.checks.append(row)
    if joint and len(plan) > 1:
        report.checks.append(_joint(graph, plan, seed, examples, cond, trial))
    report.forward_passes, report.seconds = run.calls, time.perf_counter() - start
    return report


def _plan(graph, classes, spaces) -> list[tuple[str, list[SymmetryClass]]]:
    names = [s.name for s in graph.spaces()] if spaces is None else list(spaces)
    plan = []
    for name in names:
        s = graph.space(name)  # UnknownSpaceError names it
        if classes is None:
            declared = list(s.classes)
        else:
            if isinstance(classes, Mapping):
                for key in classes:
                    graph.space(key)  # UnknownSpaceError names it
            spec = classes.get(name, s.classes) if isinstance(classes, Mapping) else classes
            specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
            declared = [parse_class(c, space=name) for c in specs]
        plan.append((name, [c for c in declared if not isinstance(c, Trivial)]))
    return plan


def _shrink(graph, space, cls, seed, i, j, run_class, examples) -> SpaceCheck | None:
    """The check of the smallest subclass of ``cls`` that already fails at ``space`` (its ``seed``:
    the failing draw); ``None`` when only ``cls`` itself fails."""
    for k, sub in enumerate(_subclasses(cls)):
        probe = SpaceCheck(space, _label(sub))
        run_class(space, sub, _seed(seed, 3, i, j, k), probe, examples)
        if not probe.passed:
            return probe
    return None


def _joint(graph, plan, seed, examples, cond, trial) -> SpaceCheck:
    """Every space transformed at once by its first declared class (head groups share one head
    permutation); the tolerance scales with :func:`roundoff_factor` of the whole set."""
    first = {space: declared[0] for space, declared in plan if declared}
    row = SpaceCheck(ALL_SPACES, "first declared class of each space")
    for k in range(examples):
        sd = _seed(seed, 4, k)
        els = {space: random_element(cls, graph.space(space).size, seed=_seed(sd, n), cond=cond)
               for n, (space, cls) in enumerate(first.items())}
        els = tie_heads(graph, els)
        err, tol, note = trial(els, roundoff_factor(graph, els), False)
        row.examples += 1
        if row.seed is None or err - tol > row.max_error - row.tolerance:
            row.max_error, row.tolerance, row.seed = err, tol, sd
        if err > tol:
            row.passed, row.note = False, note
            break
    return row


def assert_invariant(model, graph=None, example_inputs=None, classes=None, *, examples: int = 5,
                     rtol: float | None = None, atol: float = 0.0, seed: int = 0, **options) -> InvarianceReport:
    """Assert ``f(T · θ) = f(θ)`` for drawn ``T`` at every declared space and class (see
    :func:`check_invariance`); on failure raise :class:`InvarianceError` naming the first failing
    space, its declared class, the smallest failing subclass, the error and the activation."""
    report = check_invariance(model, graph, example_inputs, classes, examples=examples, rtol=rtol, atol=atol,
                              seed=seed, **options)
    if not report.passed:
        bad = report.failures
        spaces = [c for c in bad if c.space != ALL_SPACES]
        first = spaces[0] if spaces else bad[0]
        more = f" ({len(bad) - 1} more failing checks: {', '.join(f'`{c.space}` {c.cls}' for c in bad[1:4])})" \
            if len(bad) > 1 else ""
        raise InvarianceError(first.message() + more, first, report)
    return report
