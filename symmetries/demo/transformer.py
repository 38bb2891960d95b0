"""The transformer demos: two GPTs on the standard library's source, or two ViTs on the digits.

``run_transformer_demo`` trains two LayerNorm transformers (``architectures.gpt2`` or
``architectures.vit``) from two seeds, rewrites both to the RMS form
(``architectures.rewrite_layernorm``: same function, the residual stream admits orthogonal maps),
aligns B to A with every applicable solver at its standard classes — heads as
``HeadStructured(k, Permutation())``, the residual stream as ``Orthogonal()``, MLP units as
``Permutation()`` — plus weight matching restricted to permutations (the residual as
``Permutation()``), and measures the per-token (GPT) or per-image (ViT) test loss along
``θ(α) = (1−α)θ_A + α T(θ_B)``. Rows, table, plot and JSON are the MLP demo's
(:class:`symmetries.demo.run.Row`, :class:`~symmetries.demo.run.DemoResult`).

Each aligned row also records ``max |f(T·θ_B)(x) − f(θ_B)(x)|`` over held-out inputs in float64:
every map searched is a symmetry, so aligned B must compute what B computes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from symmetries import landscape as L
from symmetries.action import apply
from symmetries.classes import HeadStructured, Permutation
from symmetries.demo.data import digits
from symmetries.demo.run import SIZE_LIMITS, DemoResult, Progress, Row, _noop, _num
from symmetries.demo.text import TextSplit, stdlib_split
from symmetries.errors import NotAdmittedError
from symmetries.policy import resolve_classes

__all__ = ["TransformerConfig", "TransformerDemoResult", "SIZES", "demo_config", "run_transformer_demo",
           "train_transformer", "permutation_classes", "class_summary", "function_change"]

MODELS = ("gpt", "vit")
PERMUTATION_ONLY = "permutation only"


@dataclass(frozen=True)
class TransformerConfig:
    """Settings of a transformer demo (``model`` ``"gpt"`` or ``"vit"``; see :data:`SIZES`)."""
    model: str = "gpt"
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_mlp: int | None = None             # default 4 · d_model
    context: int = 32                    # GPT: characters per sequence
    chars: int = 200_000                 # GPT: character budget of the corpus (the last 10 % held out)
    patch_size: int = 2                  # ViT: on the 8×8 digits
    steps: int = 1000                    # Adam steps per model (linear warm-up, cosine decay)
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1            # AdamW's decoupled decay
    seed: int = 0
    alphas: int = 25
    solvers: tuple[str, ...] | None = None   # None: every applicable solver, plus weight matching on permutations
    learned_steps: int = 500
    learned_lr: float = 0.05
    learned_batch: int = 32
    selection: int = 256                 # training sequences learned matching selects its result on
    relaxation_seconds: float = 60.0     # the relaxation's time limit: a valid, looser bound when it is reached


#: The sizes ``symmetries demo --model {gpt,vit}`` runs (``full``) and the tests run (``tiny``).
SIZES = {
    ("gpt", "full"): TransformerConfig(model="gpt"),
    ("gpt", "tiny"): TransformerConfig(model="gpt", d_model=16, n_heads=2, d_mlp=32, context=16, chars=6_000,
                                       steps=40, batch_size=16, warmup=5, alphas=5, learned_steps=5,
                                       learned_batch=8, selection=16, relaxation_seconds=5.0),
    ("vit", "full"): TransformerConfig(model="vit", d_model=64, steps=1500, batch_size=64),
    ("vit", "tiny"): TransformerConfig(model="vit", d_model=16, n_heads=2, d_mlp=32, steps=30, batch_size=32,
                                       warmup=5, alphas=5, learned_steps=5, learned_batch=16, selection=32,
                                       relaxation_seconds=5.0),
}


def demo_config(model: str = "gpt", size: str = "full", **changes) -> TransformerConfig:
    """The preset ``SIZES[(model, size)]`` with ``changes`` applied."""
    if (model, size) not in SIZES:
        raise ValueError(f"no preset for model={model!r}, size={size!r}; known: {sorted(SIZES)}")
    return replace(SIZES[(model, size)], **changes)


@dataclass
class TransformerDemoResult(DemoResult):
    """:class:`DemoResult` plus the title, the classes each row searched and the function check."""
    title: str = ""
    classes: dict = field(default_factory=dict)           # method → {space: class}
    function_change: dict = field(default_factory=dict)   # method → max |f(T·θ_B) − f(θ_B)| (float64)

    def as_dict(self) -> dict:
        return super().as_dict() | dict(model=self.config.model, title=self.title, classes=self.classes,
                                        function_change=self.function_change)


def train_transformer(model: nn.Module, sample, *, steps: int, lr: float, warmup: int, batch_size: int, seed: int,
                      weight_decay: float = 0.0, progress=None) -> dict:
    """AdamW on :func:`solvers.losses.mean_loss` (per-token cross-entropy), learning rate
    ``lr · min(1, t/warmup) · ½(1 + cos πt/steps)``; ``sample(batch, generator)`` draws ``(x, y)``.
    Returns a detached state dict."""
    from solvers.losses import mean_loss

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * t / steps)))
    model.train()
    for step in range(steps):
        x, y = sample(batch_size, g)
        loss = mean_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and ((step + 1) % 10 == 0 or step + 1 == steps):
            progress(step + 1, steps)
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def permutation_classes(graph) -> dict:
    """Every space searched in permutations: heads as ``HeadStructured(k, Permutation())``, the
    residual stream and MLP units as ``Permutation()``."""
    out = {}
    for s in graph.spaces():
        default = resolve_classes(graph, None).get(s.name)
        out[s.name] = (HeadStructured(default.num_heads, Permutation()) if isinstance(default, HeadStructured)
                       else Permutation())
    return out


def class_summary(classes: dict) -> str:
    """``"permutation only"`` or ``"heads × <class> residual"`` for a transformer's classes."""
    residual = classes.get("residual")
    inner = {type(c.inner).__name__ for c in classes.values() if isinstance(c, HeadStructured)}
    others = {type(c).__name__ for s, c in classes.items() if s != "residual" and not isinstance(c, HeadStructured)}
    if isinstance(residual, Permutation) and inner <= {"Permutation"} and others <= {"Permutation"}:
        return PERMUTATION_ONLY
    return f"heads × {type(residual).__name__.lower()} residual"


def _data(config: TransformerConfig):
    """``(train, test, sample, arch)`` for the configured model."""
    import architectures

    if config.model == "gpt":
        text: TextSplit = stdlib_split(config.chars, config.context)
        arch = architectures.gpt2(text.vocab_size, config.context, config.d_model, config.n_heads, config.n_layers,
                                  config.d_mlp)
        title = (f"GPT (d={config.d_model}, {config.n_heads} heads, {config.n_layers} layers, context "
                 f"{config.context}) on {len(text.train_ids) + len(text.test_ids):,} characters of the Python "
                 f"standard library (held-out split, per-token loss")
        return text.train, text.test, text.sample, arch, title
    split = digits(seed=config.seed)
    img = lambda x: x.reshape(-1, 1, 8, 8)  # noqa: E731
    train, test = (img(split.train[0]), split.train[1]), (img(split.test[0]), split.test[1])
    arch = architectures.vit(8, config.patch_size, 1, config.d_model, config.n_heads, config.n_layers, config.d_mlp,
                             split.classes)
    title = (f"ViT (d={config.d_model}, {config.n_heads} heads, {config.n_layers} layers, patch "
             f"{config.patch_size}) on digits (test split")

    def sample(batch, g):
        idx = torch.randint(0, len(train[1]), (batch,), generator=g)
        return train[0][idx], train[1][idx]

    return train, test, sample, arch, title


def function_change(arch, params: dict, transforms, x: torch.Tensor) -> float:
    """``max |f(T·θ)(x) − f(θ)(x)|``, parameters, maps and inputs in float64 (a measurement: ``T`` is
    applied even where the graph does not admit it)."""
    m = arch.module(dtype=torch.float64)
    x = x if not x.is_floating_point() else x.double()
    pb = {k: v.double() if v.is_floating_point() else v for k, v in params.items()}
    with torch.no_grad():
        m.load_state_dict(pb)
        y = m(x)
        m.load_state_dict(apply(arch.graph, pb, transforms.to(dtype=torch.float64), check=False))
        return float((m(x) - y).abs().max())


def _plan(config: TransformerConfig, arch) -> list[tuple[str, str, dict | None, str | None]]:
    """``(method, solver, classes or None for the default, skip reason)`` for every row to run."""
    import solvers

    names = list(config.solvers) if config.solvers is not None else [i.name for i in solvers.available()]
    plan = []
    for name in names:
        try:
            classes = resolve_classes(arch.graph, None, solver=solvers.get(name))
        except NotAdmittedError as exc:
            plan.append((name, name, None, f"not applicable with default classes: {exc}"))
            continue
        widest, limit = max(sp.size for sp in arch.graph.spaces()), SIZE_LIMITS.get(name)
        if config.solvers is None and limit is not None and widest > limit:
            plan.append((name, name, None, f"widest space {widest} > {limit}, too slow (--solver {name} forces it)"))
            continue
        plan.append((f"{name} ({class_summary(classes)})", name, None, None))
        if name == "weight_matching":
            perm = permutation_classes(arch.graph)
            plan.append((f"{name} ({class_summary(perm)})", name, perm, None))
    return plan


def _options(name: str, config: TransformerConfig, train) -> dict:
    if name == "relaxation":
        return dict(time_limit=config.relaxation_seconds)
    if name != "learned_matching":
        return {}
    n = min(config.selection, len(train[1]))
    return dict(steps=config.learned_steps, lr=config.learned_lr, batch_size=config.learned_batch,
                selection_data=(train[0][:n], train[1][:n]))


def run_transformer_demo(config: TransformerConfig = TransformerConfig(), *,
                         progress: Progress | None = None) -> TransformerDemoResult:
    """Train two transformers, rewrite to RMS form, align with every applicable solver, measure the paths."""
    import architectures

    import solvers

    if config.model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {config.model!r}")
    progress = progress or _noop
    for name in config.solvers or ():
        solvers.get(name)  # UnknownSolverError naming it, before any training
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    train, test, sample, arch, title = _data(config)
    t0 = time.perf_counter()
    trained = []
    for k, name in enumerate(("A", "B")):
        seed = config.seed + 1000 * k
        p = train_transformer(arch.module(seed=seed), sample, steps=config.steps, lr=config.lr, warmup=config.warmup,
                              batch_size=config.batch_size, seed=seed, weight_decay=config.weight_decay,
                              progress=lambda d, t, n=name: progress(f"train {n}", d, t))
        trained.append(architectures.rewrite_layernorm(arch, p))
    train_seconds = time.perf_counter() - t0
    (rms, pa), (_, pb) = trained
    model = rms.module()
    endpoints = {n: vars(L.evaluate(model, test, p)) for n, p in (("A", pa), ("B", pb))}

    def curve(label, b):
        return L.interpolation_curve(model, pa, b, test, alphas=config.alphas, label=label,
                                     progress=lambda d, t: progress(f"path {label}", d, t))

    cfg = rms.config
    shape = [cfg["d_model"], cfg["n_heads"], cfg["n_layers"], cfg["d_mlp"]]
    naive = Row("naive", curve("naive", pb), L.l2_distance(pa, pb))
    result = TransformerDemoResult(config, shape, endpoints, train_seconds, naive,
                                   title=title + f", {config.alphas} α; barrier = max_α L(α) − mean of endpoints)")
    probe = test[0][:16]
    result.dimension["naive"] = {s: d.as_dict() for s, d in L.matched_dimension(rms.graph, pa, pb).items()}
    for method, name, classes, skip in _plan(config, rms):
        if skip is not None:
            result.rows.append(Row(method, None, None, skipped=skip))
            continue
        progress(f"align {method}", 0, 1)
        try:
            sol = solvers.solve(name, rms, pa, pb, data=train, seed=config.seed, classes=classes,
                                **_options(name, config, train))
            aligned = apply(rms.graph, pb, sol.transforms)   # refuses a map the graph does not admit
        except Exception as exc:  # a solver failing must not end the demo: report it in the table
            result.rows.append(Row(method, None, None, error=f"{type(exc).__name__}: {exc}"))
            continue
        progress(f"align {method}", 1, 1)
        result.classes[method] = {s: repr(c) for s, c in resolve_classes(rms.graph, classes,
                                                                           solver=solvers.get(name)).items()}
        result.function_change[method] = function_change(rms, pb, sol.transforms, probe)
        result.dimension[method] = {s: d.as_dict() for s, d in L.matched_dimension(rms.graph, pa, aligned).items()}
        result.rows.append(Row(method, curve(method, aligned), L.l2_distance(pa, aligned),
                               _num(sol.objective_before), _num(sol.objective_after),
                               solver_seconds=float(sol.wall_time),
                               lower_bound=_num(getattr(sol, "lower_bound", None))))
    result.seconds = time.perf_counter() - start
    return result

