"""Issue 12: checkpoint writes are atomic. The write is made to fail for real — a child process with
a small ``RLIMIT_FSIZE`` (the disk is "full" after a few KiB) writes a large state dict over an
existing file — and the old file must be intact, with no temporary file left beside it. A
non-atomic write (truncate the file, then write into it) leaves a truncated file and fails here."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from symmetries import io

resource = pytest.importorskip("resource")

CHILD = textwrap.dedent('''
    import resource, signal, sys
    import torch
    from symmetries import io

    path, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG, not a signal
    big = {"w": torch.arange(1_000_000, dtype=torch.float32), "b": torch.ones(1000)}
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        io.save_state_dict(big, path, metadata={"note": "too big"})
    except io.CheckpointError as exc:
        print("CheckpointError:", exc)
        sys.exit(3)
    print("written")
''')


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_a_write_that_fails_midway_leaves_the_old_file_intact(tmp_path, name):
    target = tmp_path / name
    old = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    io.save_state_dict(old, target)
    target.chmod(0o640)
    before = target.read_bytes()
    assert len(before) < 4096
    res = subprocess.run([sys.executable, "-c", CHILD, str(target), "65536"], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 3, res.stdout + res.stderr                    # a typed error, not a crash
    assert "CheckpointError" in res.stdout and name in res.stdout and "Traceback" not in res.stderr
    assert target.read_bytes() == before                                   # the old file, byte for byte
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(os.listdir(tmp_path)) == [name]                          # no temporary file left
    back = io.load_state_dict(target)
    assert torch.equal(back["w"], old["w"])


def test_a_write_that_fits_replaces_the_file(tmp_path):
    """The control: the same child with a limit the file fits under writes it."""
    target = tmp_path / "model.safetensors"
    io.save_state_dict({"w": torch.zeros(3)}, target)
    res = subprocess.run([sys.executable, "-c", CHILD, str(target), str(64 << 20)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0 and "written" in res.stdout, res.stdout + res.stderr
    assert io.load_state_dict(target)["w"].shape == (1_000_000,) and sorted(os.listdir(tmp_path)) == [target.name]
