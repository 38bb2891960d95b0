"""Solver time with one thread, with the default threads, and beside a busy neighbour.

For each case the solve runs (best of ``--repeat``):

* ``1 thread``       — ``torch.set_num_threads(1)`` for the whole run;
* ``default``        — torch's default threads, the library's thread policy switched off;
* ``busy, no policy``— default threads while ``--burners`` processes spin on the CPU beside it;
* ``busy, policy``   — the same neighbour, with the policy on (``solvers.threads``: one thread
  for a solve whose sweep is below ``SINGLE_THREAD_WORK`` multiply-adds, else the default; the
  door's checks on one thread below ``SINGLE_THREAD_ENTRIES`` entries).

Cases: the demo's relaxation (``[64, 128, 128, 10]``, two width-128 spaces), weight matching on
``784-512-512-512-10`` with permutations and with permutation × scaling. Run::

    python benchmarks/bench_threads.py            # prints a Markdown table; asserts nothing
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # this checkout's packages, not an installed copy

import architectures  # noqa: E402
import solvers  # noqa: E402
import solvers.threads as threads  # noqa: E402


def _burn(stop):
    x = 0.0
    while not stop.is_set():
        for i in range(100000):
            x += i * 1e-9


class Neighbour:
    """``n`` processes spinning on the CPU while the block runs."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.stop = mp.Event()
        self.procs = [mp.Process(target=_burn, args=(self.stop,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.procs:
            p.join(5)


def cases(tiny: bool):
    small = [16, 16] if tiny else [128, 128]
    big = [64, 32, 32, 10] if tiny else [784, 512, 512, 512, 10]
    relax = architectures.mlp([64, *small, 10])
    mlp = architectures.mlp(big)
    pair = lambda arch: [arch.module(seed=s, dtype=torch.float64).state_dict() for s in (0, 1)]  # noqa: E731
    ra, rb = pair(relax)
    ma, mb = pair(mlp)
    return [  # (label, solver, architecture, A, B, options)
        (f"relaxation {relax.name}", "relaxation", relax, ra, rb, {}),
        (f"weight_matching {mlp.name}, permutation", "weight_matching", mlp, ma, mb, {}),
        (f"weight_matching {mlp.name}, permutation_scaling", "weight_matching", mlp, ma, mb,
         {"classes": "permutation_scaling", "max_iter": 20}),
    ]


def best(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--burners", type=int, default=mp.cpu_count())
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke run of the script")
    ap.add_argument("--skip-scaling", action="store_true", help="leave out the permutation × scaling case")
    args = ap.parse_args()
    default = torch.get_num_threads()
    policy, door = threads.SINGLE_THREAD_WORK, threads.SINGLE_THREAD_ENTRIES
    print(f"torch {torch.__version__}, default threads {default}, neighbour: {args.burners} spinning processes, "
          f"policy threshold {policy:.1e} multiply-adds\n")
    print("| case | 1 thread | default | busy, no policy | busy, policy | policy's threads |")
    print("|---|---|---|---|---|---|")
    for label, name, arch, a, b, options in cases(args.tiny):
        if args.skip_scaling and "scaling" in label:
            continue
        fn = lambda: solvers.solve(name, arch, a, b, **options)  # noqa: E731
        chosen = threads.threads_for(solvers.make_problem(arch, a, b))
        fn()  # warm up (imports, lazy solver registration)
        row = []
        threads.SINGLE_THREAD_WORK = threads.SINGLE_THREAD_ENTRIES = 0  # policy off (the solve and the door)
        torch.set_num_threads(1)
        row.append(best(fn, args.repeat))
        torch.set_num_threads(default)
        row.append(best(fn, args.repeat))
        with Neighbour(args.burners):
            row.append(best(fn, args.repeat))
            threads.SINGLE_THREAD_WORK, threads.SINGLE_THREAD_ENTRIES = policy, door
            row.append(best(fn, args.repeat))
        print(f"| {label} | " + " | ".join(f"{t:.2f} s" for t in row) + f" | {chosen} |", flush=True)


if __name__ == "__main__":
    main()
