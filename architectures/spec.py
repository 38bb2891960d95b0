"""Architecture specifications on the command line.

Two forms:

* ``BUILDER:ARG:ARG…`` — a builder of the ``architectures`` package called with the
  arguments: ``v1,v2,…`` is a list (``64,128,10``), ``key=value`` a keyword, other values
  are ints, floats, ``true``/``false`` or strings. ``mlp:64,128,10:relu`` is
  ``architectures.mlp([64, 128, 10], "relu")``; ``mlp:64,128,10:activation=tanh:bias=false``.
* ``MODULE:ATTR[:ARG…]`` — ``ATTR`` of the importable ``MODULE`` (the user's code): an
  ``Architecture``, or a callable returning one (called with the arguments). ``MODULE`` is
  looked up in the current folder first, as ``python -m`` does (:func:`import_user_module`).
  Importing it and calling the factory run the user's code, as ``pytest`` does; anything else
  it names or returns, and any way that code fails (``sys.exit`` included), is an
  :class:`ArchSpecError` naming the specification.
"""
from __future__ import annotations

import importlib
import os
import sys

from symmetries.errors import ArgumentError, SymmetryError

__all__ = ["ArchSpecError", "parse_arch", "parse_value", "builders", "import_user_module", "cwd_importable"]


class ArchSpecError(SymmetryError, ValueError):
    """An architecture specification that cannot be parsed, imported or built."""


def parse_value(text: str):
    """``"64,128"`` → ``[64, 128]``; ``"3"`` → 3; ``"0.5"`` → 0.5; ``"true"`` → True; else the string."""
    if "," in text:
        return [parse_value(t) for t in text.split(",") if t != ""]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _split_args(parts: list[str]) -> tuple[list, dict]:
    args, kwargs = [], {}
    for p in parts:
        if "=" in p:
            k, v = p.split("=", 1)
            if not k.isidentifier():
                raise ArchSpecError(f"{k!r} is not a valid keyword name in {p!r}")
            kwargs[k] = parse_value(v)
        elif kwargs:
            raise ArchSpecError(f"positional argument {p!r} follows a keyword argument")
        else:
            args.append(parse_value(p))
    return args, kwargs


def builders() -> dict:
    """``name → builder``: the builders ``architectures.BUILDERS`` declares (networks from sizes and
    options; not helpers such as ``from_module``, ``rebuild`` or ``assert_graphs_equivalent``)."""
    import architectures
    return {name: getattr(architectures, name) for name in architectures.BUILDERS}



def cwd_importable() -> None:
    """Put the current folder first on ``sys.path`` unless it is there (as ``''`` or by name):
    an installed console script does not search it, ``python -m`` and ``python -c`` do."""
    cwd = os.getcwd()
    if not any(entry in ("", ".", cwd) or _same_dir(entry, cwd) for entry in sys.path):
        sys.path.insert(0, cwd)


def _same_dir(entry: str, cwd: str) -> bool:
    try:
        return os.path.isdir(entry) and os.path.samefile(entry, cwd)
    except OSError:
        return False


def import_user_module(name: str):
    """``importlib.import_module(name)`` with the current folder importable (:func:`cwd_importable`)."""
    cwd_importable()
    importlib.invalidate_caches()  # a module file written since the last import of this folder
    return importlib.import_module(name)


def parse_arch(spec: str):
    """Build the ``architectures.Architecture`` that ``spec`` names (see the module docstring)."""
    from architectures import Architecture

    if not isinstance(spec, str) or not spec.strip():
        raise ArchSpecError("empty architecture specification; e.g. 'mlp:64,128,10:relu' or 'mypkg.models:build'")
    head, *rest = spec.strip().split(":")
    known = builders()
    if "." not in head and head in known:
        target, label = known[head], f"architectures.{head}"
    else:
        if not rest:
            raise ArchSpecError(f"unknown builder {head!r} (builders: {', '.join(sorted(known))}); for your own "
                                f"code write MODULE:FACTORY")
        attr, rest = rest[0], rest[1:]
        try:
            module = import_user_module(head)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the user's module may fail in any way on import, exit included
            hint = "" if "." in head else f" (nor is it a builder: {', '.join(sorted(known))})"
            where = f" (searched the current folder {os.getcwd()!r} and sys.path)" \
                if isinstance(exc, ModuleNotFoundError) and exc.name == head.split(".")[0] else ""
            raise ArchSpecError(f"cannot import module {head!r} of {spec!r}: {type(exc).__name__}: {exc}{where}"
                                f"{hint}") from None
        if not hasattr(module, attr):
            raise ArchSpecError(f"module {head!r} has no attribute {attr!r}")
        target, label = getattr(module, attr), f"{head}:{attr}"
    args, kwargs = _split_args(rest)
    if isinstance(target, Architecture):
        if args or kwargs:
            raise ArchSpecError(f"{label} is an Architecture, not a factory: it takes no arguments")
        return target
    if not callable(target):
        raise ArchSpecError(f"{label} is a {type(target).__name__}, neither an Architecture nor a factory")
    call = f"{label}({', '.join([*map(repr, args), *(f'{k}={v!r}' for k, v in kwargs.items())])})"
    try:
        arch = target(*args, **kwargs)
    except ArgumentError as exc:  # the spec gave the builder a bad argument: a spec error, naming the call
        raise ArchSpecError(f"{call} failed: {exc}") from None
    except SymmetryError:
        raise
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        raise ArchSpecError(f"{call} called sys.exit({exc.code!r}) instead of returning an Architecture") from None
    except BaseException as exc:  # noqa: BLE001 - the user's factory may fail in any way
        raise ArchSpecError(f"{call} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(arch, Architecture):
        raise ArchSpecError(f"{label} returned a {type(arch).__name__}, not an architectures.Architecture (for an "
                            f"nn.Module, return architectures.from_module(module, example_inputs))")
    return arch
