"""``symmetries align`` / ``barrier`` on small checkpoint files: success, corrupt and mismatched files."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import architectures
import symmetries as sy
from symmetries import io
from symmetries.archspec import ArchSpecError, parse_arch, parse_value
from symmetries.cli import app

ARCH = "mlp:4,6,5,3:relu"
runner = CliRunner()


def _has_solvers() -> bool:
    import solvers
    return "weight_matching" in [i.name for i in solvers.available()]


def _params(widths=(4, 6, 5, 3), seed=0):
    return {k: v.detach().clone() for k, v in architectures.mlp(list(widths)).module(seed=seed).state_dict().items()}


@pytest.fixture()
def files(tmp_path):
    a, b = _params(seed=0), _params(seed=1)
    save_file(a, tmp_path / "a.safetensors")
    torch.save(b, tmp_path / "b.pt")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    save_file({"x": x, "y": torch.randint(0, 3, (40,), generator=g)}, tmp_path / "data.safetensors")
    return tmp_path


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


# -- io -----------------------------------------------------------------------------------------
def test_io_roundtrip_and_wrapped_torch_files(tmp_path):
    p = _params()
    for name in ("m.safetensors", "m.pt"):
        io.save_state_dict(p, tmp_path / name)
        back = io.load_state_dict(tmp_path / name)
        assert set(back) == set(p) and all(torch.equal(back[k], p[k]) for k in p)
    torch.save({"state_dict": p, "epoch": 3}, tmp_path / "wrapped.pt")
    assert set(io.load_state_dict(tmp_path / "wrapped.pt")) == set(p)
    assert io.is_safetensors(tmp_path / "m.safetensors") and not io.is_safetensors(tmp_path / "m.pt")
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "m.safetensors", "wrapped.pt"]  # no temporary files left


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1", "pickle"])
def test_io_refuses_corrupt_and_unsafe_files(tmp_path, content):
    f = tmp_path / "bad.pt"
    if content == "pickle":
        torch.save({"w": torch.zeros(2), "evil": Evil()}, f)
    else:
        f.write_bytes(content)
    with pytest.raises(io.CheckpointError, match="bad.pt"):
        io.load_state_dict(f)


def test_io_refuses_non_state_dicts_and_missing_files(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(io.CheckpointError, match="not a non-empty state dict"):
        io.load_state_dict(tmp_path / "list.pt")
    torch.save({"w": torch.zeros(2), "n": 3}, tmp_path / "mixed.pt")
    with pytest.raises(io.CheckpointError, match="'n'"):
        io.load_state_dict(tmp_path / "mixed.pt")
    with pytest.raises(io.CheckpointError, match="does not exist"):
        io.load_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(io.CheckpointError, match="folder"):
        io.save_state_dict(_params(), tmp_path / "no" / "x.safetensors")


# -- architecture specifications ---------------------------------------------------------------
def test_arch_specs():
    assert parse_value("64,128") == [64, 128] and parse_value("0.5") == 0.5 and parse_value("false") is False
    arch = parse_arch("mlp:8,16,3:activation=tanh:bias=false")
    assert arch.config == {"widths": [8, 16, 3], "activation": "tanh", "bias": False}
    assert parse_arch("symmetries_test_factory_module:build").config["widths"] == [4, 6, 5, 3]
    for bad, msg in [("", "empty"), ("nosuchthing", "unknown builder"), ("mlp:4", "failed"),
                     ("mlp:a=1:3", "follows a keyword"), ("no.such.module:f", "cannot import"),
                     ("symmetries_test_factory_module:nothing", "no attribute"),
                     ("symmetries_test_factory_module:NOT_ARCH", "neither")]:
        with pytest.raises(ArchSpecError, match=msg):
            parse_arch(bad)


@pytest.fixture(autouse=True)
def _factory_module(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "symmetries_test_factory_module.py").write_text(
        "import architectures\nNOT_ARCH = 3\ndef build():\n    return architectures.mlp([4, 6, 5, 3])\n")
    monkeypatch.syspath_prepend(str(folder))


# -- barrier ------------------------------------------------------------------------------------
def test_barrier_of_a_model_with_itself_is_zero(files):
    r = _run("barrier", files / "a.safetensors", files / "a.safetensors", "--arch", ARCH,
             "--data", files / "data.safetensors", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["loss_barrier"] == 0.0 and out["loss_barrier_linear"] == 0.0 and len(out["alphas"]) == 25


def test_barrier_between_two_models_with_plot_repair_and_factory_arch(files):
    r = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", "symmetries_test_factory_module:build",
             "--data", files / "data.safetensors", "--alphas", 9, "--json", "--plot", files / "curve.png")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["loss"]) == 9 and out["l2"] > 0
    assert (files / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r2 = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "data.safetensors",
              "--alphas", 9, "--repair")
    assert r2.exit_code == 0 and "loss barrier" in r2.output


def test_barrier_on_bundled_digits(tmp_path):
    arch = architectures.mlp([64, 8, 10])
    for s in (0, 1):
        io.save_state_dict(arch.module(seed=s).state_dict(), tmp_path / f"m{s}.safetensors")
    r = _run("barrier", tmp_path / "m0.safetensors", tmp_path / "m1.safetensors", "--arch", "mlp:64,8,10",
             "--data", "digits:test", "--alphas", 5, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["accuracy"][0] >= 0


@pytest.mark.parametrize("case", ["corrupt", "truncated", "wrong_arch", "missing_key", "bad_spec", "bad_data",
                                  "data_without_y"])
def test_barrier_bad_input_ends_with_a_message(files, case):
    a, b, arch, data = files / "a.safetensors", files / "b.pt", ARCH, str(files / "data.safetensors")
    if case == "corrupt":
        (files / "c.pt").write_bytes(b"not a checkpoint at all")
        b = files / "c.pt"
    elif case == "truncated":
        raw = (files / "a.safetensors").read_bytes()
        (files / "t.safetensors").write_bytes(raw[: len(raw) // 2])
        b = files / "t.safetensors"
    elif case == "wrong_arch":
        save_file(_params((4, 7, 5, 3)), files / "w.safetensors")
        b = files / "w.safetensors"
    elif case == "missing_key":
        p = _params()
        del p["layers.1.bias"]
        save_file(p, files / "m.safetensors")
        b = files / "m.safetensors"
    elif case == "bad_spec":
        arch = "mlp:4,6"
    elif case == "bad_data":
        data = str(files / "nope.safetensors")
    else:
        save_file({"x": torch.zeros(3, 4)}, files / "x.safetensors")
        data = str(files / "x.safetensors")
    r = _run("barrier", a, b, "--arch", arch, "--data", data)
    assert r.exit_code == 2, r.output
    expected = {"corrupt": "cannot read", "truncated": "cannot read", "wrong_arch": "layers.0.weight",
                "missing_key": "layers.1.bias", "bad_spec": "parameter", "bad_data": "does not exist",
                "data_without_y": "'y'"}[case]
    assert "error:" in r.output and expected in r.output


# -- align --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["corrupt", "wrong_arch", "missing_folder", "unknown_solver"])
def test_align_bad_input_writes_nothing(files, case):
    a, b, out = files / "a.safetensors", files / "b.pt", files / "aligned.safetensors"
    solver = "weight_matching"
    if case == "corrupt":
        (files / "c.safetensors").write_bytes(b"\x00" * 64)
        b = files / "c.safetensors"
    elif case == "wrong_arch":
        torch.save(_params((4, 6, 2, 3)), files / "w.pt")
        b = files / "w.pt"
    elif case == "missing_folder":
        out = files / "no" / "aligned.safetensors"
    else:
        solver = "no_such_solver"
    before = sorted(os.listdir(files))
    r = _run("align", a, b, "--arch", ARCH, "--solver", solver, "-o", out)
    assert r.exit_code != 0 and "error:" in r.output, r.output
    if case != "missing_folder" or _has_solvers():
        assert sorted(os.listdir(files)) == before          # no output, no temporary file


@pytest.mark.skipif(not _has_solvers(), reason="needs the solvers package's weight_matching")
def test_align_writes_a_function_preserving_aligned_model(files):
    b = _params(seed=1)
    planted = sy.apply(architectures.mlp([4, 6, 5, 3]).graph, _params(seed=0),
                       sy.random_transforms(architectures.mlp([4, 6, 5, 3]).graph, 5, classes=sy.Permutation()))
    io.save_state_dict(planted, files / "pa.safetensors")
    out = files / "aligned.safetensors"
    r = _run("align", files / "a.safetensors", files / "pa.safetensors", "--arch", ARCH, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    aligned = io.load_state_dict(out)
    a = _params(seed=0)
    assert summary["l2_after"] < 1e-5 < summary["l2_before"]
    assert all(torch.allclose(aligned[k], a[k], atol=1e-6) for k in a)
    r = _run("align", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "-o", out)
    assert r.exit_code == 0, r.output
    m, m2 = architectures.mlp([4, 6, 5, 3]).module(), architectures.mlp([4, 6, 5, 3]).module()
    m.load_state_dict(b)
    m2.load_state_dict(io.load_state_dict(out))
    x = torch.randn(9, 4)
    torch.testing.assert_close(m(x), m2(x), rtol=2e-5, atol=1e-6)


def test_align_with_data_on_float64_checkpoints(files):
    """The data is cast to the checkpoints' dtype for data-driven solvers, as barrier does."""
    import solvers
    if "learned_matching" not in [i.name for i in solvers.available()]:
        pytest.skip("needs the solvers package's learned_matching")
    for seed, name in enumerate(("a", "b")):
        io.save_state_dict({k: v.double() for k, v in _params(seed=seed).items()}, files / f"{name}64.pt")
    out = files / "aligned64.pt"
    r = _run("align", files / "a64.pt", files / "b64.pt", "--arch", ARCH, "--solver", "learned_matching",
             "--data", files / "data.safetensors", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    assert all(v.dtype == torch.float64 for v in io.load_state_dict(out).values())


def test_barrier_with_batchnorm_reset_on_a_vgg_spec(tmp_path):
    spec = "vgg:4,M,6:in_channels=1:num_classes=3:batchnorm=true"
    arch = parse_arch(spec)
    g = torch.Generator().manual_seed(0)
    for s in (0, 1):
        m = arch.module(seed=s)
        m.train()
        with torch.no_grad():   # give the running statistics something to hold
            m(torch.randn(16, 1, 8, 8, generator=g) * (1 + s))
        io.save_state_dict(m.state_dict(), tmp_path / f"m{s}.safetensors")
    io.save_state_dict({"x": torch.randn(24, 1, 8, 8, generator=g), "y": torch.randint(0, 3, (24,), generator=g)},
                       tmp_path / "d.safetensors")
    args = ["barrier", tmp_path / "m0.safetensors", tmp_path / "m1.safetensors", "--arch", spec,
            "--data", tmp_path / "d.safetensors", "--alphas", 5, "--json"]
    plain, reset = _run(*args), _run(*args, "--reset-bn")
    assert plain.exit_code == 0 and reset.exit_code == 0, plain.output + reset.output
    lp, lr = json.loads(plain.output)["loss"], json.loads(reset.output)["loss"]
    assert lp[0] == lr[0] and lp[-1] == lr[-1] and lp[2] != lr[2]   # endpoints kept, interior reset
    both = _run(*args, "--reset-bn", "--repair")
    assert both.exit_code == 2 and "one of" in both.output
