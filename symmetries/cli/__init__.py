"""The ``symmetries`` command line (typer + rich)."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Symmetries of neural-network weights: declare, align, verify.",
                  no_args_is_help=True, add_completion=False)
console = Console()


def _version(value: bool) -> None:
    if value:
        from symmetries import __version__
        console.print(f"symmetries {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Symmetries of neural-network weights: declare, align, verify."""


@app.command()
def classes() -> None:
    """List the symmetry classes, where each is exact, and what contains it."""
    from symmetries import lattice
    from symmetries.classes import ALL

    table = Table(title="Symmetry classes (symmetries.lattice has the whole order)")
    for col, ratio in (("class", 3), ("exact where", 6), ("oracle", 2), ("next larger", 3)):
        table.add_column(col, overflow="fold", ratio=ratio)
    hasse = lattice.graph()
    for cls in ALL:
        c = cls()
        kind = [] if c.is_group else ["monoid"]
        kind += ["m ≥ n"] if c.rectangular else []
        label = type(c).__name__ + (f" ({', '.join(kind)})" if kind else "")
        oracle = "argmax ⟨T, M⟩" if c.has_oracle else "none (unbounded)"
        covers = ", ".join(k.__name__ for k in hasse.successors(cls)) or "—"
        table.add_row(label, c.exact_where, oracle, covers)
    table.add_row("HeadStructured(H, inner)", "attention heads: a head permutation × a per-head map of inner",
                  "head LAP + inner's", "block classes holding inner")
    console.print(table)


from symmetries.cli.checkpoints import align as _align, barrier as _barrier  # noqa: E402
from symmetries.cli.demo import demo as _demo  # noqa: E402

app.command("demo")(_demo)
app.command("align")(_align)
app.command("barrier")(_barrier)

from symmetries.testing.verify import verify as _verify  # noqa: E402

app.command("verify")(_verify)

from symmetries.cli.solvers import register_cli as _register_solvers_cli  # noqa: E402

_register_solvers_cli(app)


def main() -> None:  # console-script entry point
    app()
