"""``symmetries verify pkg.module:factory``: check a model's declared symmetries in CI.

The factory (in an importable module or a ``.py`` file) returns a module, ``(module,
example_inputs)``, an ``Architecture`` or ``(architecture, example_inputs)``. The graph comes
from ``architectures.from_module`` (``--arch auto``), a builder spec (``--arch mlp:4,16,3:gelu``)
or the architecture itself. Every space and declared class is checked with
:func:`symmetries.testing.check_invariance`; the exit code is 0 when all hold, 1 when one fails,
2 when the target cannot be loaded or does not fit its graph, and never 0 with nothing checked:
user code that exits (``sys.exit``) or returns something else is an error naming the target.

Importing the module and calling the factory run the user's code, as ``pytest`` does. The
factory is called with torch's, Python's and numpy's global generators seeded from ``--seed`` (and
restored afterwards), so a factory that draws with ``torch.randn`` repeats run to run; the report
notes when it drew from torch's generator without seeding it.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from symmetries.errors import SymmetryError

__all__ = ["VerifyError", "load_target", "resolve", "verify", "DTYPES"]

DTYPES = {"float64": torch.float64, "float32": torch.float32, "model": None}


class VerifyError(SymmetryError, ValueError):
    """The target cannot be imported or called, or returns something that cannot be checked."""


def _failed(what: str, exc: BaseException) -> VerifyError:
    """A :class:`VerifyError` for user code that raised (or exited: ``SystemExit`` is not an
    ``Exception``, and a CI gate must not go green having checked nothing)."""
    if isinstance(exc, SystemExit):
        return VerifyError(f"{what} called sys.exit({exc.code!r}); nothing was checked")
    return VerifyError(f"{what} failed: {type(exc).__name__}: {exc}")


#: Raised by user code, never turned into a verdict: the user's own interrupt.
_PASS_THROUGH = (KeyboardInterrupt,)


def _import(module_part: str):
    looks_like_file = module_part.endswith(".py") or os.sep in module_part or "/" in module_part
    if looks_like_file:
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise VerifyError(f"no such file: {module_part}")
        sys.path.insert(0, str(path.parent))  # the file's own imports of its neighbours work
        name = f"_symmetries_verify_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit included
            raise _failed(f"importing {path}", exc) from None
        return module
    from architectures.spec import import_user_module
    try:
        return import_user_module(module_part)
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit included
        if isinstance(exc, SystemExit):
            raise _failed(f"importing {module_part!r}", exc) from None
        raise VerifyError(f"cannot import {module_part!r}: {type(exc).__name__}: {exc}") from None


def _factory_seed(seed: int) -> int:
    """The global seed the factory runs under: fixed by ``seed``, unlike any a factory sets itself."""
    return (int(seed) * 1_000_003 + 0x5EED5) % (2 ** 63)


@contextmanager
def _seeded_globals(seed: int):
    """torch's (CPU), Python's and numpy's global generators seeded, and restored on exit."""
    import numpy as np
    state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    s = _factory_seed(seed)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2 ** 32)
    try:
        yield s
    finally:
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        np.random.set_state(state[2])


def _load(target: str, seed: int = 0) -> tuple[Any, list[str]]:
    """What ``target`` names (called if callable, under seeded global generators) and notes."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise VerifyError(f"target must be MODULE:FACTORY or FILE.py:FACTORY, got {target!r}")
    module = _import(module_part)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise VerifyError(f"{module_part!r} has no attribute {attr!r}") from None
    notes = []
    if callable(obj) and not isinstance(obj, torch.nn.Module):
        with _seeded_globals(seed) as s:
            before = torch.get_rng_state()
            try:
                obj = obj()
            except _PASS_THROUGH:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit included
                raise _failed(f"calling {target}", exc) from None
            if torch.initial_seed() == s and not torch.equal(before, torch.get_rng_state()):
                notes.append(f"{target} draws from torch's global random generator without seeding it (e.g. "
                             f"torch.randn without a generator): its model or inputs differ from call to call. "
                             f"verify seeds that generator from --seed, so this run repeats; seed them in the "
                             f"factory (torch.manual_seed or a torch.Generator) to make them the same everywhere")
    return obj, notes


def load_target(target: str, seed: int = 0) -> Any:
    """What ``pkg.module:factory`` (or ``path/to/file.py:factory``) names, called if callable (with
    the global generators seeded from ``seed``, then restored)."""
    return _load(target, seed)[0]


def resolve(obj: Any, arch: str = "auto", seed: int = 0):
    """``(module, graph, example_inputs, source)`` from what a factory returned."""
    from architectures import Architecture
    inputs = None
    if isinstance(obj, tuple) and len(obj) == 2:
        obj, inputs = obj
    if isinstance(obj, Architecture):
        module, graph, source = obj.module(seed=seed), obj.graph, f"architecture {obj.name}"
        if inputs is None:
            from symmetries.testing import example_inputs
            try:
                inputs = example_inputs(obj)
            except TypeError as exc:
                raise VerifyError(f"{exc}: return (architecture, example_inputs) from the factory") from None
    elif isinstance(obj, torch.nn.Module):
        module, graph, source = obj, None, None
        if inputs is None:
            raise VerifyError(f"the factory returned a {type(obj).__name__} without example inputs; "
                              "return (module, example_inputs)")
    else:
        raise VerifyError(f"the factory must return a torch.nn.Module, (module, example_inputs), an "
                          f"Architecture or (architecture, example_inputs); got {type(obj).__name__}")
    if arch != "auto":
        from architectures.spec import parse_arch
        built = parse_arch(arch)
        graph, source = built.graph, f"builder {arch}"
    elif graph is None:
        try:
            from architectures import from_module
        except ImportError:  # pragma: no cover - from_module ships with architectures
            raise VerifyError("--arch auto needs architectures.from_module, which is not available; "
                              "pass --arch BUILDER:ARGS") from None
        from symmetries.testing.outputs import cast_inputs, float_dtype
        # trace with floating inputs in the module's own dtype (the check casts both to --dtype later)
        graph, source = from_module(module, cast_inputs(inputs, float_dtype(module))), "from_module (torch.fx)"
    return module, graph, inputs, source


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _table(report, title: str) -> Table:
    table = Table(title=title)
    for col, justify in (("space", "left"), ("class", "left"), ("examples", "right"), ("max error", "right"),
                         ("tolerance", "right"), ("verdict", "center")):
        table.add_column(col, justify=justify, overflow="fold")
    for c in report.checks:
        verdict = "[green]pass[/]" if c.passed else "[bold red]FAIL[/]"
        table.add_row(c.space, c.cls, str(c.examples), f"{c.max_error:.2e}", f"{c.tolerance:.2e}", verdict)
    return table


def verify(
    target: str = typer.Argument(..., help="pkg.module:factory or path/to/file.py:factory; the factory returns a "
                                            "module, (module, example_inputs), an Architecture or "
                                            "(architecture, example_inputs)."),
    arch: str = typer.Option("auto", "--arch", help="auto: the graph from architectures.from_module (or the "
                                                    "Architecture's own); or a builder spec, e.g. mlp:4,16,3:gelu."),
    examples: int = typer.Option(5, "--examples", "-n", min=1, help="Drawn transforms per space and class."),
    seed: int = typer.Option(0, "--seed", help="Seed of every draw (results are reproducible)."),
    dtype: str = typer.Option("float64", "--dtype", help="float64 (tightest), float32, or model (as given)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable results instead of a table."),
) -> None:
    """Check that every declared symmetry of a model leaves its output unchanged (exit 1 if one does not)."""
    from symmetries.testing import check_invariance
    console = Console()
    err = Console(stderr=True)
    if dtype not in DTYPES:
        err.print(f"[red]error:[/] --dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        raise typer.Exit(2)
    try:
        try:
            obj, notes = _load(target, seed)
            module, graph, inputs, source = resolve(obj, arch, seed)
            report = check_invariance(module, graph, inputs, examples=examples, seed=seed, dtype=DTYPES[dtype])
        except (Exception, *_PASS_THROUGH):
            raise
        except BaseException as exc:  # noqa: BLE001 - e.g. the model's forward called sys.exit
            raise _failed(f"running the model of {target}", exc) from None
        if not report.checks or not report.examples:
            raise VerifyError(f"{target}: its graph ({source}) declares no symmetry to check; nothing was checked")
    except Exception as exc:  # anything raised before a verdict is unusable input: exit 2, not 1
        if as_json:
            print(json.dumps({"target": target, "error": f"{type(exc).__name__}: {exc}"}))
        else:
            err.print(f"[red]error:[/] {escape(f'{target}: {type(exc).__name__}: {exc}')}", highlight=False)
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(_finite(dict(target=target, graph=source, **report.to_dict(), notes=notes)), indent=2))
    else:
        console.print(_table(report, f"{target} — graph: {source}, dtype {report.dtype}"))
        for note in notes:
            console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
        for c in report.failures:
            console.print(f"[bold red]✗[/] {c.message()}", soft_wrap=True)
        notes = [c for c in report.checks if c.passed and c.note]
        for c in notes:
            console.print(f"[dim]note: `{c.space}` {c.cls}: {c.note}[/]", soft_wrap=True)
        verdict = "[green]all declared symmetries hold[/]" if report.passed else \
            f"[bold red]{len(report.failures)} check(s) failed[/]"
        console.print(f"{verdict} — {report.examples} examples, {report.forward_passes} forward passes, "
                      f"{report.seconds:.2f} s")
    if not report.passed:
        raise typer.Exit(1)
