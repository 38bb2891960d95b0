"""Smoke tests of ``symmetries demo`` with tiny settings (the full demo is not run here)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from symmetries.cli import app
from symmetries.demo.data import digits

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
    naive, matched = out["dimension"]["naive"]["hidden.0"], out["dimension"]["weight_matching"]["hidden.0"]
    assert matched["matched_distance"] < naive["matched_distance"] and matched["n"] == 32
    assert 1 <= matched["dim_a"] <= matched["dim_joint"] and matched["dim_b"] == naive["dim_b"]


def test_demo_table_with_every_solver_and_bnn(tmp_path):
    r = runner.invoke(app, ["demo", "--width", "16", "--depth", "1", "--epochs", "3", "--bnn",
                            "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "naive" in r.output and "weight_matching" in r.output and "BNN" in r.output
    data = json.loads((tmp_path / "demo.json").read_text())
    import solvers
    ran = {row["method"] for row in data["rows"]}
    # every registered solver that needs no extra option applies to an MLP (posterior_matching needs
    # stds: the --bnn row runs it through align_posteriors)
    assert {i.name for i in solvers.available() if not solvers.get(i.name).required_options()} <= ran
    assert "posterior_matching" not in ran
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


def test_demo_json_is_strict_and_skipped_or_failed_rows_carry_no_curve(tmp_path, monkeypatch):
    """A skipped solver (over its width limit) and a failing one are recorded with their reason and
    no curve, distance or time (they carried the naive curve, so the JSON showed barriers they never
    had); demo.json is strict JSON (no NaN)."""
    import solvers
    import symmetries.demo.run as D

    real_solve = solvers.solve

    def solve(name, *args, **kwargs):
        if name == "optimal_transport":
            raise RuntimeError("planted failure")
        return real_solve(name, *args, **kwargs)

    monkeypatch.setattr(solvers, "applicable", lambda arch: ["weight_matching", "optimal_transport", "relaxation"])
    monkeypatch.setattr(solvers, "solve", solve)
    monkeypatch.setattr(D, "SIZE_LIMITS", {"relaxation": 8})
    r = runner.invoke(app, ["demo", "--width", "16", "--depth", "1", "--epochs", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "demo.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    rows = {row["method"]: row for row in data["rows"]}
    skipped, failed = rows["relaxation"], rows["optimal_transport"]
    assert "width 16 > 8" in skipped["skipped"] and skipped["error"] is None
    assert "planted failure" in failed["error"] and failed["skipped"] is None
    for row in (skipped, failed):
        for key in ("loss_barrier", "loss_barrier_linear", "accuracy_barrier", "midpoint_loss", "l2", "seconds",
                    "alphas", "loss", "accuracy"):
            assert row[key] is None, (row["method"], key)
    assert rows["weight_matching"]["loss"] is not None and len(rows["weight_matching"]["loss"]) == 25
    assert "relaxation skipped" in r.output and "failed" in r.output


def test_demo_time_column_is_solver_time_plus_repair_time(tmp_path):
    from symmetries.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(width=16, depth=1, epochs=2, solvers=("weight_matching",)))
    rows = {r.method: r for r in result.rows}
    wm, wm_repair, naive_repair = rows["weight_matching"], rows["weight_matching + REPAIR"], rows["naive + REPAIR"]
    assert wm.repair_seconds == 0.0 and wm.seconds == wm.solver_seconds > 0
    assert wm_repair.solver_seconds == wm.solver_seconds and wm_repair.repair_seconds > 0
    assert wm_repair.seconds == pytest.approx(wm_repair.solver_seconds + wm_repair.repair_seconds)
    assert naive_repair.solver_seconds == 0.0 and naive_repair.seconds == naive_repair.repair_seconds > 0
    d = wm_repair.as_dict()
    assert d["seconds"] == pytest.approx(d["solver_seconds"] + d["repair_seconds"])
    from symmetries.cli.demo import TIME_NOTE, render_table
    table = render_table(result)
    assert table.caption.startswith(TIME_NOTE) and "REPAIR" in TIME_NOTE and "solver" in TIME_NOTE


def test_tutorial_and_demo_fit_posteriors_with_one_function(monkeypatch):
    """The tutorial's BNN section calls the demo's own train_posterior (it used batch size 128 where
    the demo used 64, so its figures differed)."""
    import re
    from pathlib import Path

    import symmetries.demo.run as D
    from symmetries import posteriors as P

    page = (Path(__file__).resolve().parents[1] / "docs" / "tutorial.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", page, flags=re.S))
    assert "train_posterior(" in code and "train_mean_field(" not in code
    seen = []
    real = P.train_mean_field

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("epochs", "lr", "batch_size")})
        return real(*args, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(P, "train_mean_field", spy)
    D.run_demo(D.DemoConfig(width=8, depth=1, epochs=1, solvers=("weight_matching",), repair=False, bnn=True,
                            bnn_samples=1, alphas=3))
    cfg = D.DemoConfig()
    expected = {"epochs": cfg.bnn_epochs, "lr": cfg.bnn_lr, "batch_size": cfg.batch_size}
    assert seen == [expected, expected] and expected["batch_size"] == 64
