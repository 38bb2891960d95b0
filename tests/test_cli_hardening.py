"""Issue 12, the command line at the door: no output replaces an input, no score for a non-finite
model or data, typed errors for tensors the library cannot compute with, byte-identical outputs."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import architectures
from symmetries import io
from symmetries.cli import app

ARCH = "mlp:4,6,5,3:relu"
runner = CliRunner()


def _params(seed=0):
    return {k: v.detach().clone() for k, v in architectures.mlp([4, 6, 5, 3]).module(seed=seed).state_dict().items()}


@pytest.fixture()
def files(tmp_path):
    save_file(_params(0), tmp_path / "a.safetensors")
    torch.save(_params(1), tmp_path / "b.pt")
    g = torch.Generator().manual_seed(0)
    save_file({"x": torch.randn(30, 4, generator=g), "y": torch.randint(0, 3, (30,), generator=g)},
              tmp_path / "data.safetensors")
    return tmp_path


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output and "unexpected" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _flat(text: str) -> str:
    return "".join(text.split())


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# -- item 2: an output never replaces an input ---------------------------------------------------
@pytest.mark.parametrize("which", ["A", "B", "link_to_A", "hardlink_to_B", "data"])
def test_align_refuses_an_output_that_is_an_input_before_any_work(files, which):
    (files / "link.safetensors").symlink_to(files / "a.safetensors")
    os.link(files / "b.pt", files / "hard.pt")
    out = {"A": files / "a.safetensors", "B": files / "b.pt", "link_to_A": files / "link.safetensors",
           "hardlink_to_B": files / "hard.pt", "data": files / "data.safetensors"}[which]
    before = _digests(files)
    # an unknown solver would fail later: the overwrite is refused first, before any work
    r = _run("align", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "-o", out, "--solver", "nosuch",
             "--data", files / "data.safetensors")
    assert r.exit_code == 2, r.output
    msg = _flat(r.output)
    label = {"A": "inputA", "link_to_A": "inputA", "B": "inputB", "hardlink_to_B": "inputB", "data": "input--data"}
    assert label[which] in msg and out.name in msg and "replace" in msg, r.output
    assert _digests(files) == before and sorted(os.listdir(files)) == sorted(before)


@pytest.mark.parametrize("which", ["A", "B", "data", "fit_data", "link_to_data"])
def test_barrier_plot_refuses_an_input_path(files, which):
    save_file(_params(0), files / "a.png")       # an input that carries the plot's suffix
    g = torch.Generator().manual_seed(3)
    save_file({"x": torch.randn(10, 4, generator=g), "y": torch.randint(0, 3, (10,), generator=g)}, files / "d.png")
    save_file({"x": torch.randn(10, 4, generator=g), "y": torch.randint(0, 3, (10,), generator=g)}, files / "f.png")
    (files / "l.png").symlink_to(files / "d.png")
    plot = {"A": "a.png", "B": "a.png", "data": "d.png", "fit_data": "f.png", "link_to_data": "l.png"}[which]
    a, b = (files / "a.safetensors", files / "a.png") if which == "B" else (files / "a.png", files / "b.pt")
    before = _digests(files)
    r = _run("barrier", a, b, "--arch", ARCH, "--data", files / "d.png", "--fit-data", files / "f.png",
             "--plot", files / plot)
    assert r.exit_code == 2, r.output
    label = {"A": "inputA", "B": "inputB", "data": "input--data", "fit_data": "input--fit-data",
             "link_to_data": "input--data"}[which]
    assert "--plot" in r.output and label in _flat(r.output), r.output
    assert _digests(files) == before


@pytest.mark.parametrize("name", ["curve", "curve.safetensors", "curve.jpeg"])
def test_barrier_plot_refuses_a_suffix_it_would_not_write(files, name):
    r = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "data.safetensors",
             "--plot", files / name)
    assert r.exit_code == 2 and "--plot" in r.output and ".png" in r.output, r.output
    assert not (files / name).exists()


@pytest.mark.parametrize("name, magic", [("curve.PNG", b"\x89PNG"), ("curve.pdf", b"%PDF"), ("curve.svg", b"<?xml")])
def test_barrier_plot_format_follows_the_suffix(files, name, magic):
    """The plot is written in the format its suffix names (PNG bytes in a .pdf were written before)."""
    ok = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "data.safetensors",
              "--alphas", 3, "--plot", files / name)
    assert ok.exit_code == 0 and (files / name).read_bytes()[:len(magic)] == magic, ok.output


def test_check_not_input_names_both_and_lets_distinct_files_pass(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"a")
    io.check_not_input(tmp_path / "out", {"A": tmp_path / "a", "--data": None})   # distinct: no error
    monkeypatch.chdir(tmp_path)
    with pytest.raises(io.CheckpointError, match=r"--plot './a' is the input A 'a'") as info:
        io.check_not_input("./a", {"A": "a"}, flag="--plot")
    assert info.value.path == "./a" and (tmp_path / "a").read_bytes() == b"a"


# -- items 3 and 4: non-finite and unusable tensors are refused, naming the file and tensor -------
def _broken(kind):
    p = _params(1)
    if kind == "nan_all":
        return {k: torch.full_like(v, float("nan")) for k, v in p.items()}
    if kind == "inf_one":
        p["layers.1.weight"][2, 3] = float("inf")
    elif kind == "float8":
        p["layers.1.weight"] = p["layers.1.weight"].to(torch.float8_e4m3fn)
    elif kind == "sparse":
        p["layers.1.weight"] = p["layers.1.weight"].to_sparse()
    elif kind == "meta":
        p["layers.1.weight"] = torch.empty(5, 6, device="meta")
    elif kind == "complex":
        p["layers.1.weight"] = p["layers.1.weight"].to(torch.complex64)
    return p


EXPECTED = {"nan_all": ("layers.0.bias", "non-finite"), "inf_one": ("layers.1.weight", "1non-finiteentry"),
            "float8": ("layers.1.weight", "float8_e4m3fn"), "sparse": ("layers.1.weight", "sparse"),
            "meta": ("layers.1.weight", "metatensor"), "complex": ("layers.1.weight", "complex64")}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("side", ["A", "B"])
@pytest.mark.parametrize("command", ["barrier", "align"])
def test_unusable_weights_are_refused_naming_the_file_and_tensor(files, kind, side, command):
    p = _broken(kind)
    bad = files / "bad.pt"
    if kind in ("float8", "nan_all", "inf_one"):
        bad = files / "bad.safetensors"
        save_file(p, bad)
    else:
        torch.save(p, bad)
    a, b = (bad, files / "b.pt") if side == "A" else (files / "a.safetensors", bad)
    extra = ["--data", files / "data.safetensors"] if command == "barrier" else ["-o", files / "out.safetensors"]
    r = _run(command, a, b, "--arch", ARCH, *extra)
    assert r.exit_code == 2, r.output
    tensor, what = EXPECTED[kind]
    msg = _flat(r.output)
    assert f"{side}'{bad}'".replace(" ", "") in msg and f"tensor'{tensor}'" in msg and what in msg, r.output
    assert not (files / "out.safetensors").exists()


@pytest.mark.parametrize("case", ["nan_x", "inf_y", "scalar_x", "scalar_y", "float8_x", "complex_x"])
@pytest.mark.parametrize("flag", ["--data", "--fit-data"])
def test_unusable_data_is_refused_naming_the_flag_file_and_tensor(files, case, flag):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 4, generator=g), torch.randn(20, 3, generator=g)
    if case == "nan_x":
        x[7, 2] = float("nan")
    elif case == "inf_y":
        y[0, 0] = -float("inf")
    elif case == "scalar_x":
        x = torch.tensor(1.0)
    elif case == "scalar_y":
        y = torch.tensor(2.0)
    elif case == "float8_x":
        x = x.to(torch.float8_e5m2)
    else:
        x = x.to(torch.complex64)
    bad = files / "bad_data.pt"
    torch.save({"x": x, "y": y}, bad)
    args = ["barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--repair"]
    args += ["--data", bad] if flag == "--data" else ["--data", files / "data.safetensors", "--fit-data", bad]
    r = _run(*args)
    assert r.exit_code == 2, r.output
    tensor = "y" if case.endswith("_y") else "x"
    expected = {"nan_x": "(7,2)", "inf_y": "-inf", "scalar_x": "0-d", "scalar_y": "0-d", "float8_x": "float8_e5m2",
                "complex_x": "complex64"}[case]
    msg = _flat(r.output)
    assert f"{flag}'{bad}'" in msg and f"tensor'{tensor}'" in msg and expected in msg, r.output
    if flag == "--data":
        out = files / "o.safetensors"
        r = _run("align", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--solver", "activation_matching",
                 "--data", bad, "-o", out)
        assert r.exit_code == 2 and f"tensor'{tensor}'" in _flat(r.output) and not out.exists(), r.output


def test_a_factory_that_exits_is_an_error_not_a_success(files, tmp_path, monkeypatch):
    (tmp_path / "exits_in_module_h12.py").write_text(
        "import sys, architectures\n"
        "def build():\n    return architectures.Architecture('x', architectures.mlp([4, 6, 5, 3]).graph, quit_, {})\n"
        "def quit_(**kwargs):\n    sys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", "exits_in_module_h12:build",
             "--data", files / "data.safetensors")
    assert r.exit_code == 2 and "sys.exit(0)" in r.output, r.output


# -- item 6: the same input gives the same bytes ---------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_aligned_files_are_byte_identical_run_to_run(files, suffix):
    outs = [files / f"out{i}{suffix}" for i in range(3)]
    for out in outs:
        r = _run("align", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "-o", out)
        assert r.exit_code == 0, r.output
    data = [o.read_bytes() for o in outs]
    assert data[0] == data[1] == data[2]
    back = io.load_state_dict(outs[0])
    assert set(back) == set(_params())


def test_saved_files_are_byte_identical_whatever_the_metadata_order(tmp_path):
    meta = {f"key{i}": f"value{i}" for i in range(6)}
    blobs = set()
    for i in range(8):
        shuffled = dict(sorted(meta.items(), key=lambda kv: hash((kv[0], i))))
        io.save_state_dict(_params(), tmp_path / f"m{i}.safetensors", metadata=shuffled)
        blobs.add((tmp_path / f"m{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m0.safetensors"), "pt") as f:
        assert f.metadata() == meta


def test_the_guarantees_page_names_tests_that_exist():
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "guarantees.md").read_text()
    refs = re.findall(r"`(tests/[\w*]+\.py)((?:::\w+)?)`|`::(\w+)`", page)
    assert len(refs) > 20
    current = None
    for path, name, bare in refs:
        if path:
            current = path
            files = sorted(root.glob(path))
            assert files, path
            name = name[2:]
        else:
            files, name = sorted(root.glob(current)), bare
        if name:
            assert any(re.search(rf"^def {name}\(", f.read_text(), flags=re.M) for f in files), (current, name)
