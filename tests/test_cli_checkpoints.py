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
from architectures.spec import ArchSpecError, parse_arch, parse_value
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


def _flat(text: str) -> str:
    """``text`` without whitespace (rich wraps long messages at the terminal width, even inside words)."""
    return "".join(text.split())


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
    """Unpickling it creates the file ``marker`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1", "pickle"])
def test_io_refuses_corrupt_and_unsafe_files(tmp_path, content):
    f = tmp_path / "bad.pt"
    marker = tmp_path / "unpickled_code_ran"
    if content == "pickle":
        torch.save({"w": torch.zeros(2), "evil": Evil(marker)}, f)
    else:
        f.write_bytes(content)
    with pytest.raises(io.CheckpointError, match="bad.pt") as info:
        io.load_state_dict(f)
    assert not marker.exists()                      # the pickle's code never ran (weights_only=True)
    if content == "pickle":
        msg = str(info.value)
        assert "builtins.open" in msg or "io.open" in msg, msg      # names the refused global
        assert "never loaded" in msg and "safetensors" in msg and "weights_only=False" not in msg


def test_io_refused_pickle_messages_name_the_object_without_ansi_codes(tmp_path):
    import numpy as np
    torch.save({"x": np.zeros(3, dtype=np.float32)}, tmp_path / "np.pt")
    with pytest.raises(io.CheckpointError) as info:
        io.load_state_dict(tmp_path / "np.pt")
    msg = str(info.value)
    assert "\x1b" not in msg and "numpy" in msg and "_reconstruct" in msg, msg
    assert "never loaded" in msg and "torch.from_numpy" in msg and "weights_only=False" not in msg


def test_io_torch_content_named_safetensors_is_named_as_such(tmp_path):
    torch.save(_params(), tmp_path / "m.safetensors")
    with pytest.raises(io.CheckpointError, match="content is a torch file") as info:
        io.load_state_dict(tmp_path / "m.safetensors")
    assert "m.safetensors" in str(info.value) and "rename it to .pt" in str(info.value)
    save_file(_params(), tmp_path / "s.pt")           # the other way round is read by content
    assert set(io.load_state_dict(tmp_path / "s.pt")) == set(_params())


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt", "plot.png"])
def test_atomic_writes_get_the_mode_a_plain_write_gives(tmp_path, name):
    old = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
            os.umask(umask)
            f = tmp_path / f"{umask:o}_{name}"
            if name.endswith(".png"):
                with io.atomic_path(f) as tmp:
                    open(tmp, "wb").write(b"x")
            else:
                io.save_state_dict(_params(), f)
            assert oct(f.stat().st_mode & 0o777) == oct(mode), umask
        f.chmod(0o640)                                 # an existing file keeps its own mode
        os.umask(0o022)
        with io.atomic_path(f) as tmp:
            open(tmp, "wb").write(b"y")
        assert oct(f.stat().st_mode & 0o777) == oct(0o640) and f.read_bytes() == b"y"
    finally:
        os.umask(old)


def test_atomic_writes_follow_symbolic_links(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "model.safetensors"
    io.save_state_dict(_params(seed=0), target)
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    io.save_state_dict(_params(seed=1), link)
    assert link.is_symlink() and os.readlink(link) == str(target)     # the link is kept ...
    written = io.load_state_dict(target)["layers.0.weight"]                   # ... and the target written
    assert torch.equal(written, _params(seed=1)["layers.0.weight"])
    dangling = tmp_path / "dangling.pt"
    dangling.symlink_to(real_dir / "new.pt")
    io.save_state_dict(_params(), dangling)                             # like open(): creates what the link names
    assert dangling.is_symlink() and (real_dir / "new.pt").is_file()
    assert sorted(os.listdir(real_dir)) == ["model.safetensors", "new.pt"]   # no temporary files left


def test_atomic_writes_refuse_an_existing_non_regular_destination(tmp_path):
    folder = tmp_path / "adir.safetensors"
    folder.mkdir()
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)                                    # never opened: writing to it would block
    (tmp_path / "to_fifo.pt").symlink_to(fifo)
    for dest, kind in ((folder, "a folder"), (fifo, "a FIFO"), (tmp_path / "to_fifo.pt", "a FIFO")):
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(io.CheckpointError, match="not a regular file") as info:
            io.save_state_dict(_params(), dest)
        assert str(dest) in str(info.value) and kind in str(info.value) and info.value.path == str(dest)
        with pytest.raises(io.CheckpointError, match=kind):
            with io.atomic_path(dest):
                raise AssertionError("the block must not run")
        assert sorted(os.listdir(tmp_path)) == before and folder.is_dir() and fifo.is_fifo()


def test_align_refuses_a_non_regular_output_before_solving(files):
    fifo = files / "out.safetensors"
    os.mkfifo(fifo)
    r = _run("align", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "-o", fifo)
    assert r.exit_code == 2 and "aFIFO" in _flat(r.output) and "notaregularfile" in _flat(r.output), r.output
    assert fifo.is_fifo()


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
    lp, lr = json.loads(plain.stdout)["loss"], json.loads(reset.stdout)["loss"]
    assert lp[0] == lr[0] and lp[-1] == lr[-1] and lp[2] != lr[2]   # endpoints kept, interior reset
    both = _run(*args, "--reset-bn", "--repair")
    assert both.exit_code == 2 and "one of" in both.output


# -- user code in the current folder, builder list ----------------------------------------------
def test_factory_module_in_the_current_folder_is_found(tmp_path, monkeypatch):
    """An installed console script does not search the current folder; --arch MODULE:FACTORY must."""
    import sys
    name = "symmetries_cwd_models_for_test"
    (tmp_path / f"{name}.py").write_text("import architectures\ndef build(w=6):\n"
                                         "    return architectures.mlp([4, w, 5, 3])\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    assert parse_arch(f"{name}:build:7").config["widths"] == [4, 7, 5, 3]
    save_file(_params(), tmp_path / "a.safetensors")
    r = _run("align", "a.safetensors", "a.safetensors", "--arch", f"{name}:build", "-o", "out.safetensors")
    assert r.exit_code == 0, r.output
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_unknown_module_error_lists_only_builders():
    from architectures.spec import builders
    assert {"mlp", "vgg", "resnet", "gcn", "gpt2", "vit"} <= set(builders())
    for spec in ("nosuchmodule:f", "nosuchbuilder"):
        with pytest.raises(ArchSpecError) as info:
            parse_arch(spec)
        msg = str(info.value)
        assert "mlp" in msg and "vgg" in msg and "resnet" in msg, msg
        for helper in ("assert_graphs_equivalent", "from_module", "rewrite_layernorm", "rebuild", "graph_difference",
                       "normalized_adjacency", "hf_to_gpt2", "activation,"):
            assert helper not in msg, (helper, msg)
    with pytest.raises(ArchSpecError, match="nor is it a builder"):   # a helper is not a builder
        parse_arch("rewrite_layernorm:x")


# -- data against the model, devices -------------------------------------------------------------
@pytest.mark.parametrize("case", ["features", "labels", "negative_labels", "targets", "int_inputs", "empty"])
def test_data_that_does_not_fit_the_model_names_the_flag(files, case):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g)
    if case == "features":
        x = torch.randn(30, 7, generator=g)
    elif case == "labels":
        y[5] = 4
    elif case == "negative_labels":
        y[3] = -1
    elif case == "targets":
        y = torch.randn(30, 5, generator=g)
    elif case == "int_inputs":
        x = torch.randint(0, 3, (30, 4), generator=g)
    else:
        x, y = x[:0], y[:0]
    save_file({"x": x, "y": y}, files / "bad_data.safetensors")
    expected = {"features": "first layer 'layers.0' takes 4 features", "labels": "labels 0…4",
                "negative_labels": "labels -1…", "targets": "targets of shape (5,)", "int_inputs": "int64",
                "empty": "no examples"}[case]
    for flag in ("--data", "--fit-data"):
        args = ["barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--repair"]
        args += (["--data", files / "bad_data.safetensors"] if flag == "--data" else
                 ["--data", files / "data.safetensors", "--fit-data", files / "bad_data.safetensors"])
        r = _run(*args)
        out = _flat(r.output)
        assert r.exit_code == 2, r.output
        assert f"{flag}'" in out and "bad_data.safetensors" in out and _flat(expected) in out, r.output
        assert "unexpected" not in r.output
    if case in ("features", "labels"):
        r = _run("align", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--solver", "activation_matching",
                 "--data", files / "bad_data.safetensors", "-o", files / "o.safetensors")
        assert r.exit_code == 2 and "--data'" in _flat(r.output) and not (files / "o.safetensors").exists(), r.output


@pytest.mark.parametrize("device, expected", [("nosuch", "is not a torch device"), ("cuda:x", "is not a torch device"),
                                              ("meta", "holds no data"), ("cuda:99", "cuda")])
def test_barrier_validates_the_device_up_front(files, device, expected):
    r = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "data.safetensors",
             "--device", device)
    assert r.exit_code == 2 and "--device" in r.output and _flat(expected) in _flat(r.output), r.output
    assert "unexpected" not in r.output


def test_barrier_on_cuda_without_cuda_is_a_clean_error(files):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "data.safetensors",
             "--device", "cuda")
    assert r.exit_code == 2 and "CUDAisnotavailable" in _flat(r.output) and "--devicecpu" in _flat(r.output)


def test_integer_weights_are_refused_with_the_tensor_named(files):
    p = _params()
    p["layers.0.weight"] = p["layers.0.weight"].round().long()
    save_file(p, files / "int.safetensors")
    r = _run("barrier", files / "a.safetensors", files / "int.safetensors", "--arch", ARCH,
             "--data", files / "data.safetensors")
    assert r.exit_code == 2 and "'layers.0.weight'isint64" in _flat(r.output) and "floating" in r.output, r.output


# -- fitting data, seed, JSON, accuracy in points --------------------------------------------------
def test_barrier_fits_on_fit_data_and_warns_when_fitting_on_the_measured_data(files):
    g = torch.Generator().manual_seed(1)
    save_file({"x": torch.randn(60, 4, generator=g), "y": torch.randint(0, 3, (60,), generator=g)},
              files / "fit.safetensors")
    base = ["barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "data.safetensors",
            "--alphas", 5, "--json"]
    same = _run(*base, "--repair")
    assert same.exit_code == 0, same.output
    assert "optimistic" in same.stderr and "--fit-data" in same.stderr
    out_same = json.loads(same.stdout)
    assert out_same["fitted_on_measured_data"] is True and out_same["fit_data"] == str(files / "data.safetensors")
    other = _run(*base, "--repair", "--fit-data", files / "fit.safetensors")
    assert other.exit_code == 0 and "optimistic" not in other.stderr, other.output
    out_other = json.loads(other.stdout)
    assert out_other["fitted_on_measured_data"] is False and out_other["fit_data"] == str(files / "fit.safetensors")
    assert out_other["loss"][0] == out_same["loss"][0] and out_other["loss"][2] != out_same["loss"][2]
    # the REPAIR fitted on fit.safetensors is the library's repair with those statistics
    from symmetries import landscape as L
    arch = parse_arch(ARCH)
    a, b = io.load_state_dict(files / "a.safetensors"), io.load_state_dict(files / "b.pt")
    fit, data = io.load_state_dict(files / "fit.safetensors"), io.load_state_dict(files / "data.safetensors")
    model = arch.module()
    mid = L.repair(model, arch.graph, a, b, 0.5, (fit["x"], fit["y"]))
    assert out_other["loss"][2] == pytest.approx(L.evaluate(model, (data["x"], data["y"]), mid).loss, rel=1e-6)
    plain = _run(*base)
    assert plain.exit_code == 0 and "optimistic" not in plain.stderr     # nothing fitted, no note


@pytest.mark.skipif(not _has_solvers(), reason="needs the solvers package")
def test_barrier_seed_reaches_the_solver(files):
    import solvers
    if "learned_matching" not in [i.name for i in solvers.available()]:
        pytest.skip("needs learned_matching")
    base = ["barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "data.safetensors",
            "--solver", "learned_matching", "--alphas", 3, "--json"]
    runs = [json.loads(_run(*base, "--seed", s).stdout) for s in (0, 0, 5)]
    assert runs[0]["loss"] == runs[1]["loss"] and runs[0]["seed"] == 0 and runs[2]["seed"] == 5


def test_barrier_json_is_strict_for_regression_targets(files):
    g = torch.Generator().manual_seed(0)
    save_file({"x": torch.randn(20, 4, generator=g), "y": torch.randn(20, 3, generator=g)}, files / "reg.safetensors")
    r = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "reg.safetensors",
             "--alphas", 4, "--json")
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.stdout
    out = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert out["accuracy"] == [None] * 4 and out["accuracy_barrier"] is None and out["loss_barrier"] >= 0
    table = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH,
                 "--data", files / "reg.safetensors")
    assert table.exit_code == 0 and "nan" not in table.output.lower()


def test_barrier_table_prints_accuracy_barriers_in_points(files):
    r = _run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data", files / "data.safetensors",
             "--alphas", 5)
    j = json.loads(_run("barrier", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--data",
                        files / "data.safetensors", "--alphas", 5, "--json").stdout)
    assert r.exit_code == 0 and "accuracy barrier (pts)" in r.output
    assert f"{100 * j['accuracy_barrier']:.2f}" in r.output and f"{100 * j['accuracy'][0]:.2f} %" in r.output


def test_align_with_a_data_driven_solver_and_no_data_names_the_flag(files):
    r = _run("align", files / "a.safetensors", files / "b.pt", "--arch", ARCH, "--solver", "activation_matching",
             "-o", files / "o.safetensors")
    assert r.exit_code == 2 and "--data" in r.output and "needsdata" in _flat(r.output), r.output
    assert not (files / "o.safetensors").exists()
