"""``symmetries solvers``: the registered solvers, the classes each searches in, what each does."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["solvers_command", "register_cli"]


def solvers_command() -> None:
    """List the solvers (built-in and from the 'symmetries.solvers' entry points)."""
    from solvers.registry import available, get

    table = Table(title="Solvers (solvers.solve(name, graph, params_a, params_b, ...))")
    for col, ratio in (("name", 2), ("classes", 4), ("what it does", 6)):
        table.add_column(col, overflow="fold", ratio=ratio)
    for info in available():
        required = get(info.name).required_options()
        notes = (["needs data"] if info.needs_data else []) + [f"needs {name}=" for name in required]
        table.add_row(info.name, ", ".join(info.classes),
                      info.description + (f" ({'; '.join(notes)})" if notes else ""))
    Console().print(table)


def register_cli(app: typer.Typer) -> None:
    """Add the ``solvers`` command to the ``symmetries`` app."""
    app.command("solvers")(solvers_command)
