"""``symmetries demo``: the main job on bundled data, with progress bars, a table, a plot and JSON."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from symmetries.cli.checkpoints import _clean_exit
from symmetries.io import atomic_path, dumps_json

__all__ = ["demo", "render_table", "TIME_NOTE"]


def _f(x, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _g(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


#: What the table's time column is (printed under it).
TIME_NOTE = ("time s: the solver's wall time, plus for + REPAIR rows the time REPAIR takes to measure its "
             "statistics and correct each interpolated model on the training split; training and test-split "
             "evaluation are not counted.")
BNN_TIME_NOTE = " BNN: the W₂ alignment only (not the variational fits)."


def render_table(result) -> Table:
    """Solver, barriers (loss and accuracy) before → after, L2 before → after, objective, time."""
    n = result.naive
    title = getattr(result, "title", "") or (f"MLP {result.widths} on digits (test split, {len(n.curve.alphas)} α; "
                                             f"barrier = max_α L(α) − mean of endpoints)")
    table = Table(title=title,
                  caption=TIME_NOTE + (BNN_TIME_NOTE if result.bnn else ""), caption_justify="left")
    for col in ("solver", "loss barrier", "acc. barrier (pts)", "L2 distance", "objective", "time s"):
        table.add_column(col, justify="left" if col == "solver" else "right", no_wrap=col == "solver")
    table.add_row("naive", _f(n.curve.loss_barrier), _f(100 * n.curve.accuracy_barrier, 1),
                  _f(n.l2, 2), "—", "—")
    for r in result.rows:
        if r.skipped:
            continue  # listed under the table
        if r.error:
            table.add_row(r.method, f"[red]failed: {r.error}[/red]", "", "", "", "")
            continue
        c = r.curve
        obj = "—" if r.objective_after is None else f"{_g(r.objective_before)} → {_g(r.objective_after)}"
        if r.lower_bound is not None:
            obj += f" (≥ {_g(r.lower_bound)})"
        table.add_row(r.method, f"{_f(n.curve.loss_barrier)} → {_f(c.loss_barrier)}",
                      f"{_f(100 * n.curve.accuracy_barrier, 1)} → {_f(100 * c.accuracy_barrier, 1)}",
                      f"{_f(n.l2, 2)} → {_f(r.l2, 2)}", obj, _f(r.seconds, 2))
    if result.bnn:
        b = result.bnn
        table.add_row("BNN, W₂ (marginalized)",
                      f"{_f(b['naive']['loss_barrier'])} → {_f(b['aligned']['loss_barrier'])}",
                      f"{_f(100 * b['naive']['accuracy_barrier'], 1)} → {_f(100 * b['aligned']['accuracy_barrier'], 1)}",
                      "—", f"W₂² {_f(b['w2_before'], 1)} → {_f(b['w2_after'], 1)}", _f(b["seconds"], 2))
    return table


@_clean_exit
def demo(width: int = typer.Option(128, min=1, help="Units per hidden layer."),
         depth: int = typer.Option(2, min=1, help="Number of hidden layers."),
         epochs: int = typer.Option(30, min=1, help="Training epochs per model."),
         seed: int = typer.Option(0, help="Seed of the data split and of model A (B uses seed + 1000)."),
         activation: str = typer.Option("relu", help="Hidden activation (architectures.ACTIVATIONS)."),
         solver: Optional[list[str]] = typer.Option(None, "--solver", help="Only these solvers (repeatable)."),
         bnn: bool = typer.Option(False, "--bnn", help="Also fit two mean-field posteriors and measure the "
                                                       "marginalized barrier."),
         out: Path = typer.Option(Path("symmetries-demo"), "--out", help="Folder for the plot and JSON."),
         as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (no table, no bars)."),
         threads: int = typer.Option(1, min=1, help="torch CPU threads (the demo's networks are too small to "
                                                    "gain from more; extra threads only contend)."),
         model: str = typer.Option("mlp", "--model", help="mlp (digits), gpt (two GPTs on the Python standard "
                                                          "library's source) or vit (two ViTs on digits); "
                                                          "--width/--depth/--epochs/--activation/--bnn are the MLP's."),
         tiny: bool = typer.Option(False, "--tiny", help="gpt/vit: the reduced size the tests run (seconds)."),
         ) -> None:
    """Train two networks (MLPs, GPTs or ViTs), align them with every applicable solver, measure the barriers."""
    import numpy as np
    import torch

    from symmetries.demo import DemoConfig, run_demo
    from symmetries.landscape import Curve, plot_curves

    if model not in ("mlp", "gpt", "vit"):
        raise ValueError(f"--model must be mlp, gpt or vit, got {model!r}")
    if model != "mlp" and bnn:
        raise ValueError("--bnn fits mean-field posteriors of the MLP only (use --model mlp)")
    torch.set_num_threads(threads)
    console = Console(stderr=as_json)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=as_json, width=130)  # redirected to a file or CI log: do not squeeze to 80
    config = DemoConfig(width=width, depth=depth, epochs=epochs, seed=seed, activation=activation,
                        solvers=tuple(solver) if solver else None, bnn=bnn)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # reported on stderr with exit code 2 by _clean_exit, like every other input error
        raise OSError(f"cannot create output folder {str(out)!r}: {exc}") from None
    bars = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False, disable=as_json)
    tasks: dict[str, int] = {}

    def progress(task: str, done: int, total: int) -> None:
        if task not in tasks:
            tasks[task] = bars.add_task(task, total=total)
        bars.update(tasks[task], completed=done, total=total)

    with bars:
        if model == "mlp":
            result = run_demo(config, progress=progress)
        else:
            from symmetries.demo.transformer import demo_config, run_transformer_demo
            result = run_transformer_demo(demo_config(model, "tiny" if tiny else "full", seed=seed,
                                                      solvers=config.solvers), progress=progress)
    curves = [result.naive.curve] + [r.curve for r in result.rows if not (r.error or r.skipped)]
    extra = []
    if result.bnn:
        extra = [Curve(np.asarray(d["alphas"]), np.asarray(d["loss"]), np.asarray(d["accuracy"]), d["label"])
                 for d in (result.bnn["naive"], result.bnn["aligned"])]
    png = plot_curves(curves, out / "demo.png", extra=extra,
                      title=f"{model.upper()}: linear paths from A to (aligned) B" if model != "mlp"
                      else f"digits, MLP {result.widths}: linear paths from A to (aligned) B")
    data = result.as_dict() | {"files": {"plot": str(png), "json": str(out / "demo.json")}}
    text = dumps_json(data, indent=2)   # strict JSON: an undefined value (e.g. no accuracy) is null, never NaN
    with atomic_path(out / "demo.json") as tmp:
        Path(tmp).write_text(text)
    if as_json:
        typer.echo(text)
        return
    console.print(render_table(result))
    for r in result.rows:
        if r.skipped:
            console.print(f"[dim]{r.method} skipped: {r.skipped}[/dim]")
    e = result.endpoints
    unit = "token acc" if model == "gpt" else "acc"
    console.print(f"endpoints: A test {unit} {100 * e['A']['accuracy']:.1f}% (loss {e['A']['loss']:.3f}), "
                  f"B {100 * e['B']['accuracy']:.1f}% (loss {e['B']['loss']:.3f}); "
                  f"training {result.train_seconds:.1f} s, total {result.seconds:.1f} s")
    console.print(f"plot: {png}   json: {out / 'demo.json'}")
