"""Smoke tests of ``symmetries demo`` with tiny settings (the full demo is not run here)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from symmetries.cli import app
from symmetries.data import digits

runner = CliRunner()


def _solvers_ready() -> bool:
    import solvers
    return "weight_matching" in [i.name for i in solvers.available()]


pytestmark = pytest.mark.skipif(not _solvers_ready(), reason="the demo aligns with the solvers package")


def test_bundled_digits_split():
    s = digits(seed=3)
    assert s.train[0].shape == (1438, 64) and s.test[0].shape == (359, 64) and s.classes == 10
    assert float(s.train[0].max()) <= 1.0 and float(s.train[0].min()) >= 0.0
    s2 = digits(seed=3)
    assert bool((s.test[1] == s2.test[1]).all())


def test_demo_json_plot_and_weight_matching_gain(tmp_path):
    r = runner.invoke(app, ["demo", "--width", "32", "--depth", "1", "--epochs", "8", "--seed", "1",
                            "--solver", "weight_matching", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "demo.json").read_text())["naive"]["loss_barrier"] == out["naive"]["loss_barrier"]
    rows = {row["method"]: row for row in out["rows"]}
    wm = rows["weight_matching"]
    assert wm["error"] is None and len(wm["loss"]) == 25
    assert wm["loss_barrier"] < out["naive"]["loss_barrier"] and wm["l2"] < out["naive"]["l2"]
    assert "weight_matching + REPAIR" in rows
    assert out["widths"] == [64, 32, 10]
    assert set(out["cka"]) == {"hidden.0"} and 0.5 < out["cka"]["hidden.0"] <= 1.0


def test_demo_table_with_every_solver_and_bnn(tmp_path):
    r = runner.invoke(app, ["demo", "--width", "16", "--depth", "1", "--epochs", "3", "--bnn",
                            "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "naive" in r.output and "weight_matching" in r.output and "BNN" in r.output
    data = json.loads((tmp_path / "demo.json").read_text())
    import solvers
    ran = {row["method"] for row in data["rows"]}
    assert {i.name for i in solvers.available()} <= ran        # every registered solver applies to an MLP
    failed = {row["method"]: row["error"] for row in data["rows"] if row["error"] or row["skipped"]}
    assert not failed, failed
    assert data["bnn"]["w2_after"] <= data["bnn"]["w2_before"]
    assert len(data["bnn"]["aligned"]["loss"]) == 25


def test_demo_unknown_solver_is_a_clean_error(tmp_path):
    r = runner.invoke(app, ["demo", "--solver", "no_such_solver", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no_such_solver" in r.output and "Traceback" not in r.output


def test_demo_output_folder_error_goes_to_stderr(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = runner.invoke(app, ["demo", "--out", str(blocker / "sub")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "cannot create output folder" in r.stderr and "error" not in r.stdout


def test_tutorial_runs_as_written(tmp_path):
    """docs/tutorial.md's Python blocks, in order, in a fresh interpreter (writes its plot to tmp)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "tutorial_paths.png").read_bytes()[:4] == b"\x89PNG"
    assert "refused:" in res.stdout and "mean-field" in res.stdout
