"""Convex relaxation benchmark: certified bound, rounded / polished objective, gap and time vs width.

Two MLPs ``[64, w, w, 10]`` trained on sklearn digits from different seeds (float64), all
hidden spaces searched as permutations. Every engine runs single-threaded (torch, BLAS and
Clarabel at one thread); times are wall clock and this process's CPU time (on a shared machine
the CPU time is the steadier figure). Run::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_relaxations.py \\
        --widths 8 16 32 64 96 128 --clarabel-up-to 64 --direct-up-to 32

Prints Markdown tables; asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import cvxpy as cp
import torch

import architectures
import solvers
from solvers.problem import make_problem
from solvers.algorithms.relaxation import formulate, relax
from solvers.algorithms.relaxation.misfit import build_misfit
from symmetries.classes import Permutation
from symmetries.demo.data import digits


def trained_pair(width: int, steps: int = 150):
    d = digits(dtype=torch.float64)
    x, y = d.train
    arch = architectures.mlp([64, width, width, 10])
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = arch.module(seed=seed, dtype=torch.float64)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        out.append({k: v.detach().clone() for k, v in m.state_dict().items()})
    return arch, out[0], out[1]


def canonical_size(misfit, formulation: str) -> str:
    """Variables and nonzeros of the problem Clarabel receives (after cvxpy's canonicalisation)."""
    data = formulate(misfit, formulation)[0].get_problem_data(cp.CLARABEL)[0]
    return f"{data['A'].shape[1]} / {data['A'].nnz + data['P'].nnz}"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--clarabel-up-to", type=int, default=32, help="also run Clarabel (cvxpy, aux) up to this width")
    ap.add_argument("--direct-up-to", type=int, default=32, help="also time Clarabel on the direct formulation")
    ap.add_argument("--scs", action="store_true", help="with Clarabel, also run SCS (bound corrected by the certificate)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    one = dict(max_threads=1)
    rows, ipm_rows = [], []
    for w in args.widths:
        arch, pa, pb = trained_pair(w)
        wm = solvers.solve("weight_matching", arch, pa, pb, classes=Permutation())
        sol, wall, cpu = timed(lambda: solvers.solve("relaxation", arch, pa, pb, classes=Permutation()))
        e = sol.extra
        rows.append(f"| {w} | {sol.objective_before:.4f} | {wm.objective_after:.4f} | {sol.lower_bound:.4f} | "
                    f"{e['relaxed_value'] - sol.lower_bound:.1e} | {e['rounded_objective']:.4f} | "
                    f"{e['candidates']['rounded']:.4f} | "
                    f"{sol.objective_after:.4f} | {sol.gap:.4f} | {sol.gap / sol.objective_after:.1%} | "
                    f"{e['relaxation_iterations']} | {e['setup_time'] + e['solve_time']:.2f} | {wall:.2f} | {cpu:.2f} |")
        print(rows[-1], flush=True)
        if w <= args.clarabel_up_to:
            misfit = build_misfit(make_problem(arch.graph, pa, pb, classes=Permutation()))
            cells = [str(w)]
            opt, wall, cpu = timed(lambda: relax(misfit, solver="CLARABEL", **one))
            cells += [f"{opt.bound:.4f}", canonical_size(misfit, "aux"), f"{wall:.2f}", f"{cpu:.2f}"]
            if w <= args.direct_up_to:
                opt, wall, cpu = timed(lambda: relax(misfit, solver="CLARABEL", formulation="direct", **one))
                cells += [canonical_size(misfit, "direct"), f"{wall:.2f}", f"{cpu:.2f}"]
            else:
                cells += ["—"] * 3
            if args.scs:
                opt, wall, cpu = timed(lambda: relax(misfit, solver="SCS", eps_abs=1e-4, eps_rel=1e-4))
                cells += [f"{opt.bound:.4f}", f"{wall:.2f}", f"{cpu:.2f}"]
            ipm_rows.append("| " + " | ".join(cells) + " |")
            print(ipm_rows[-1], flush=True)
    print("\nDefault (engine 'apg'), rounding candidates and polish included:\n")
    print("| width | J(identity) | weight matching | bound | f(X̂) − bound | rounded | rounded + polish | "
          "best candidate | gap | gap / J | APG iterations | relaxation (s) | total wall (s) | total CPU (s) |")
    print("|" + "---|" * 14)
    print("\n".join(rows))
    if ipm_rows:
        print("\nThe relaxation alone through cvxpy (Clarabel at one thread; aux and direct formulations"
              + (", SCS eps 1e-4" if args.scs else "") + "):\n")
        head = "| width | Clarabel bound | aux: variables / nnz | aux wall (s) | aux CPU (s) | direct: variables / nnz | " \
               "direct wall (s) | direct CPU (s) |" + (" SCS bound | SCS wall (s) | SCS CPU (s) |" if args.scs else "")
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        print("\n".join(ipm_rows))


if __name__ == "__main__":
    main()
