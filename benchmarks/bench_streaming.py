"""Streaming alignment of a sharded checkpoint pair larger than you want in memory: peak RSS and wall time.

Generates (seeded, on disk, never in the repository) a GPT-2-shaped pair in the Hugging Face layout —
``model.safetensors.index.json`` + shards — written one tensor at a time: A with GPT-2's init scale, B a
hidden permutation of A (residual, heads, MLP units) plus noise, so the answer is known. Then, in a
fresh process, aligns B to A streamed (:func:`symmetries.checkpoints.align_checkpoints`, what
``symmetries align A_DIR B_DIR -o OUT`` runs) and prints peak RSS (``resource.getrusage``; psutil if
installed for the baseline) against one model's size, the wall time of the solve and of the write, and
whether the hidden permutation was recovered (L2 after ≈ the noise).

    python benchmarks/bench_streaming.py                      # GPT-2-XL shape: 48 layers, d=1600 (~6.2 GB each)
    python benchmarks/bench_streaming.py --layers 24 --d 1024 --heads 16   # GPT-2-medium shape
    python benchmarks/bench_streaming.py --layers 2 --d 128 --heads 4 --vocab 1000   # a quick check

``--dir`` keeps the pair (default: a temporary folder, removed afterwards); ``--max-iter`` caps the sweeps.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # /proc on Linux
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """This process's peak RSS. ``VmHWM`` (Linux): the high-water mark of the current address space, which
    starts afresh at ``exec`` — ``ru_maxrss`` keeps the forking parent's resident set (``exec_mmap`` folds the
    old address space's peak into it), so after generating the pair in the parent it reported the parent's
    peak, not the alignment's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _arch(args):
    import architectures
    return architectures.gpt2(args.vocab, args.ctx, args.d, args.heads, args.layers)


def _layout(arch, shard_bytes: int):
    """HF-style shards: tensors in graph order, a new shard when the next tensor would pass ``shard_bytes``."""
    names = [(p.name, tuple(p.shape)) for p in arch.graph.parameters()]
    groups, cur, size = [], [], 0
    for name, shape in names:
        nbytes = 4 * int(torch.Size(shape).numel())
        if cur and size + nbytes > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += nbytes
    groups.append(cur)
    n = len(groups)
    return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", {"format": "pt"}, g) for i, g in enumerate(groups)], \
        dict(names)


def _tensor_a(name: str, shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return 0.02 * torch.randn(shape, generator=g)


def generate(args, folder: Path) -> None:
    from symmetries.action import apply
    from symmetries.checkpoints import write_sharded
    from symmetries.policy import resolve_classes
    import solvers
    from symmetries.transforms import TransformSet

    arch = _arch(args)
    layout, shapes = _layout(arch, args.shard_mb * 2**20)
    classes = resolve_classes(arch.graph, None, solver=solvers.get("weight_matching"))
    spaces = {s.name: s for s in arch.graph.spaces()}  # a head group shares one head permutation: one seed
    hidden = TransformSet({s: c.random(spaces[s].size, seed=args.seed + zlib.crc32((spaces[s].head_group or s).encode()))
                           for s, c in classes.items()})
    info = lambda name: (shapes[name], torch.float32)  # noqa: E731

    def b_tensor(name):
        a = _tensor_a(name, shapes[name], args.seed)
        g = torch.Generator().manual_seed(args.seed + 7 + zlib.crc32(name.encode()))
        return apply(arch.graph, {name: a}, hidden, check=False)[name] + args.noise * torch.randn(a.shape, generator=g)

    for side, fn in (("a", lambda n: _tensor_a(n, shapes[n], args.seed)), ("b", b_tensor)):
        (folder / side).mkdir(parents=True, exist_ok=True)
        write_sharded(folder / side, layout, info, fn, index_metadata={"generator": "bench_streaming"})
        (folder / side / "config.json").write_text(json.dumps(vars(args), sort_keys=True, default=str))


def align(args, folder: Path) -> dict:
    """Runs in a fresh process: the peak RSS is the alignment's alone."""
    import solvers  # noqa: F401 - imports counted in the baseline
    from symmetries.checkpoints import ShardedCheckpoint, align_checkpoints

    arch = _arch(args)
    base = _rss_mb()
    sampled, done = [base], threading.Event()

    def sample():  # a cross-check of VmHWM: the resident set every 5 ms
        while not done.wait(0.005):
            sampled[0] = max(sampled[0], _rss_mb())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    out = align_checkpoints(folder / "a", folder / "b", folder / "out", arch, max_iter=args.max_iter)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    sol = out["solution"]
    model = ShardedCheckpoint(folder / "b").total_size / 2**20
    return dict(model_mb=model, baseline_rss_mb=base, peak_rss_mb=_peak_mb(), sampled_peak_mb=sampled[0], wall_s=wall,
                solve_s=out["solve_seconds"], write_s=out["write_seconds"], sweeps=sol.iterations, status=sol.status,
                history=sol.history, l2_before=out["l2_before"], l2_after=out["l2_after"],
                shards=len(ShardedCheckpoint(folder / "b").shards), threads=torch.get_num_threads())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--d", type=int, default=1600)
    p.add_argument("--heads", type=int, default=25)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--shard-mb", type=int, default=2000, help="shard size (MiB); HF writes 5 GB by default")
    p.add_argument("--noise", type=float, default=0.002, help="std of the noise added to B after the permutation")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="keep the generated pair here (default: a temp folder)")
    p.add_argument("--phase", choices=("all", "align"), default="all", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "align":
        print(json.dumps(align(args, args.dir)))
        return
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench_streaming_"))
    try:
        t0 = time.perf_counter()
        if not (folder / "b" / "model.safetensors.index.json").exists():
            generate(args, folder)
        gen = time.perf_counter() - t0
        cmd = [sys.executable, __file__, "--phase", "align", "--dir", str(folder)] + \
            [x for k, v in vars(args).items() if k not in ("phase", "dir") for x in (f"--{k.replace('_', '-')}", str(v))]
        child = subprocess.run(cmd, check=True, capture_output=True, text=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        params = sum(int(torch.Size(s).numel()) for s in _layout(_arch(args), 1 << 62)[1].values())
        print(f"GPT-2 shape: {args.layers} layers, d={args.d}, {args.heads} heads, vocab {args.vocab}: "
              f"{params / 1e9:.3f} B parameters, {r['model_mb']:.0f} MiB per model (float32), {r['shards']} shard(s); "
              f"generated in {gen:.1f} s")
        print(f"streamed alignment: wall {r['wall_s']:.1f} s (solve {r['solve_s']:.1f} s, {r['sweeps']} sweep(s), "
              f"{r['status']}; write {r['write_s']:.1f} s) on {r['threads']} torch thread(s)")
        print(f"peak RSS {r['peak_rss_mb']:.0f} MiB = {100 * r['peak_rss_mb'] / r['model_mb']:.1f}% of one model "
              f"(after imports: {r['baseline_rss_mb']:.0f} MiB; above it: "
              f"{100 * (r['peak_rss_mb'] - r['baseline_rss_mb']) / r['model_mb']:.1f}%; sampled every 5 ms: "
              f"{r['sampled_peak_mb']:.0f} MiB)")
        print(f"L2(A, B) {r['l2_before']:.2f} -> {r['l2_after']:.2f} (noise alone: "
              f"{args.noise * params ** 0.5:.2f}); J history {[round(h, 2) for h in r['history']]}")
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
