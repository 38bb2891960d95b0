"""Weight matching against the PyTorch peer, rebasin 0.0.47 (a script, not part of the test run: prints
figures, asserts nothing; rebasin is skipped with a message when it is not installed).

    python benchmarks/bench_rebasin.py [--repeat 7] [--threads N] [--tiny]

Two 784-512-512-512-10 ReLU MLPs (``architectures.mlp``, independent random initialisations,
float32). For ``solvers.weight_matching`` (default mode, and ``mode="rebasin"``: Git Re-Basin's
published loop) and for rebasin's ``PermutationCoordinateDescent`` (its tracing set-up, then
``rebasin()``): wall and CPU time (best of N), the objective ``Σ_p ⟨θ_A[p], (T·θ_B)[p]⟩`` and
``J = Σ_p ‖θ_A[p] − (T·θ_B)[p]‖²``, both computed by this library's code on each result's permuted B,
and whether the aligned B computes what B computes (max |Δ output| on 256 random inputs).

rebasin is not a dependency: install it in a separate environment, e.g.::

    python -m venv /tmp/rb && echo "$(python -c 'import site; print(site.getsitepackages()[0])')" \\
        > /tmp/rb/lib/python3.11/site-packages/project.pth
    /tmp/rb/bin/pip install --no-deps rebasin==0.0.47 torchview graphviz
    /tmp/rb/bin/python benchmarks/bench_rebasin.py
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import architectures  # noqa: E402
import solvers  # noqa: E402


def best_of(fn, repeat: int, setup=None):
    """``(best wall, best CPU, last result)`` over ``repeat`` runs; ``setup()`` (untimed) gives ``fn``'s argument."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        arg = setup() if setup is not None else None
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(arg) if setup is not None else fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def inner(a: dict, b: dict) -> float:
    """``Σ_p ⟨a[p], b[p]⟩`` in float64."""
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a)


def report(name, wall, cpu, graph, a, b, aligned, module, x, base_out, ref_wall=None):
    j = solvers.make_problem(graph, a, aligned).objective(None)  # J of the aligned B against A, by our code
    module.load_state_dict(aligned)
    with torch.no_grad():
        drift = float((module(x) - base_out).abs().max())
    ratio = f"{wall / ref_wall:7.1f}×" if ref_wall else "      —"
    print(f"{name:<44} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} {ratio} {inner(a, aligned):10.3f} {j:10.3f} {drift:10.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="best of N for our solver (rebasin: best of min(N, 3))")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="a 64-32-32-32-10 pair: a smoke run, no figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = [64, 32, 32, 32, 10] if args.tiny else [784, 512, 512, 512, 10]
    arch = architectures.mlp(widths)
    model_a, model_b = arch.module(seed=0), arch.module(seed=1)
    a, b = model_a.state_dict(), model_b.state_dict()
    x = torch.randn(256, widths[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_out = model_b(x)
    probe = arch.module()
    print(f"== weight matching vs rebasin 0.0.47: two {'-'.join(map(str, widths))} MLPs (float32, independent "
          f"inits), torch {torch.__version__}, {torch.get_num_threads()} threads ==")
    print(f"{'method':<44} {'wall [ms]':>9} {'CPU [ms]':>9} {'vs ours':>8} {'Σ⟨A,T·B⟩':>10} {'J':>10} "
          f"{'|Δ output|':>10}")
    report("no alignment (B as it is)", 0.0, 0.0, arch.graph, a, b, b, probe, x, base_out)
    rows = {}
    for mode in ("default", "rebasin"):
        wall, cpu, sol = best_of(lambda: solvers.weight_matching(arch.graph, a, b, mode=mode), args.repeat)
        rows[mode] = wall
        report(f"solvers.weight_matching, mode={mode} ({sol.iterations} sweeps)", wall, cpu, arch.graph, a, b,
               sol.apply(b), probe, x, base_out, rows["default"] if mode != "default" else None)
    wall, cpu, graph = best_of(lambda: architectures.from_module(arch.module(), x[:2]), args.repeat)
    print(f"{'  + graph from the module (from_module)':<44} {wall * 1e3:9.1f} {cpu * 1e3:9.1f}")
    try:
        from rebasin import PermutationCoordinateDescent
    except ImportError as exc:
        print(f"rebasin is not installed ({exc}): skipped (see this script's docstring to install it beside the "
              f"project)")
        return
    n = min(args.repeat, 3)
    sweeps = []
    step = PermutationCoordinateDescent._calculate_permutations_step

    def counted(self, loop):  # count rebasin's sweeps (its loop stops after one without progress)
        sweeps.append(self)
        return step(self, loop)
    PermutationCoordinateDescent._calculate_permutations_step = counted

    def fresh():
        torch.manual_seed(0)  # rebasin draws its visiting order from torch's global generator
        return copy.deepcopy(model_b)
    t_init, c_init, pcd = best_of(lambda mb: PermutationCoordinateDescent(model_a, mb, x[:2]), n, fresh)
    t_run, c_run, pcd = best_of(lambda p: (p.rebasin(), p)[1],
                                n, lambda: PermutationCoordinateDescent(model_a, fresh(), x[:2]))
    aligned = {k: v.detach().clone() for k, v in pcd.model_b.state_dict().items()}
    count = sum(s is pcd for s in sweeps)
    report("rebasin: PermutationCoordinateDescent set-up", t_init, c_init, arch.graph, a, b, b, probe, x, base_out,
           rows["default"])
    report(f"rebasin: .rebasin() ({count} sweeps, then permute B)", t_run, c_run, arch.graph, a, b, aligned, probe, x,
           base_out, rows["default"])
    total = t_init + t_run
    print(f"{'rebasin: set-up + rebasin()':<44} {total * 1e3:9.1f} {(c_init + c_run) * 1e3:9.1f} "
          f"{total / rows['default']:7.1f}×  (ours, default mode: {rows['default'] * 1e3:.1f} ms; "
          f"mode=rebasin: {total / rows['rebasin']:.1f}× faster than rebasin)")


if __name__ == "__main__":
    main()
