"""``symmetries align`` and ``symmetries barrier`` on real checkpoints.

Checkpoints are safetensors files or torch state dicts (``torch.load(weights_only=True)``);
the architecture is a specification (:mod:`architectures.spec`). Every failure ends with a
one-line message and a non-zero exit (2 for bad input), never a traceback. Before any work,
an output that would replace an input is refused, and so are weights and data the library cannot
compute with (non-finite, sparse, meta, float8 …), naming the file and the tensor. Outputs are
written atomically (no partial files) and deterministically (same input, same bytes).
"""
from __future__ import annotations

import time
from functools import wraps
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["align", "barrier", "load_data", "check_data", "check_device", "PLOT_SUFFIXES"]

#: The ``--plot`` formats (``symmetries.landscape.plot_curves`` writes PNG).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")  # the formats symmetries.landscape.plot_curves writes

err = Console(stderr=True)


def _clean_exit(fn):
    """Turn library errors into ``error: …`` and exit code 2 (1 for unexpected ones)."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        from symmetries.errors import SymmetryError
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except SystemExit as exc:  # user code (an --arch factory, its module) exited: not a success
            err.print(f"[red]error:[/red] user code called sys.exit({exc.code!r}) during {fn.__name__}; nothing was "
                      f"done", markup=True, highlight=False)
            raise typer.Exit(2)
        except (SymmetryError, ValueError, KeyError, TypeError, OSError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            err.print(f"[red]error:[/red] {escape(msg)}", markup=True, highlight=False)
            raise typer.Exit(2)
        except Exception as exc:  # noqa: BLE001 - the CLI must end with a message, not a traceback
            err.print(f"[red]error:[/red] unexpected {escape(f'{type(exc).__name__}: {exc}')}", highlight=False)
            raise typer.Exit(1)
    return wrapper


def _load_pair(a: Path, b: Path, arch_spec: str):
    from architectures.spec import parse_arch
    from symmetries.errors import SymmetryError
    from symmetries.io import check_tensors, load_state_dict
    from symmetries.landscape import check_compatible

    arch = parse_arch(arch_spec)
    pa, pb = load_state_dict(a), load_state_dict(b)
    check_tensors(pa, label="A", path=a)
    check_tensors(pb, label="B", path=b)
    for name, p in ((str(a), pa), (str(b), pb)):
        try:
            arch.graph.validate(p)
        except SymmetryError as exc:
            raise ValueError(f"{name} does not fit {arch.name}: {exc}") from None
    check_compatible(pa, pb, names=(str(a), str(b)))
    for name, p in ((str(a), pa), (str(b), pb)):
        for k, v in p.items():
            if not v.is_floating_point() and arch.graph.edges_of(k):
                raise ValueError(f"{name}: tensor {k!r} is {str(v.dtype).replace('torch.', '')}; weights that "
                                 f"symmetries act on must be floating point (save the checkpoint's weights as "
                                 f"float32 or float64)")
    module_keys = set(arch.module().state_dict())
    if set(pa) != module_keys:
        extra = sorted(set(pa) ^ module_keys)[0]
        raise ValueError(f"{a} does not match the module of {arch.name}: key {extra!r} differs")
    dtype = next((v.dtype for v in pa.values() if v.is_floating_point()), torch.float32)
    return arch, pa, pb, dtype


def _data_file(spec: Optional[str]) -> Optional[str]:
    """The file a data spec names; ``None`` for none and for the bundled ``digits``."""
    return None if spec is None or spec.split(":")[0] == "digits" else spec


def load_data(spec: str, *, x_key: str = "x", y_key: str = "y", flag: str = "--data"):
    """``digits`` / ``digits:train`` / ``digits:test`` (bundled) or a checkpoint file holding ``x`` and
    ``y``: at least one dimension each (examples first), finite, dense, of a dtype the library computes
    with; else a :class:`~symmetries.io.CheckpointError` naming ``flag``, the file and the tensor."""
    from symmetries.io import CheckpointError, check_tensors, load_state_dict

    if _data_file(spec) is None:
        from symmetries.demo.data import digits
        part = spec.split(":", 1)[1] if ":" in spec else "test"
        if part not in ("train", "test"):
            raise ValueError(f"digits has splits 'train' and 'test', not {part!r}")
        return getattr(digits(), part)
    tensors = load_state_dict(spec)
    missing = [k for k in (x_key, y_key) if k not in tensors]
    if missing:
        raise CheckpointError(f"data file {spec!r} has no tensor {missing[0]!r} "
                              f"(it holds {', '.join(sorted(tensors))})",
                              path=spec)
    x, y = tensors[x_key], tensors[y_key]
    check_tensors({x_key: x, y_key: y}, label=flag, path=spec)
    for key, t in ((x_key, x), (y_key, y)):
        if t.dim() == 0:
            raise CheckpointError(f"{flag} {spec!r}: tensor {key!r} is 0-d (one number); it must hold one example "
                                  f"per entry along its first dimension", path=spec)
    if x.shape[0] != y.shape[0]:
        raise CheckpointError(f"data file {spec!r}: {x.shape[0]} inputs but {y.shape[0]} targets", path=spec)
    return x, y


def _load_data_as(spec: str, dtype: torch.dtype, flag: str = "--data"):
    """:func:`load_data` with floating inputs cast to the checkpoints' dtype (the module's)."""
    x, y = load_data(spec, flag=flag)
    return (x.to(dtype) if x.is_floating_point() else x), y


def check_device(device: str) -> torch.device:
    """``torch.device(device)`` if a tensor can be made there; else a ``ValueError`` naming ``--device``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "meta":
        raise ValueError("--device 'meta' holds no data; choose a device to compute on (e.g. cpu or cuda)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available here (this torch {torch.__version__} "
                         f"{'has no CUDA support' if torch.version.cuda is None else 'finds no CUDA device'}); "
                         f"use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: there are {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    try:
        torch.empty(1, device=dev)
    except Exception as exc:  # noqa: BLE001 - any backend failure means the device is unusable
        raise ValueError(f"--device {device!r} cannot be used: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    return dev


def _first_layer(model: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            return f"; its first layer {name!r} takes {m.in_features} features"
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            return f"; its first layer {name!r} takes {m.in_channels} channels"
        if isinstance(m, torch.nn.Embedding):
            return f"; its first layer {name!r} takes token ids below {m.num_embeddings}"
    return ""


def check_data(model: torch.nn.Module, params, data, *, flag: str, spec: str) -> None:
    """A ``ValueError`` naming ``flag`` (``--data``) unless ``model`` with ``params`` runs on the
    inputs and the targets fit its outputs (class labels in range, or regression targets of the
    output's size). Checked on a few examples, labels on all of them."""
    from torch.func import functional_call

    from symmetries.landscape.evaluation import default_loss

    x, y = data
    where = f"{flag} {spec!r}"
    if x.shape[0] == 0:
        raise ValueError(f"{where} holds no examples")
    probe = x[:2]
    try:
        with torch.no_grad():
            out = functional_call(model, dict(params), (probe,))
    except Exception as exc:  # noqa: BLE001 - any failure of the user's model on these inputs
        text = str(exc).strip().splitlines()
        raise ValueError(f"{where} does not fit the model: inputs are {str(x.dtype).replace('torch.', '')} of "
                         f"shape {tuple(x.shape[1:])} per example{_first_layer(model)} "
                         f"({type(exc).__name__}: {text[0] if text else ''})") from None
    if not y.is_floating_point():
        if out.dim() < 2:
            raise ValueError(f"{where} has integer (class) targets but the model returns one value per example")
        classes = out.shape[1]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise ValueError(f"{where} has class labels {lo}…{hi} but the model has {classes} outputs "
                             f"(labels 0…{classes - 1})")
    elif y[0].numel() != out[0].numel():
        raise ValueError(f"{where} has targets of shape {tuple(y.shape[1:])} per example but the model returns "
                         f"{tuple(out.shape[1:])}")
    try:
        default_loss(y)(out, y[:probe.shape[0]].to(out.device))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{where}: the loss cannot compare the model's outputs {tuple(out.shape[1:])} with the "
                         f"targets {tuple(y.shape[1:])}: {type(exc).__name__}: {exc}") from None


def _fit_note(err_console: Console, what: str) -> None:
    err_console.print(f"[yellow]note:[/yellow] {what} fitted on the --data it measures: the barrier is optimistic; "
                      f"pass --fit-data (e.g. the training split) to fit on other data", highlight=False)


@_clean_exit
def align(a: Path = typer.Argument(..., help="Model A (safetensors or torch state dict): the reference."),
          b: Path = typer.Argument(..., help="Model B: the one to transform."),
          arch: str = typer.Option(..., "--arch", help="Architecture, e.g. 'mlp:64,128,10:relu' or 'pkg.mod:build'."),
          solver: str = typer.Option("weight_matching", "--solver", help="A built-in or registered solver."),
          output: Path = typer.Option(..., "-o", "--output", help="Where to write aligned B (.safetensors or .pt; a "
                                      "folder when A and B are checkpoint folders)."),
          data: Optional[str] = typer.Option(None, "--data", help="Data for data-based solvers (see barrier)."),
          seed: int = typer.Option(0, help="Solver seed."),
          as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
          ) -> None:
    """Align checkpoint B to checkpoint A and write the aligned B (same function as B). Checkpoint folders
    (sharded safetensors with model.safetensors.index.json) are aligned streamed into the folder -o."""
    from symmetries.action import apply
    from symmetries.checkpoints import is_checkpoint_dir
    from symmetries.io import check_not_input, check_output, dumps_json, save_state_dict
    from symmetries.landscape import l2_distance
    import solvers

    if is_checkpoint_dir(a) or is_checkpoint_dir(b):
        return _align_folders(a, b, arch, solver, output, data, seed, as_json)
    check_output(output)     # before the (possibly long) solve
    check_not_input(output, {"A": a, "B": b, "--data": _data_file(data)}, flag="-o/--output")
    if not data and solvers.get(solver).needs_data:
        raise ValueError(f"solver {solver!r} needs data: pass --data ('digits:train' or a file with tensors x "
                         f"and y)")
    architecture, pa, pb, dtype = _load_pair(a, b, arch)
    options = {}
    if data:
        options["data"] = _load_data_as(data, dtype)
        check_data(architecture.module(dtype=dtype), pa, options["data"], flag="--data", spec=data)
    t0 = time.perf_counter()
    if "data" in options:
        options["data"] = solvers.as_batches(options["data"], seed=seed)
    sol = solvers.solve(solver, architecture, pa, pb, seed=seed, **options)
    aligned = apply(architecture.graph, pb, sol.transforms)
    seconds = time.perf_counter() - t0
    save_state_dict(aligned, output, metadata={"aligned_to": str(a), "source": str(b), "solver": solver})
    summary = dict(solver=solver, output=str(output), l2_before=l2_distance(pa, pb), l2_after=l2_distance(pa, aligned),
                   objective_before=_num(getattr(sol, "objective_before", None)),
                   objective_after=_num(getattr(sol, "objective_after", None)), seconds=seconds)
    if as_json:
        typer.echo(dumps_json(summary, indent=2))
        return
    Console().print(f"aligned {b} to {a} with {solver}: L2 {summary['l2_before']:.4f} → {summary['l2_after']:.4f}"
                    f" in {seconds:.2f} s; wrote {output}", highlight=False)


def _align_folders(a: Path, b: Path, arch: str, solver: str, output: Path, data, seed: int, as_json: bool) -> None:
    """``align`` on checkpoint folders: streamed (:func:`symmetries.checkpoints.align_checkpoints`)."""
    from architectures.spec import parse_arch
    from symmetries.checkpoints import ShardedCheckpoint, align_checkpoints, is_checkpoint_dir
    from symmetries.errors import SymmetryError
    from symmetries.io import check_not_input, dumps_json
    import solvers

    for label, p in (("A", a), ("B", b)):
        if not is_checkpoint_dir(p):
            raise ValueError(f"{label} {str(p)!r} is not a checkpoint folder (model.safetensors.index.json): align "
                             f"two folders, or two files")
    check_not_input(output, {"A": a, "B": b}, flag="-o/--output")
    if output.exists() and not output.is_dir():
        raise ValueError(f"-o/--output {str(output)!r}: aligning checkpoint folders writes a folder, and this is a "
                         f"file")
    if data:
        raise ValueError("--data: checkpoint folders are aligned streamed by weight matching, which needs no data")
    if not getattr(solvers.get(solver), "streams", False):
        raise ValueError(f"--solver {solver!r} does not stream; checkpoint folders are aligned by weight_matching")
    architecture = parse_arch(arch)
    ca, cb = ShardedCheckpoint(a, label="A"), ShardedCheckpoint(b, label="B")
    try:
        out = align_checkpoints(ca, cb, output, architecture, solver=solver, seed=seed,
                                metadata={"aligned_to": str(a), "source": str(b), "solver": solver})
    except SymmetryError as exc:
        if type(exc).__module__ != "symmetries.errors":  # checkpoint and solver errors name their own input
            raise
        raise ValueError(f"{a} and {b} do not fit {architecture.name}: {exc}") from None
    sol = out["solution"]
    summary = dict(solver=solver, output=str(output), l2_before=out["l2_before"], l2_after=out["l2_after"],
                   objective_before=_num(sol.objective_before), objective_after=_num(sol.objective_after),
                   seconds=out["solve_seconds"], write_seconds=out["write_seconds"], streamed=True)
    if as_json:
        typer.echo(dumps_json(summary, indent=2))
        return
    Console().print(f"aligned {b} to {a} with {solver} (streamed): L2 {summary['l2_before']:.4f} → "
                    f"{summary['l2_after']:.4f} in {summary['seconds']:.2f} s; wrote {output} "
                    f"({len(cb.shards)} shard(s))", highlight=False)


def _num(x):
    return None if x is None else float(x)


@_clean_exit
def barrier(a: Path = typer.Argument(..., help="Model A (safetensors or torch state dict)."),
            b: Path = typer.Argument(..., help="Model B (aligned to A, or see --solver)."),
            arch: str = typer.Option(..., "--arch", help="Architecture, e.g. 'mlp:64,128,10:relu'."),
            data: str = typer.Option(..., "--data", help="Data the path is measured on: 'digits[:train|test]' or a "
                                                         "file with tensors x and y."),
            fit_data: Optional[str] = typer.Option(None, "--fit-data", help="Data to fit --solver, --repair and "
                                                   "--reset-bn on (default: --data, which is optimistic)."),
            solver: Optional[str] = typer.Option(None, "--solver", help="Align B to A with this solver first."),
            alphas: int = typer.Option(25, min=2, help="Number of evenly spaced α in [0, 1]."),
            repair: bool = typer.Option(False, "--repair", help="REPAIR each interpolated model (no BatchNorm)."),
            reset_bn: bool = typer.Option(False, "--reset-bn", help="Reset BatchNorm statistics along the path."),
            batch_size: int = typer.Option(1024, min=1, help="Evaluation batch size."),
            device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
            seed: int = typer.Option(0, help="Solver seed (and of its minibatch order)."),
            plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of the curves here (a .png file)."),
            as_json: bool = typer.Option(False, "--json", help="Print the curve and barriers as JSON."),
            ) -> None:
    """Loss and accuracy barriers on the straight line from A to B (both definitions)."""
    from symmetries import landscape as L
    from symmetries.action import apply
    from symmetries.errors import ArgumentError
    from symmetries.io import check_not_input, check_output, dumps_json

    if repair and reset_bn:
        raise ValueError("choose one of --repair and --reset-bn")
    dev = check_device(device)
    if plot is not None:
        if plot.suffix.lower() not in PLOT_SUFFIXES:
            raise ArgumentError(f"--plot {str(plot)!r}: the format follows the suffix; name the file "
                                f"{', '.join(PLOT_SUFFIXES)} (not {plot.suffix or 'without a suffix'})",
                                argument="--plot")
        check_output(plot)
        check_not_input(plot, {"A": a, "B": b, "--data": _data_file(data), "--fit-data": _data_file(fit_data)},
                        flag="--plot")
    if solver:
        import solvers
        solvers.get(solver)  # UnknownSolverError before any work
    architecture, pa, pb, dtype = _load_pair(a, b, arch)
    probe = architecture.module(dtype=dtype)
    x, y = _load_data_as(data, dtype)
    check_data(probe, pa, (x, y), flag="--data", spec=data)
    fitted = [w for w, on in ((f"--solver {solver}", solver), ("REPAIR", repair), ("--reset-bn", reset_bn)) if on]
    if fit_data is not None:
        fit = _load_data_as(fit_data, dtype, flag="--fit-data")
        check_data(probe, pa, fit, flag="--fit-data", spec=fit_data)
    else:
        fit = (x, y)
        if fitted:
            _fit_note(err, " and ".join(fitted))
    if solver:
        sol = solvers.solve(solver, architecture, pa, pb, data=solvers.as_batches(fit, seed=seed), seed=seed)
        pb = apply(architecture.graph, pb, sol.transforms)
    model = architecture.module(dtype=dtype, device=dev)
    adjust = None
    if repair:
        adjust = L.repair_adjust(model, architecture.graph, pa, pb, fit, batch_size=batch_size, device=dev)
    elif reset_bn:
        adjust = L.batchnorm_adjust(model, fit, batch_size=batch_size, device=dev)
    curve = L.interpolation_curve(model, pa, pb, (x, y), alphas=alphas, adjust=adjust, batch_size=batch_size,
                                  device=dev, label=solver or "as given")
    if plot is not None:
        L.plot_curves([curve], plot, title=f"{a.name} → {b.name}")
    summary = curve.as_dict() | {"l2": L.l2_distance(pa, pb), "a": str(a), "b": str(b), "data": data,
                                 "fit_data": fit_data if fit_data is not None else data,
                                 "fitted_on_measured_data": bool(fitted) and fit_data is None, "seed": seed}
    if as_json:
        typer.echo(dumps_json(summary, indent=2))
        return
    t = Table(title=f"{a.name} → {b.name} ({architecture.name}, {len(curve.alphas)} α)")
    for col in ("", "mean of endpoints", "linear in α", "endpoints A / B"):
        t.add_column(col, justify="right")
    t.add_row("loss barrier", f"{curve.loss_barrier:.4f}", f"{curve.loss_barrier_linear:.4f}",
              f"{curve.loss[0]:.4f} / {curve.loss[-1]:.4f}")
    t.add_row("accuracy barrier (pts)", _pts(curve.accuracy_barrier), _pts(curve.accuracy_barrier_linear),
              f"{_pts(curve.accuracy[0])} % / {_pts(curve.accuracy[-1])} %" if not _nan(curve.accuracy[0]) else "—")
    Console().print(t)
    Console().print(f"L2 distance {summary['l2']:.4f}" + (f"; plot: {plot}" if plot else ""), highlight=False)


def _nan(x) -> bool:
    return x is None or x != x


def _pts(x) -> str:
    """A fraction as percentage points (``0.0123`` → ``1.23``), ``—`` when undefined (regression targets)."""
    return "—" if _nan(x) else f"{100 * float(x):.2f}"
