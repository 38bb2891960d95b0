"""The main job, end to end on bundled data: train two MLPs, align them, measure the path.

``run_demo`` trains two MLPs from different seeds on scikit-learn's handwritten digits,
aligns model B to model A with every built-in solver that applies, and measures, on the
test split, loss and accuracy along ``θ(α) = (1−α)θ_A + α T(θ_B)`` (25 α), both barrier
definitions, the L2 distance and the solver's objective. With ``bnn=True`` it also fits two
mean-field posteriors (:func:`train_posterior`) and measures the marginalized barrier before
and after aligning them.

Each row's ``seconds`` is the time to produce the models on its path: the solver's wall time
plus, for ``+ REPAIR`` rows, the time REPAIR takes to measure its statistics and correct every
interpolated model on the training split (evaluation on the test split is not counted).
A solver that is skipped or fails has no curve, distance or time, only the reason.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from symmetries import landscape as L
from symmetries import posteriors as P
from symmetries.action import apply
from symmetries.demo.data import Split, digits

__all__ = ["DemoConfig", "DemoResult", "Row", "run_demo", "train_classifier", "train_posterior"]

Progress = Callable[[str, int, int], None]  # (task, done, total)

#: Widest hidden layer at which a solver is tried unless named explicitly (measured on 2 CPU cores:
#: the relaxation of two spaces takes 2 s at width 128, 13 s at 256; its cost grows about like n⁴).
SIZE_LIMITS = {"relaxation": 256}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (defaults: about a minute on 2 CPU cores)."""
    width: int = 128
    depth: int = 2
    epochs: int = 30
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    activation: str = "relu"
    alphas: int = 25
    solvers: tuple[str, ...] | None = None     # None: every built-in solver that applies
    repair: bool = True                        # also REPAIR the naive and weight-matching paths
    bnn: bool = False
    bnn_epochs: int = 30
    bnn_lr: float = 1e-3
    bnn_samples: int = 8


@dataclass
class Row:
    """One aligned pair: barriers, distance, objective and time (the naive row has no solver).

    ``seconds = solver_seconds + repair_seconds`` (see the module docstring). A skipped or failed
    solver has ``curve`` and ``l2`` ``None`` and the reason in ``skipped`` or ``error``.
    """
    method: str
    curve: L.Curve | None
    l2: float | None
    objective_before: float | None = None
    objective_after: float | None = None
    solver_seconds: float = 0.0
    repair_seconds: float = 0.0
    error: str | None = None
    skipped: str | None = None
    lower_bound: float | None = None           # certified by the solver (convex relaxation), if any

    @property
    def seconds(self) -> float | None:
        return None if self.curve is None else self.solver_seconds + self.repair_seconds

    def as_dict(self) -> dict:
        c = self.curve
        out = dict(method=self.method, loss_barrier=None, loss_barrier_linear=None, accuracy_barrier=None,
                   accuracy_barrier_linear=None, midpoint_loss=None, midpoint_accuracy=None, l2=self.l2,
                   objective_before=self.objective_before, objective_after=self.objective_after,
                   lower_bound=self.lower_bound, seconds=self.seconds, solver_seconds=None, repair_seconds=None,
                   error=self.error, skipped=self.skipped, alphas=None, loss=None, accuracy=None)
        if c is not None:
            out.update(loss_barrier=c.loss_barrier, loss_barrier_linear=c.loss_barrier_linear,
                       accuracy_barrier=c.accuracy_barrier, accuracy_barrier_linear=c.accuracy_barrier_linear,
                       midpoint_loss=c.midpoint[0], midpoint_accuracy=c.midpoint[1], alphas=c.alphas.tolist(),
                       loss=c.loss.tolist(), accuracy=c.accuracy.tolist(), solver_seconds=self.solver_seconds,
                       repair_seconds=self.repair_seconds)
        return out


@dataclass
class DemoResult:
    config: DemoConfig
    widths: list
    endpoints: dict                  # test loss/accuracy of A and B
    train_seconds: float
    naive: Row
    rows: list = field(default_factory=list)
    bnn: dict | None = None
    cka: dict = field(default_factory=dict)    # linear CKA of A's and B's activations per space (test split)
    dimension: dict = field(default_factory=dict)  # matched weight-cloud dimensions per space: naive, weight_matching
    seconds: float = 0.0

    @property
    def weight_matching(self) -> Row | None:
        return next((r for r in self.rows if r.method == "weight_matching"), None)

    def as_dict(self) -> dict:
        return dict(config=asdict(self.config), widths=self.widths, endpoints=self.endpoints,
                    train_seconds=self.train_seconds, seconds=self.seconds, cka=self.cka, dimension=self.dimension,
                    naive=self.naive.as_dict(),
                    rows=[r.as_dict() for r in self.rows], bnn=self.bnn)


def train_classifier(model: nn.Module, data: tuple, *, epochs: int, seed: int, lr: float = 1e-3,
                     batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> dict:
    """Adam on cross-entropy, minibatches drawn from ``seed``; returns a detached state dict."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_posterior(model: nn.Module, data: tuple, init: dict, *, seed: int, config: DemoConfig = DemoConfig(),
                    progress: Callable[[int, int, float], None] | None = None) -> P.MeanField:
    """The demo's variational fit of a mean-field posterior (means started at ``init``):
    :func:`symmetries.posteriors.train_mean_field` with ``config``'s ``bnn_epochs``, ``bnn_lr`` and
    ``batch_size`` — the one place these are set, so the tutorial reproduces the demo's figures."""
    return P.train_mean_field(model, data, epochs=config.bnn_epochs, lr=config.bnn_lr, batch_size=config.batch_size,
                              seed=seed, init=init, progress=progress)


class _Timed:
    """An ``adjust(params, α)`` that adds the seconds it (and its set-up) takes to ``seconds``."""

    def __init__(self, make: Callable[[], Callable]):
        t0 = time.perf_counter()
        self.adjust = make()
        self.seconds = time.perf_counter() - t0

    def __call__(self, params, alpha):
        t0 = time.perf_counter()
        out = self.adjust(params, alpha)
        self.seconds += time.perf_counter() - t0
        return out


def _noop(task: str, done: int, total: int) -> None:
    pass


def run_demo(config: DemoConfig = DemoConfig(), *, progress: Progress | None = None,
             split: Split | None = None) -> DemoResult:
    """Run the whole story; ``progress(task, done, total)`` reports training, aligning and curves."""
    import architectures

    import solvers

    progress = progress or _noop
    for name in config.solvers or ():
        solvers.get(name)  # UnknownSolverError naming it, before any training
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    split = split or digits(seed=config.seed)
    widths = [split.features] + [config.width] * config.depth + [split.classes]
    arch = architectures.mlp(widths, activation=config.activation)
    model = arch.module(seed=config.seed)
    t0 = time.perf_counter()
    params = []
    for k, name in enumerate(("A", "B")):
        seed = config.seed + 1000 * k
        params.append(train_classifier(arch.module(seed=seed), split.train, epochs=config.epochs, seed=seed,
                                       lr=config.lr, batch_size=config.batch_size,
                                       progress=lambda d, t, n=name: progress(f"train {n}", d, t)))
    pa, pb = params
    train_seconds = time.perf_counter() - t0
    endpoints = {n: vars(L.evaluate(model, split.test, p)) for n, p in (("A", pa), ("B", pb))}

    def curve(label, b, adjust=None):
        return L.interpolation_curve(model, pa, b, split.test, alphas=config.alphas, label=label, adjust=adjust,
                                     progress=lambda d, t: progress(f"path {label}", d, t))

    naive = Row("naive", curve("naive", pb), L.l2_distance(pa, pb))
    result = DemoResult(config, widths, endpoints, train_seconds, naive)
    result.cka = L.cka_per_space(model, arch.graph, pa, pb, split.test)
    result.dimension["naive"] = {s: d.as_dict() for s, d in L.matched_dimension(arch.graph, pa, pb).items()}
    if config.repair:  # REPAIR alone, for comparison: it fixes variance collapse, not misalignment
        adjust = _Timed(lambda: L.repair_adjust(model, arch.graph, pa, pb, split.train))
        fixed = curve("naive + REPAIR", pb, adjust)
        result.rows.append(Row("naive + REPAIR", fixed, naive.l2, repair_seconds=adjust.seconds))
    names = list(config.solvers) if config.solvers is not None else solvers.applicable(arch)
    batches = solvers.as_batches(split.train, seed=config.seed)
    for name in names:
        limit = SIZE_LIMITS.get(name)
        if config.solvers is None and limit is not None and config.width > limit:
            result.rows.append(Row(name, None, None, skipped=f"width {config.width} > {limit}, too slow "
                                                             f"(--solver {name} forces it)"))
            continue
        progress(f"align {name}", 0, 1)
        try:
            sol = solvers.solve(name, arch, pa, pb, data=batches, seed=config.seed)
        except Exception as exc:  # a solver failing must not end the demo: report it in the table
            result.rows.append(Row(name, None, None, error=f"{type(exc).__name__}: {exc}"))
            continue
        progress(f"align {name}", 1, 1)
        pb_aligned = apply(arch.graph, pb, sol.transforms)
        if name == "weight_matching":
            result.dimension[name] = {s: d.as_dict() for s, d in L.matched_dimension(arch.graph, pa, pb_aligned).items()}
        objectives = (_num(sol.objective_before), _num(sol.objective_after))
        result.rows.append(Row(name, curve(name, pb_aligned), L.l2_distance(pa, pb_aligned), *objectives,
                               solver_seconds=float(sol.wall_time),
                               lower_bound=_num(getattr(sol, "lower_bound", None))))
        if config.repair and name == "weight_matching":
            adjust = _Timed(lambda: L.repair_adjust(model, arch.graph, pa, pb_aligned, split.train))
            result.rows.append(Row(f"{name} + REPAIR", curve(f"{name} + REPAIR", pb_aligned, adjust),
                                   L.l2_distance(pa, pb_aligned), *objectives, solver_seconds=float(sol.wall_time),
                                   repair_seconds=adjust.seconds))
    if config.bnn:
        result.bnn = _bnn(config, arch, model, split, pa, pb, progress)
    result.seconds = time.perf_counter() - start
    return result


def _num(x) -> float | None:
    return None if x is None else float(x)


def _bnn(config, arch, model, split, pa, pb, progress) -> dict:
    """Fit ``q_A, q_B`` by VI (means started at the trained nets), align with W₂, marginalized curves."""
    posts = []
    for k, (name, init) in enumerate((("A", pa), ("B", pb))):
        posts.append(train_posterior(model, split.train, init, seed=config.seed + k, config=config,
                                     progress=lambda d, t, loss, n=name: progress(f"VI {n}", d, t)))
    qa, qb = posts
    t0 = time.perf_counter()
    al = P.align_posteriors(arch.graph, qa, qb, seed=config.seed)
    seconds = time.perf_counter() - t0
    kw = dict(alphas=config.alphas, samples=config.bnn_samples, seed=config.seed)
    before = P.marginalized_curve(model, qa, qb, split.test, label="BNN naive",
                                  progress=lambda d, t: progress("path BNN naive", d, t), **kw)
    after = P.marginalized_curve(model, qa, al.aligned, split.test, label="BNN aligned (W2)",
                                 progress=lambda d, t: progress("path BNN aligned", d, t), **kw)
    return dict(w2_before=al.cost_before, w2_after=al.cost_after, seconds=seconds, sweeps=al.sweeps,
                samples=config.bnn_samples, naive=before.as_dict(), aligned=after.as_dict())
