"""``symmetries align`` and ``symmetries barrier`` on real checkpoints.

Checkpoints are safetensors files or torch state dicts (``torch.load(weights_only=True)``);
the architecture is a specification (:mod:`symmetries.archspec`). Every failure ends with a
one-line message and a non-zero exit (2 for bad input), never a traceback, and outputs are
written atomically (no partial files).
"""
from __future__ import annotations

import json
import time
from functools import wraps
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

__all__ = ["align", "barrier", "load_data"]

err = Console(stderr=True)


def _clean_exit(fn):
    """Turn library errors into ``error: …`` and exit code 2 (1 for unexpected ones)."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import SymmetryError
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (SymmetryError, ValueError, KeyError, TypeError, OSError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            err.print(f"[red]error:[/red] {msg}", markup=True, highlight=False)
            raise typer.Exit(2)
        except Exception as exc:  # noqa: BLE001 - the CLI must end with a message, not a traceback
            err.print(f"[red]error:[/red] unexpected {type(exc).__name__}: {exc}", highlight=False)
            raise typer.Exit(1)
    return wrapper


def _load_pair(a: Path, b: Path, arch_spec: str):
    from .archspec import parse_arch
    from .errors import SymmetryError
    from .io import load_state_dict
    from .landscape import check_compatible

    arch = parse_arch(arch_spec)
    pa, pb = load_state_dict(a), load_state_dict(b)
    for name, p in ((str(a), pa), (str(b), pb)):
        try:
            arch.graph.validate(p)
        except SymmetryError as exc:
            raise ValueError(f"{name} does not fit {arch.name}: {exc}") from None
    check_compatible(pa, pb, names=(str(a), str(b)))
    module_keys = set(arch.module().state_dict())
    if set(pa) != module_keys:
        extra = sorted(set(pa) ^ module_keys)[0]
        raise ValueError(f"{a} does not match the module of {arch.name}: key {extra!r} differs")
    dtype = next((v.dtype for v in pa.values() if v.is_floating_point()), torch.float32)
    return arch, pa, pb, dtype


def load_data(spec: str, *, x_key: str = "x", y_key: str = "y"):
    """``digits`` / ``digits:train`` / ``digits:test`` (bundled) or a checkpoint file holding ``x`` and ``y``."""
    from .io import CheckpointError, load_state_dict

    if spec.split(":")[0] == "digits":
        from .data import digits
        part = spec.split(":", 1)[1] if ":" in spec else "test"
        if part not in ("train", "test"):
            raise ValueError(f"digits has splits 'train' and 'test', not {part!r}")
        return getattr(digits(), part)
    tensors = load_state_dict(spec)
    missing = [k for k in (x_key, y_key) if k not in tensors]
    if missing:
        raise CheckpointError(f"data file {spec!r} has no tensor {missing[0]!r} (it holds {', '.join(sorted(tensors))})",
                              path=spec)
    x, y = tensors[x_key], tensors[y_key]
    if x.shape[0] != y.shape[0]:
        raise CheckpointError(f"data file {spec!r}: {x.shape[0]} inputs but {y.shape[0]} targets", path=spec)
    return x, y


def _load_data_as(spec: str, dtype: torch.dtype):
    """:func:`load_data` with floating inputs cast to the checkpoints' dtype (the module's)."""
    x, y = load_data(spec)
    return (x.to(dtype) if x.is_floating_point() else x), y


@_clean_exit
def align(a: Path = typer.Argument(..., help="Model A (safetensors or torch state dict): the reference."),
          b: Path = typer.Argument(..., help="Model B: the one to transform."),
          arch: str = typer.Option(..., "--arch", help="Architecture, e.g. 'mlp:64,128,10:relu' or 'pkg.mod:build'."),
          solver: str = typer.Option("weight_matching", "--solver", help="A built-in or registered solver."),
          output: Path = typer.Option(..., "-o", "--output", help="Where to write aligned B (.safetensors or .pt)."),
          data: Optional[str] = typer.Option(None, "--data", help="Data for data-based solvers (see barrier)."),
          seed: int = typer.Option(0, help="Solver seed."),
          as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
          ) -> None:
    """Align checkpoint B to checkpoint A and write the aligned B (same function as B)."""
    from .action import apply
    from .io import save_state_dict
    from .landscape import l2_distance
    from .solving import align as run

    architecture, pa, pb, dtype = _load_pair(a, b, arch)
    options = {"data": _load_data_as(data, dtype)} if data else {}
    t0 = time.perf_counter()
    sol = run(solver, architecture, pa, pb, seed=seed, **options)
    aligned = apply(architecture.graph, pb, sol.transforms)
    seconds = time.perf_counter() - t0
    save_state_dict(aligned, output, metadata={"aligned_to": str(a), "source": str(b), "solver": solver})
    summary = dict(solver=solver, output=str(output), l2_before=l2_distance(pa, pb), l2_after=l2_distance(pa, aligned),
                   objective_before=_num(getattr(sol, "objective_before", None)),
                   objective_after=_num(getattr(sol, "objective_after", None)), seconds=seconds)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    Console().print(f"aligned {b} to {a} with {solver}: L2 {summary['l2_before']:.4f} → {summary['l2_after']:.4f}"
                    f" in {seconds:.2f} s; wrote {output}", highlight=False)


def _num(x):
    return None if x is None else float(x)


@_clean_exit
def barrier(a: Path = typer.Argument(..., help="Model A (safetensors or torch state dict)."),
            b: Path = typer.Argument(..., help="Model B (aligned to A, or see --solver)."),
            arch: str = typer.Option(..., "--arch", help="Architecture, e.g. 'mlp:64,128,10:relu'."),
            data: str = typer.Option(..., "--data", help="'digits[:train|test]' or a file with tensors x and y."),
            solver: Optional[str] = typer.Option(None, "--solver", help="Align B to A with this solver first."),
            alphas: int = typer.Option(25, min=2, help="Number of evenly spaced α in [0, 1]."),
            repair: bool = typer.Option(False, "--repair", help="REPAIR each interpolated model (no BatchNorm)."),
            reset_bn: bool = typer.Option(False, "--reset-bn", help="Reset BatchNorm statistics along the path."),
            batch_size: int = typer.Option(1024, min=1, help="Evaluation batch size."),
            device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
            plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of the curves here."),
            as_json: bool = typer.Option(False, "--json", help="Print the curve and barriers as JSON."),
            ) -> None:
    """Loss and accuracy barriers on the straight line from A to B (both definitions)."""
    from . import landscape as L
    from .action import apply

    if repair and reset_bn:
        raise ValueError("choose one of --repair and --reset-bn")
    architecture, pa, pb, dtype = _load_pair(a, b, arch)
    x, y = _load_data_as(data, dtype)
    if solver:
        from .solving import align as run
        pb = apply(architecture.graph, pb, run(solver, architecture, pa, pb, data=(x, y)).transforms)
    model = architecture.module(dtype=dtype, device=device)
    adjust = None
    if repair:
        adjust = L.repair_adjust(model, architecture.graph, pa, pb, (x, y), batch_size=batch_size, device=device)
    elif reset_bn:
        adjust = L.batchnorm_adjust(model, (x, y), batch_size=batch_size, device=device)
    curve = L.interpolation_curve(model, pa, pb, (x, y), alphas=alphas, adjust=adjust, batch_size=batch_size,
                                  device=device, label=solver or "as given")
    if plot is not None:
        L.plot_curves([curve], plot, title=f"{a.name} → {b.name}")
    summary = curve.as_dict() | {"l2": L.l2_distance(pa, pb), "a": str(a), "b": str(b)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    t = Table(title=f"{a.name} → {b.name} ({architecture.name}, {len(curve.alphas)} α)")
    for col in ("", "mean of endpoints", "linear in α", "endpoints A / B"):
        t.add_column(col, justify="right")
    t.add_row("loss barrier", f"{curve.loss_barrier:.4f}", f"{curve.loss_barrier_linear:.4f}",
              f"{curve.loss[0]:.4f} / {curve.loss[-1]:.4f}")
    t.add_row("accuracy barrier", f"{curve.accuracy_barrier:.4f}", f"{curve.accuracy_barrier_linear:.4f}",
              f"{curve.accuracy[0]:.4f} / {curve.accuracy[-1]:.4f}")
    Console().print(t)
    Console().print(f"L2 distance {summary['l2']:.4f}" + (f"; plot: {plot}" if plot else ""), highlight=False)
