"""Every figure issue #14 asks for, in one run (a script, not part of CI: prints, asserts nothing).

    python benchmarks/run_all.py                 # full shapes, no streaming run (~10–20 min on 2 cores)
    python benchmarks/run_all.py --quick         # tiny shapes: checks every script runs (~1–2 min)
    python benchmarks/run_all.py --streaming     # also the GPT-2-XL-shaped streamed alignment (~6 GB a model
                                                 # on disk, tens of minutes; with --quick a tiny shape)
    python benchmarks/run_all.py --rebasin-python /path/to/venv/bin/python   # rebasin in another environment

In order, each in its own process (its output as it comes, then its wall time):

1. ``bench_threads.py`` — the relaxation and weight matching (permutations, permutation × scaling) with
   1 thread, torch's default threads, and default threads beside CPU-burning processes (policy off / on);
2. ``bench_solvers.py`` — weight matching on the 784-512-512-512-10 MLP per mode and LAP backend;
   permutation vs permutation × scaling; one sweep against its floor; the GPT-2-small shape with 1 thread
   and with the default threads: time, CPU, per-space split, recovery, peak memory;
3. ``bench_rebasin.py`` — the rebasin-shape MLP against rebasin 0.0.47 (skipped when rebasin is not
   importable by the interpreter that runs it: ``--rebasin-python``, default this one);
4. ``bench_streaming.py`` (``--streaming``) — the GPT-2-XL-shaped sharded pair aligned streamed: peak RSS
   against one model's size, wall time.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def steps(args) -> list[tuple[str, list[str]]]:
    py, quick = sys.executable, ["--tiny"] if args.quick else []
    default = str(torch.get_num_threads())
    out = [
        ("threads: relaxation and weight matching, 1 thread / default / beside a busy neighbour",
         [py, str(HERE / "bench_threads.py"), *quick]),
        ("solvers: MLP modes and backends, permutation vs permutation x scaling, sweep floor, GPT-2-small shape",
         [py, str(HERE / "bench_solvers.py"), *quick, "--gpt2-threads", "1", default]),
        ("rebasin-shape MLP against rebasin 0.0.47",
         [args.rebasin_python or py, str(HERE / "bench_rebasin.py"), *quick]),
    ]
    if args.streaming:
        tiny = ["--layers", "2", "--d", "128", "--heads", "4", "--vocab", "1000", "--ctx", "64"] if args.quick else []
        out.append(("streaming: GPT-2-XL-shaped sharded pair, peak RSS", [py, str(HERE / "bench_streaming.py"), *tiny]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes in every script (a smoke run, no figures)")
    ap.add_argument("--streaming", action="store_true", help="also run the streamed GPT-2-XL-shaped alignment (long)")
    ap.add_argument("--rebasin-python", default=None, help="the interpreter for bench_rebasin.py (one with rebasin)")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, default threads {torch.get_num_threads()}"
          f"{', quick (tiny shapes)' if args.quick else ''}", flush=True)
    summary = []
    for title, cmd in steps(args):
        print(f"\n{'=' * 100}\n## {title}\n$ {' '.join(cmd)}\n", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        summary.append((title, rc, time.perf_counter() - t0))
    if not args.streaming:
        summary.append(("streaming: GPT-2-XL-shaped sharded pair (run with --streaming)", None, 0.0))
    print(f"\n{'=' * 100}\n## summary")
    for title, rc, wall in summary:
        state = "skipped" if rc is None else ("ok" if rc == 0 else f"FAILED (exit {rc})")
        print(f"{state:<16} {wall:8.1f} s  {title}")
    return 0 if all(rc in (0, None) for _, rc, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
