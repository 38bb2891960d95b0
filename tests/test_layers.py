"""The layers contract (pyproject's [tool.importlinter]) covers every module, and holds.

import-linter checks only the modules a layer names; a new module outside every layer would go
unchecked, so this test requires each module of the three packages to sit in exactly one layer.
"""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("symmetries", "solvers", "architectures")


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in contract["layers"]]


def _modules() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if len(parts) > 1:  # the root packages' own __init__ only re-exports their layers
                out.append(".".join(parts))
    return sorted(out)


def _in(module: str, layer_module: str) -> bool:
    return module == layer_module or module.startswith(layer_module + ".")


def test_every_module_sits_in_exactly_one_layer():
    layers = _layers()
    for module in _modules():
        homes = [i for i, layer in enumerate(layers) if any(_in(module, m) for m in layer)]
        assert len(homes) == 1, f"{module} is in layers {homes} of the import-linter contract (need exactly one)"


def test_the_layers_run_core_architectures_solvers_application():
    flat = [m for layer in _layers() for m in layer]
    assert flat.index("solvers") < flat.index("architectures") < flat.index("symmetries.classes")
    assert flat.index("symmetries.cli") < flat.index("symmetries.landscape") < flat.index("solvers")


def test_lint_imports_keeps_the_contract():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    res = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
