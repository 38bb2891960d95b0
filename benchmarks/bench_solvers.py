"""Solver benchmark (a script, not part of the test run): prints figures, asserts nothing.

    python benchmarks/bench_solvers.py [--skip-gpt2] [--threads N] [--gpt2-threads 1 2] [--tiny]

1. Weight matching of two 784-512-512-512-10 MLPs (independent random initialisations, float32),
   per LAP backend and mode: wall time (best of 3), sweeps, objective before/after.
2. One sweep's time against its floor: the matmuls ``Σ_e A_e B_eᵀ`` and the assignments it must do.
   Then the full ReLU group: ``Permutation()`` against ``PermutationScaling()`` (and the previous,
   all-eigenvalue scale solver with the plain loop, with ``--old-scaling``), float64, one run printing
   both: wall and CPU time (best of N), sweeps, J — on the MLPs, and on two SqueezeNet-1.1-layout
   convnets (fire modules: expands concatenated; graph by ``architectures.from_module``; 1000 classes;
   independent random inits).
3. A GPT-2-small-shaped pair (``architectures.gpt2``: 12 layers, d=768, MLP 3072, 12 heads,
   vocabulary 50257, context 1024, tied embeddings; random weights; LayerNorm rewritten to gain-free
   RMSNorm so the residual stream admits ``Orthogonal``):
   B is a random permutation + head + orthogonal-residual transform of A plus noise, aligned with
   ``Permutation`` (MLP units), ``HeadStructured(12, Permutation)`` (heads, one head permutation per
   attention) and ``Orthogonal`` (residual). Time, sweeps, recovery, peak memory (RSS) and the
   per-space split (time in each space's subproblem data — B's rows with the other transforms applied
   and the cross products — and its solve, and in the objective ``J`` recorded after each sweep).
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import architectures  # noqa: E402
import solvers  # noqa: E402
import solvers.algorithms.weight_matching as wm  # noqa: E402
from solvers import memory  # noqa: E402
from solvers.matcher import Matcher, search_units  # noqa: E402
from solvers.memory import release_free_memory  # noqa: E402
from symmetries import HeadStructured, Permutation, apply, random_transforms  # noqa: E402
from symmetries.assignment import backends, default_backend, solve_assignment  # noqa: E402
from symmetries.roles import Role  # noqa: E402


def status(sol) -> str:
    """A run's status, flagged when it stopped at the iteration cap instead of converging."""
    return sol.status + ("  <-- hit max_iter: figures are not converged" if sol.status == "max_iter" else "")


def best_of(fn, repeat=3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def best_of_cpu(fn, repeat=3):
    """``(best wall, best CPU time of this process, result)`` over ``repeat`` runs."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def scaling_section(widths, repeat, old: bool, tiny: bool = False):
    """Permutations against the full ReLU group on the same pair (float64), one run printing both: the
    MLPs, then the SqueezeNet-1.1-layout convnets."""
    arch = architectures.mlp(widths)
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    print(f"\n== 1b. permutation vs permutation × scaling, two {'-'.join(map(str, widths))} MLPs (float64) ==")
    _scaling_rows(arch.graph, a, b, repeat, old)
    width, classes = (0.25, 10) if tiny else (1.0, 1000)
    torch.manual_seed(0)
    net_a = SqueezeNet11(width, classes).double().eval()
    torch.manual_seed(1)
    net_b = SqueezeNet11(width, classes).double().eval()
    graph = architectures.from_module(net_a, torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    n = sum(p.numel() for p in net_a.parameters())
    print(f"\n== 1c. the same, two SqueezeNet-1.1-layout convnets ({len(list(graph.spaces()))} spaces, "
          f"{n / 1e6:.2f} M parameters, float64) ==")
    _scaling_rows(graph, net_a.state_dict(), net_b.state_dict(), repeat, False)


def _scaling_rows(graph, a, b, repeat, old: bool):
    print(f"{'classes':<34} {'wall [s]':>9} {'CPU [s]':>8} {'sweeps':>6} {'J before':>10} {'J after':>10}  status")
    rows = [("permutation", {}), ("permutation_scaling", {})]
    if old:
        rows.append(("permutation_scaling (old: eig, plain)", dict(start="forward", _old=True)))
    base = None
    for cls, kw in rows:
        if kw.pop("_old", False):
            run = _old_scaling_run(graph, a, b)
            wall, cpu, sol = best_of_cpu(run, 1)
        else:
            wall, cpu, sol = best_of_cpu(lambda: solvers.solve("weight_matching", graph, a, b,
                                                               classes=cls.split()[0], seed=0, **kw), repeat)
        base = base or (wall, cpu)
        print(f"{cls:<34} {wall:9.3f} {cpu:8.3f} {sol.iterations:6d} {sol.objective_before:10.2f} "
              f"{sol.objective_after:10.2f}  {status(sol)}  ({wall / base[0]:.1f}× wall, {cpu / base[1]:.1f}× CPU)")


def _old_scaling_run(graph, a, b):
    """The previous method: every scale by companion-matrix eigenvalues, no staged start or scale descent."""
    import solvers.subproblems as sp
    from solvers.scaling import best_scale_eig

    def run():
        saved = (sp.best_scale, wm._MonomialDescent.__call__, wm.PermutationScaling)
        sp.best_scale, wm._MonomialDescent.__call__ = best_scale_eig, (lambda *args, **kw: None)
        wm.PermutationScaling = type("NoStage", (), {})  # the staged start looks for this class
        try:
            return solvers.solve("weight_matching", graph, a, b, classes="permutation_scaling", seed=0)
        finally:
            sp.best_scale, wm._MonomialDescent.__call__, wm.PermutationScaling = saved
    return run


class Fire(torch.nn.Module):
    """SqueezeNet's fire module: a 1×1 squeeze, then 1×1 and 3×3 expands, concatenated."""

    def __init__(self, c_in, squeeze, expand):
        super().__init__()
        self.squeeze = torch.nn.Conv2d(c_in, squeeze, 1)
        self.expand1x1 = torch.nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = torch.nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


class SqueezeNet11(torch.nn.Module):
    """torchvision's ``squeezenet1_1`` layout (channel widths × ``width``), written out: no torchvision."""

    def __init__(self, width=1.0, classes=1000):
        super().__init__()
        c = lambda v: max(1, round(v * width))  # noqa: E731
        pool = lambda: torch.nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, c(64), 3, stride=2), torch.nn.ReLU(), pool(),
            Fire(c(64), c(16), c(64)), Fire(c(128), c(16), c(64)), pool(),
            Fire(c(128), c(32), c(128)), Fire(c(256), c(32), c(128)), pool(),
            Fire(c(256), c(48), c(192)), Fire(c(384), c(48), c(192)),
            Fire(c(384), c(64), c(256)), Fire(c(512), c(64), c(256)))
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Conv2d(c(512), classes, 1),
                                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def mlp_section(widths):
    arch = architectures.mlp(widths)
    a = arch.module(seed=0).state_dict()
    b = arch.module(seed=1).state_dict()
    print(f"\n== 1. weight matching, two {'-'.join(map(str, widths))} MLPs (float32, independent inits) ==")
    print(f"{'mode':<8} {'backend':<8} {'time [s]':>9} {'sweeps':>6} {'J before':>10} {'J after':>10}  status")
    for mode in ("rebasin", "default"):
        for backend in backends():
            t, sol = best_of(lambda: solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(),
                                                   mode=mode, backend=backend, seed=0))
            print(f"{mode:<8} {backend:<8} {t:9.4f} {sol.iterations:6d} {sol.objective_before:10.2f} "
                  f"{sol.objective_after:10.2f}  {status(sol)}")
    return arch, a, b


def sweep_floor(arch, a, b):
    print(f"\n== 2. one sweep against its floor (same MLPs, permutations, {default_backend()}) ==")
    problem = solvers.make_problem(arch.graph, a, b, classes=Permutation())
    matcher = Matcher(problem)
    units = search_units(problem)
    sol = solvers.solve("weight_matching", arch.graph, a, b, classes=Permutation(), mode="rebasin", seed=0)
    transforms = dict(sol.transforms)
    per_sweep = sol.wall_time / max(sol.iterations, 1)
    locals_ = [matcher.local(s[0], transforms) for s in units]
    scores = [loc.cross(Role.OUT, Role.IN) for loc in locals_]
    mats = [(x, y) for loc in locals_ for r in (Role.OUT, Role.IN) for x, y in loc.pairs[r]]
    t_mm, _ = best_of(lambda: [x @ y.T for x, y in mats], 5)
    t_lap, _ = best_of(lambda: [solve_assignment(m) for m in scores], 5)
    t_local, _ = best_of(lambda: [matcher.local(s[0], transforms) for s in units], 5)
    flops = sum(2 * x.shape[0] * x.shape[1] * y.shape[0] for x, y in mats)
    print(f"measured sweep (solve time / sweeps)      {per_sweep * 1e3:8.2f} ms  ({sol.iterations} sweeps, "
          f"{status(sol)})")
    print(f"floor: matmuls Σ A_e B_eᵀ ({flops / 1e9:.2f} GFLOP)      {t_mm * 1e3:8.2f} ms "
          f"({flops / t_mm / 1e9:.0f} GFLOP/s)")
    print(f"floor: assignments ({len(scores)} LAPs of {scores[0].shape[0]})         {t_lap * 1e3:8.2f} ms")
    print(f"gathers (B with other transforms applied)  {t_local * 1e3:8.2f} ms")
    print(f"floor total                                {(t_mm + t_lap) * 1e3:8.2f} ms")


def gpt2_graph(layers=12, d=768, heads=12, d_mlp=3072, vocab=50257, ctx=1024):
    """GPT-2-small shape from :func:`architectures.gpt2` with the LayerNorm rewrite (gain-free RMSNorm,
    so the residual stream admits ``Orthogonal``) and tied embeddings; only the graph is built."""
    return architectures.gpt2(vocab, ctx, d, heads, layers, d_mlp, norm="rms", tie_embeddings=True).graph


def rss_mb() -> float:
    """Current resident set size (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRSS(threading.Thread):
    """Samples the resident set size every 5 ms while running (``with PeakRSS() as p: …; p.peak``)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._stop_event = rss_mb(), threading.Event()

    def run(self):
        while not self._stop_event.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss_mb())


class SpaceSplit:
    """Wall and CPU time per space (building its subproblem data; solving it) and in the objective, by
    wrapping the weight-matching module's ``Matcher.local``, ``solve_local``, ``solve_heads`` and
    ``TensorObjective.__call__`` (``J`` after each sweep, tensors whose transforms changed) while active."""

    def __init__(self):
        self.data, self.solve, self.objective = {}, {}, [0.0, 0.0, 0]

    def _timed(self, fn, key_of, table):
        def wrapper(*args, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kw)
            finally:
                row = table.setdefault(key_of(args), [0.0, 0.0, 0])
                row[0] += time.perf_counter() - t0
                row[1] += time.process_time() - c0
                row[2] += 1
        return wrapper

    def __enter__(self):
        from solvers.local import Matcher
        from solvers.reuse import TensorObjective
        self._saved = (Matcher.local, wm.solve_local, wm.solve_heads, TensorObjective.__call__)
        self._current = None
        table_obj = {}

        def key_local(args):
            self._current = args[1]
            return args[1]
        Matcher.local = self._timed(Matcher.local, key_local, self.data)
        wm.solve_local = self._timed(wm.solve_local, lambda args: self._current, self.solve)
        wm.solve_heads = self._timed(wm.solve_heads, lambda args: self._current, self.solve)
        TensorObjective.__call__ = self._timed(TensorObjective.__call__, lambda args: "J", table_obj)
        self._table_obj = table_obj
        return self

    def __exit__(self, *exc):
        from solvers.local import Matcher
        from solvers.reuse import TensorObjective
        Matcher.local, wm.solve_local, wm.solve_heads, TensorObjective.__call__ = self._saved
        self.objective = self._table_obj.get("J", [0.0, 0.0, 0])

    def report(self, classes):
        groups: dict[str, list] = {}
        for table, col in ((self.data, 0), (self.solve, 1)):
            for space, (wall, cpu, calls) in table.items():
                kind = type(classes[space]).__name__ if space in classes else "?"
                kind += f"({classes[space].inner.__class__.__name__})" if kind == "HeadStructured" else ""
                row = groups.setdefault(kind, [[0.0, 0.0], [0.0, 0.0], set()])
                row[col][0] += wall
                row[col][1] += cpu
                row[2].add(space)
        print("per-space split (wall / CPU seconds, summed over visits):")
        print(f"  {'class':<30} {'spaces':>6} {'data: B rows + A Bᵀ':>22} {'solve':>16}")
        for kind, (d, s_, spaces) in sorted(groups.items(), key=lambda kv: -kv[1][0][0] - kv[1][1][0]):
            print(f"  {kind:<30} {len(spaces):6d} {d[0]:10.1f} / {d[1]:7.1f} {s_[0]:7.1f} / {s_[1]:6.1f}")
        top = sorted(self.data, key=lambda s: -(self.data[s][0] + self.solve.get(s, [0])[0]))[:3]
        print("  slowest spaces: " + ", ".join(f"{s} {self.data[s][0] + self.solve.get(s, [0])[0]:.1f} s "
                                              f"({self.data[s][2]} visits)" for s in top))
        w, c, n = self.objective
        print(f"  objective J ({n} evaluations)       {w:10.1f} / {c:7.1f}")


def gpt2_section(shape: dict):
    print(f"\n== 3. GPT-2-small-shaped pair: permutation (MLP) + heads + orthogonal residual, "
          f"{torch.get_num_threads()} thread(s) ==")
    print(", ".join(f"{k}={v}" for k, v in shape.items()))
    g = gpt2_graph(**shape)
    classes = {s.name: (HeadStructured(s.cls.num_heads, Permutation()) if s.head_group else s.cls)
               for s in g.spaces()}
    gen = torch.Generator().manual_seed(0)
    a = {p.name: 0.02 * torch.randn(p.shape, generator=gen) for p in g.parameters()}
    model_mb = sum(v.numel() * v.element_size() for v in a.values()) / 2**20
    t = random_transforms(g, 0, classes=classes)
    b = apply(g, a, t, check=False)
    for v in b.values():
        v.add_(1e-3 * torch.randn(v.shape, generator=gen))
    gc.collect()
    release_free_memory()  # the set-up's freed blocks go back: the base is what is live (A, B, torch)
    base = rss_mb()
    split = SpaceSplit()
    with PeakRSS() as sampler, split:
        t0, c0 = time.perf_counter(), time.process_time()
        sol = solvers.solve("weight_matching", g, a, b, classes=classes, seed=0, max_iter=10)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = sampler.peak
    truth = t.inverse()
    perms = [s for s, c in classes.items() if isinstance(c, Permutation)]
    heads = [s for s, c in classes.items() if isinstance(c, HeadStructured)]
    dense = [s for s in classes if s not in perms and s not in heads]
    perm_ok = sum(bool(torch.equal(sol.transforms[s].as_matrix(), truth[s].as_matrix())) for s in perms)
    heads_ok = sum(sol.transforms[s].head_perm.tolist() == truth[s].head_perm.tolist() for s in heads)
    dense_err = max((float((sol.transforms[s].as_matrix() - truth[s].as_matrix()).abs().max()) for s in dense),
                    default=float("nan"))
    print(f"parameters {sum(v.numel() for v in a.values()) / 1e6:.1f} M, one model {model_mb:.0f} MiB (float32)")
    print(f"time {elapsed:.1f} s (CPU {cpu:.1f} s), sweeps {sol.iterations}, status {status(sol)}, "
          f"history {[round(x, 3) for x in sol.history]}")
    print(f"solver: {sol.message}")
    split.report(classes)
    print(f"recovered: MLP permutations {perm_ok}/{len(perms)}, head permutations {heads_ok}/{len(heads)}, "
          f"{'/'.join(dense)} max |O − O_true| {dense_err:.2e}")
    trimmed = memory.TRIM_BYTES >= 0
    print(f"RSS before solve (interpreter, torch, A, B; heap trimmed) {base:.0f} MiB, peak during solve {peak:.0f} MiB: "
          f"the solver's extra {peak - base:.0f} MiB = {(peak - base) / model_mb:.2f} × one model; A + B + extra = "
          f"{(2 * model_mb + peak - base) / model_mb:.2f} × one model (heap trimmed between visits: "
          f"{'yes' if trimmed else 'no, SYMMETRIES_TRIM_BYTES < 0'})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--gpt2-threads", type=int, nargs="+", default=None,
                        help="run section 3 once per thread count (default: --threads)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the MLP timings")
    parser.add_argument("--old-scaling", action="store_true",
                        help="also time the previous permutation × scaling solver (slow: minutes)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke run of the script, no figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    default_threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}, "
          f"LAP backends {list(backends())}")
    widths = [20, 16, 16, 16, 4] if args.tiny else [784, 512, 512, 512, 10]
    shape = (dict(layers=2, d=16, heads=4, d_mlp=32, vocab=50, ctx=8) if args.tiny else
             dict(layers=12, d=768, heads=12, d_mlp=3072, vocab=50257, ctx=1024))
    arch, a, b = mlp_section(widths)
    scaling_section(widths, args.repeat, args.old_scaling, args.tiny)
    sweep_floor(arch, a, b)
    if not args.skip_gpt2:
        for n in args.gpt2_threads or [default_threads]:
            torch.set_num_threads(n)
            gpt2_section(shape)
        torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
