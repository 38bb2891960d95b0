"""README, docs and the basic CLI: what a new user runs first must work as written."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import symmetries
from symmetries.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_example_runs_and_prints_a_tiny_difference():
    block = _python_blocks(ROOT / "README.md")[0]
    out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, check=True, cwd=ROOT)
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-10


@pytest.mark.parametrize("page", ["index.md", "concepts.md"])
def test_docs_examples_run(page):
    for block in _python_blocks(ROOT / "docs" / page):
        code = block.replace("nx.draw_networkx(g)", "pass")  # no display in CI
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r'pip install -e "\.\[dev[^\]]*\]" && (.+)', readme).group(1).strip()
    assert command in (ROOT / ".ci" / "run").read_text()


def test_mkdocs_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    if not Path(mkdocs).exists():
        pytest.skip("mkdocs is not installed (it comes with the dev extra)")
    res = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_cli_version_and_classes():
    runner = CliRunner()
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and symmetries.__version__ in res.output
    res = runner.invoke(app, ["classes"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for name in ("Permutation", "SemiPermutation", "Orthogonal", "Invertible", "PositiveScaling",
                 "SignFlip", "HeadStructured", "odd activations"):
        assert name in res.output


def test_console_script_is_installed():
    exe = shutil.which("symmetries") or str(Path(sys.executable).with_name("symmetries"))
    res = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("symmetries ")


def test_three_packages_import():
    subprocess.run([sys.executable, "-c", "import symmetries, solvers, architectures"], check=True)
