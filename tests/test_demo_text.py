"""The transformer demos (``symmetries demo --model gpt|vit``) at the reduced size, and their text data."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from symmetries.cli import app
from symmetries.demo import text as T

runner = CliRunner()


def _solvers_ready() -> bool:
    import solvers
    return "weight_matching" in [i.name for i in solvers.available()]


needs_solvers = pytest.mark.skipif(not _solvers_ready(), reason="the demo aligns with the solvers package")

WM = "weight_matching (heads × orthogonal residual)"
WM_PERM = "weight_matching (permutation only)"
LM = "learned_matching (heads × orthogonal residual)"


# --- the corpus ------------------------------------------------------------------------------------------------

def test_stdlib_corpus_is_fixed_sorted_and_split_without_overlap():
    files = T.stdlib_files()
    assert files == sorted(files) and all(p.suffix == ".py" for p in files)
    s = T.stdlib_split(chars=5_000, context=32)
    assert len(s.train_ids) + len(s.test_ids) == 5_000 and len(s.test_ids) == 500
    expected = T.encode(files[0].read_text(encoding="utf-8", errors="replace")[:100])
    assert torch.equal(s.train_ids[:100], expected)           # starts at the first sorted file
    assert torch.equal(s.test_ids, T.stdlib_split(chars=5_000, context=32).test_ids)   # deterministic
    x, y = s.test
    assert x.shape == y.shape == (len(range(0, len(s.test_ids) - 32, 32)), 32)
    assert torch.equal(x[:, 1:], y[:, :-1])                   # y is x shifted by one character
    assert torch.equal(x[1, 0], s.test_ids[32]) and int(s.vocab_size) == len(T.VOCAB) + 1
    xs, ys = s.sample(4, torch.Generator().manual_seed(0))
    assert xs.shape == (4, 32) and torch.equal(xs[:, 1:], ys[:, :-1]) and int(xs.max()) < s.vocab_size


def test_vocabulary_is_fixed_and_unknown_characters_map_to_one_token():
    ids = T.encode("def f():\n\treturn 'é'")
    assert int(ids.max()) == T.UNKNOWN and T.decode(ids) == "def f():\n?return '?'"
    assert T.decode(T.encode(T.VOCAB)) == T.VOCAB and len(T.VOCAB) == 96


def test_corpus_errors_are_typed(tmp_path):
    with pytest.raises(T.CorpusError, match="no \\*.py files"):
        T.stdlib_files(tmp_path)
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(T.CorpusError, match="fewer than the 100"):
        T.stdlib_text(100, tmp_path)
    assert T.stdlib_text(3, tmp_path) == "x ="
    with pytest.raises(ValueError, match="context"):
        T.stdlib_split(chars=6, context=8, root=tmp_path)


# --- the demo --------------------------------------------------------------------------------------------------

@needs_solvers
def test_gpt_demo_table_json_and_every_applicable_solver(tmp_path):
    import solvers

    r = runner.invoke(app, ["demo", "--model", "gpt", "--tiny", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for name in (WM, WM_PERM, LM, "naive", "standard library"):
        assert name in r.output, name
    data = json.loads((tmp_path / "demo.json").read_text())
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert data["model"] == "gpt" and data["config"]["context"] == 16
    rows = {row["method"]: row for row in data["rows"]}
    assert {WM, WM_PERM, LM} <= set(rows)
    applicable = solvers.applicable(_rms_tiny_gpt())
    for info in solvers.available():     # every registered solver has a row: a curve, or why it has none
        row = next(v for k, v in rows.items() if k.split(" ")[0] == info.name)
        if row["skipped"]:
            assert "not applicable" in row["skipped"] and info.name not in applicable
        elif row["error"]:
            assert row["loss"] is None and info.name not in ("weight_matching", "learned_matching"), row["error"]
        else:
            assert len(row["loss"]) == 5 and row["loss_barrier"] is not None and row["l2"] is not None
    assert data["classes"][WM]["residual"] == "Orthogonal()"
    assert data["classes"][WM_PERM]["residual"] == "Permutation()"
    assert data["classes"][WM_PERM]["blocks.0.attn.qk"] == "HeadStructured(2, Permutation())"
    # the path's endpoints are the trained models' per-token test losses
    wm = rows[WM]
    assert wm["loss"][0] == pytest.approx(data["endpoints"]["A"]["loss"], rel=1e-5)
    assert wm["loss"][-1] == pytest.approx(data["endpoints"]["B"]["loss"], rel=1e-4)
    assert data["naive"]["loss"][-1] == pytest.approx(data["endpoints"]["B"]["loss"], rel=1e-5)
    # weight matching keeps the function: aligned B computes what B computes (float64)
    for method in (WM, WM_PERM, LM):
        assert data["function_change"][method] < 1e-9, method
    assert wm["objective_after"] <= wm["objective_before"]
    assert rows[WM_PERM]["objective_after"] >= wm["objective_after"] - 1e-6   # a subgroup cannot do better
    # the matched weight clouds (Ferbach et al.): every space, naive and per aligned row
    dims = data["dimension"]
    assert set(dims["naive"]) == set(dims[WM]) == {s.name for s in _rms_tiny_gpt().graph.spaces()}
    assert dims[WM]["residual"]["matched_distance"] < dims["naive"]["residual"]["matched_distance"]


def _rms_tiny_gpt():
    import architectures
    from symmetries.demo.transformer import demo_config

    c = demo_config("gpt", "tiny")
    arch = architectures.gpt2(len(T.VOCAB) + 1, c.context, c.d_model, c.n_heads, c.n_layers, c.d_mlp)
    return architectures.rewrite_layernorm(arch, arch.module(seed=0).state_dict())[0]


@needs_solvers
def test_function_check_can_fail_and_a_map_that_is_not_a_symmetry_is_a_failed_row(monkeypatch):
    """An invertible (non-orthogonal) map of the RMS residual stream is not a symmetry: the
    function-change measurement reports the change, and the demo records the row as failed."""
    import solvers
    import symmetries as sy
    from symmetries.demo.transformer import demo_config, function_change, run_transformer_demo

    arch = _rms_tiny_gpt()
    params = arch.module(seed=0).state_dict()
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    bad = sy.TransformSet({"residual": sy.Invertible().random(16, seed=0)})
    good = sy.TransformSet({"residual": sy.Orthogonal().random(16, seed=0)})
    assert function_change(arch, params, bad, ids) > 1e-3 and function_change(arch, params, good, ids) < 1e-10

    real = solvers.solve

    def solve(name, graph, pa, pb, **kw):
        sol = real(name, graph, pa, pb, **kw)
        sol.transforms = sy.TransformSet(dict(sol.transforms.items()) | dict(bad.items()))
        return sol

    monkeypatch.setattr(solvers, "solve", solve)
    result = run_transformer_demo(demo_config("gpt", "tiny", solvers=("weight_matching",), steps=5, alphas=3))
    assert {r.method for r in result.rows} == {WM, WM_PERM}
    assert all(r.curve is None and "ElementNotAdmittedError" in r.error for r in result.rows)
    assert result.function_change == {}


@needs_solvers
def test_vit_demo_on_digits(tmp_path):
    r = runner.invoke(app, ["demo", "--model", "vit", "--tiny", "--solver", "weight_matching", "--out", str(tmp_path),
                            "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout[r.stdout.index("{"):])
    assert data["model"] == "vit" and "digits" in data["title"]
    rows = {row["method"]: row for row in data["rows"]}
    assert set(rows) == {WM, WM_PERM}
    assert all(len(row["loss"]) == 5 and row["accuracy"] is not None for row in rows.values())
    assert 0.0 <= data["endpoints"]["A"]["accuracy"] <= 1.0 and data["endpoints"]["A"]["n"] == 359
    assert max(data["function_change"].values()) < 1e-9


def test_transformer_options_are_refused_cleanly(tmp_path):
    r = runner.invoke(app, ["demo", "--model", "gpt", "--bnn", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--bnn" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["demo", "--model", "lstm", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "lstm" in r.output
