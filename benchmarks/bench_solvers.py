"""Solver benchmark (a script, not part of the test run): prints figures, asserts nothing.

    OMP_NUM_THREADS=2 python benchmarks/bench_solvers.py [--skip-gpt2] [--threads 2] [--tiny]

1. Weight matching of two 784-512-512-512-10 MLPs (independent random initialisations, float32),
   per LAP backend and mode: wall time (best of 3), sweeps, objective before/after.
2. One sweep's time against its floor: the matmuls ``Σ_e A_e B_eᵀ`` and the assignments it must do.
3. A GPT-2-small-shaped pair (``architectures.gpt2``: 12 layers, d=768, MLP 3072, 12 heads,
   vocabulary 50257, context 1024, tied embeddings; random weights; LayerNorm rewritten to gain-free
   RMSNorm so the residual stream admits ``Orthogonal``):
   B is a random permutation + head + orthogonal-residual transform of A plus noise, aligned with
   ``Permutation`` (MLP units), ``HeadStructured(12, Permutation)`` (heads, one head permutation per
   attention) and ``Orthogonal`` (residual). Time, sweeps, recovery and peak memory (RSS).
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
from solvers.local import Matcher, search_units  # noqa: E402
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


def gpt2_section(shape: dict):
    print("\n== 3. GPT-2-small-shaped pair: permutation (MLP) + heads + orthogonal residual ==")
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
    base = rss_mb()
    with PeakRSS() as sampler:
        t0 = time.perf_counter()
        sol = solvers.solve("weight_matching", g, a, b, classes=classes, seed=0, max_iter=10)
        elapsed = time.perf_counter() - t0
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
    print(f"time {elapsed:.1f} s, sweeps {sol.iterations}, status {status(sol)}, "
          f"history {[round(x, 3) for x in sol.history]}")
    print(f"recovered: MLP permutations {perm_ok}/{len(perms)}, head permutations {heads_ok}/{len(heads)}, "
          f"{'/'.join(dense)} max |O − O_true| {dense_err:.2e}")
    print(f"RSS before solve (interpreter, torch, A, B) {base:.0f} MiB, peak during solve {peak:.0f} MiB: the "
          f"solver's extra {peak - base:.0f} MiB = {(peak - base) / model_mb:.2f} × one model; A + B + extra = "
          f"{(2 * model_mb + peak - base) / model_mb:.2f} × one model")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke run of the script, no figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}, "
          f"LAP backends {list(backends())}")
    widths = [20, 16, 16, 16, 4] if args.tiny else [784, 512, 512, 512, 10]
    shape = (dict(layers=2, d=16, heads=4, d_mlp=32, vocab=50, ctx=8) if args.tiny else
             dict(layers=12, d=768, heads=12, d_mlp=3072, vocab=50257, ctx=1024))
    arch, a, b = mlp_section(widths)
    sweep_floor(arch, a, b)
    if not args.skip_gpt2:
        gpt2_section(shape)


if __name__ == "__main__":
    main()
