"""Issue 12: malformed checkpoints — random bytes, truncated and corrupted files, mangled
safetensors headers, wrong dtypes and shapes, pickles that would run code, empty files, folders —
fed to ``symmetries.io.load_state_dict`` and to the ``align`` / ``barrier`` commands. Only typed
errors (``SymmetryError`` subclasses) come out of the loader, and only clean exits (0, or 2 with
an ``error:`` line) out of the commands: never a raw exception, a traceback or an "unexpected"."""
from __future__ import annotations

import io as _bytes_io
import json
import shutil
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import save as st_save, save_file
from typer.testing import CliRunner

import architectures
from symmetries import io
from symmetries.cli import app
from symmetries.errors import SymmetryError

ARCH = "mlp:4,6,5,3:relu"
runner = CliRunner()


def _params(seed=0):
    return {k: v.detach().clone() for k, v in architectures.mlp([4, 6, 5, 3]).module(seed=seed).state_dict().items()}


def _torch_bytes(obj) -> bytes:
    buf = _bytes_io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


GOOD_ST = st_save(_params(1))
GOOD_PT = _torch_bytes(_params(1))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _split(raw: bytes):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@st.composite
def mangled_headers(draw):
    header, data = _split(GOOD_ST)
    key = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "length"]))
    if field == "dtype":
        header[key]["dtype"] = draw(st.sampled_from(["F8_E4M3", "F8_E5M2", "I8", "BOOL", "F64", "F16", "BF16",
                                                     "C64", "U64", "XX", ""]))
    elif field == "shape":
        header[key]["shape"] = draw(st.lists(st.integers(-3, 40), max_size=4))
    elif field == "data_offsets":
        header[key]["data_offsets"] = draw(st.lists(st.integers(-5, 2 * len(data)), min_size=0, max_size=3))
    elif field == "drop":
        del header[key]
    raw = _join(header, data)
    if field == "length":
        raw = struct.pack("<Q", draw(st.integers(0, 2 ** 64 - 1))) + raw[8:]
    return raw


@st.composite
def odd_state_dicts(draw):
    """Well-formed files holding tensors of wrong dtypes, shapes, layouts or values."""
    p = _params(1)
    key = draw(st.sampled_from(sorted(p)))
    kind = draw(st.sampled_from(["dtype", "shape", "value", "scalar", "sparse", "meta", "extra", "missing"]))
    v = p[key]
    if kind == "dtype":
        p[key] = v.to(draw(st.sampled_from([torch.float8_e4m3fn, torch.float16, torch.bfloat16, torch.float64,
                                            torch.int64, torch.bool, torch.uint8, torch.complex64])))
    elif kind == "shape":
        p[key] = torch.zeros(draw(st.lists(st.integers(0, 7), max_size=3)))
    elif kind == "value":
        p[key] = torch.full_like(v, draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e38])))
    elif kind == "scalar":
        p[key] = torch.tensor(1.5)
    elif kind == "sparse":
        p[key] = v.to_sparse()
    elif kind == "meta":
        p[key] = torch.empty(v.shape, device="meta")
    elif kind == "extra":
        p["extra.weight"] = torch.zeros(2)
    else:
        del p[key]
    as_torch = kind in ("sparse", "meta") or draw(st.booleans())
    if as_torch:
        return ".pt", _torch_bytes(p)
    return ".safetensors", st_save({k: t.contiguous() for k, t in p.items()})


raw_files = st.one_of(
    st.tuples(st.sampled_from([".pt", ".safetensors", ".bin"]), st.binary(max_size=200)),
    st.tuples(st.just(".safetensors"), st.integers(0, len(GOOD_ST) - 1).map(lambda n: GOOD_ST[:n])),
    st.tuples(st.just(".pt"), st.integers(0, len(GOOD_PT) - 1).map(lambda n: GOOD_PT[:n])),
    st.tuples(st.sampled_from([".pt", ".safetensors"]),
              st.tuples(st.sampled_from([GOOD_ST, GOOD_PT]), st.lists(st.tuples(st.integers(0, 10 ** 6),
                                                                                st.integers(0, 255)),
                                                                      min_size=1, max_size=4))
              .map(lambda t: _flip(*t))),
    st.tuples(st.just(".safetensors"), mangled_headers()),
    odd_state_dicts(),
    st.sampled_from([(".pt", b""), (".safetensors", b""), (".pt", "evil"), (".pt", "folder"),
                     (".pt", _torch_bytes([torch.zeros(2)])), (".pt", _torch_bytes({"w": 3})),
                     (".pt", _torch_bytes({})), (".safetensors", GOOD_PT), (".pt", GOOD_ST)]),
)


def _flip(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    save_file(_params(0), root / "a.safetensors")
    g = torch.Generator().manual_seed(0)
    save_file({"x": torch.randn(12, 4, generator=g), "y": torch.randint(0, 3, (12,), generator=g)},
              root / "data.safetensors")
    return root


def _flat(text: str, sep: str = "") -> str:
    return sep.join(text.split())


def _materialize(folder, suffix, content):
    path = folder / f"fuzzed{suffix}"
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if content == "folder":
        path.mkdir()
    elif content == "evil":
        torch.save({"w": torch.zeros(2), "evil": Evil(str(folder / "code_ran"))}, path)
    else:
        path.write_bytes(content)
    return path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(raw_files)
def test_the_loader_raises_only_typed_errors(folder, case):
    path = _materialize(folder, *case)
    try:
        out = io.load_state_dict(path)
    except SymmetryError as exc:
        assert path.name in str(exc)
    else:
        assert isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values())
    assert not (folder / "code_ran").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.one_of(raw_files, odd_state_dicts()), st.sampled_from(["A", "B", "data"]))  # well-formed files twice as often
def test_the_commands_end_cleanly_on_malformed_checkpoints(folder, case, role):
    path = _materialize(folder, *case)
    a, b, data = folder / "a.safetensors", folder / "a.safetensors", folder / "data.safetensors"
    if role == "A":
        a = path
    elif role == "B":
        b = path
    else:
        data = path
    out = folder / "out.safetensors"
    for args in (["barrier", a, b, "--arch", ARCH, "--data", data, "--alphas", 2, "--json"],
                 ["align", a, b, "--arch", ARCH, "-o", out, "--data", data]):
        r = runner.invoke(app, [str(x) for x in args])
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        assert r.exit_code in (0, 2), r.output
        assert "Traceback" not in r.output and "error: unexpected" not in _flat(r.output, " "), r.output
        if r.exit_code == 2:
            assert "error:" in r.output
    assert not (folder / "code_ran").exists()
