"""Convex relaxation benchmark: certified bound, rounded / polished objective, gap and time vs width.

Two MLPs ``[64, w, w, 10]`` trained on sklearn digits from different seeds (float64), all
hidden spaces searched as permutations. Run: ``python benchmarks/bench_relaxations.py
--widths 8 16 32 64``. Prints a Markdown table; assert nothing.
"""
from __future__ import annotations

import argparse
import time

import torch

import architectures
import solvers
from solvers.problem import make_problem
from solvers.relaxation import relax
from solvers.relaxation_misfit import build_misfit
from symmetries.classes import Permutation
from symmetries.data import digits


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--direct-up-to", type=int, default=32, help="also time the direct formulation up to this width")
    ap.add_argument("--scs", action="store_true", help="also time SCS (bound corrected by the certificate)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch threads 1; cvxpy solvers: Clarabel (default){', SCS' if args.scs else ''}")
    print("| width | J(identity) | weight matching | bound | rounded | rounded + polish | gap | gap / J | "
          "relaxation time (s) | total (s) | direct formulation (s) |" + (" SCS bound | SCS gap | SCS total (s) |" if args.scs else ""))
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if args.scs else ""))
    for w in args.widths:
        arch, pa, pb = trained_pair(w)
        wm = solvers.solve("weight_matching", arch, pa, pb, classes=Permutation())
        sol = solvers.solve("relaxation", arch, pa, pb, classes=Permutation())
        total = sol.wall_time
        relax_time = sol.extra["setup_time"] + sol.extra["solve_time"]
        direct = "—"
        if w <= args.direct_up_to:
            misfit = build_misfit(make_problem(arch.graph, pa, pb, classes=Permutation()))
            t = time.perf_counter()
            relax(misfit, solver="CLARABEL", formulation="direct")
            direct = f"{time.perf_counter() - t:.2f}"
        row = (f"| {w} | {sol.objective_before:.4f} | {wm.objective_after:.4f} | {sol.lower_bound:.4f} | "
               f"{sol.extra['rounded_objective']:.4f} | {sol.objective_after:.4f} | {sol.gap:.4f} | "
               f"{sol.gap / sol.objective_after:.1%} | {relax_time:.2f} | {total:.2f} | {direct} |")
        if args.scs:
            scs = solvers.solve("relaxation", arch, pa, pb, classes=Permutation(), cvxpy_solver="SCS",
                                solver_options=dict(eps_abs=1e-4, eps_rel=1e-4))
            row += f" {scs.lower_bound:.4f} | {scs.gap:.4f} | {scs.wall_time:.2f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
