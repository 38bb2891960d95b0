"""solvers.memory: the heap is trimmed between weight-matching visits on large problems, and that changes
nothing but the resident set."""
import sys

import pytest
import torch

import architectures
import solvers
from solvers import memory
from solvers.problem import make_problem


def test_problem_bytes_counts_both_models_in_the_working_dtype():
    arch = architectures.mlp([6, 5, 3])
    a = arch.module(seed=0).state_dict()
    b = arch.module(seed=1).state_dict()
    n = sum(v.numel() for v in a.values())
    assert memory.problem_bytes(make_problem(arch.graph, a, b, dtype=torch.float64)) == 2 * 8 * n
    assert memory.problem_bytes(make_problem(arch.graph, a, b, dtype=torch.float32)) == 2 * 4 * n


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_free_memory_reaches_glibc():
    assert memory.release_free_memory() is True


def test_trimming_between_visits_changes_no_result(monkeypatch):
    arch = architectures.mlp([20, 16, 16, 4])
    a = {k: v.double() for k, v in arch.module(seed=0).state_dict().items()}
    b = {k: v.double() for k, v in arch.module(seed=1).state_dict().items()}
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "TRIM_BYTES", -1)  # never
    off = solvers.solve("weight_matching", arch.graph, a, b, seed=0)
    assert calls == []
    monkeypatch.setattr(memory, "TRIM_BYTES", 0)  # always
    on = solvers.solve("weight_matching", arch.graph, a, b, seed=0)
    assert len(calls) >= len(list(arch.graph.spaces()))  # once per visit at least
    assert on.history == off.history
    for s in off.transforms:
        assert torch.equal(on.transforms[s].as_matrix(), off.transforms[s].as_matrix())


def test_a_streamed_alignment_trims_per_tensor_and_writes_the_same(tmp_path, monkeypatch):
    """Streamed (lazy) problems read one tensor pair at a time from disk: the heap is trimmed before each
    edge's read and each written tensor; with trimming off the written checkpoint is bit for bit the same."""
    from safetensors.torch import load_file, save_file

    import solvers.matcher
    from symmetries.checkpoints import align_checkpoints

    arch = architectures.gpt2(40, 8, 16, 4, 2)
    for side, seed in (("a", 0), ("b", 1)):
        g = torch.Generator().manual_seed(seed)
        (tmp_path / side).mkdir()
        save_file({k: torch.randn(v.shape, generator=g) * 0.5 for k, v in arch.module().state_dict().items()},
                  tmp_path / side / "model.safetensors")
    calls = []
    real = memory.release_free_memory

    def counted():
        calls.append(1)
        return real()
    monkeypatch.setattr(solvers.matcher, "release_free_memory", counted)
    on = align_checkpoints(tmp_path / "a", tmp_path / "b", tmp_path / "on", arch)
    edges = sum(1 for _ in arch.graph.edges())
    assert len(calls) >= edges  # every edge of the first visits at least
    monkeypatch.setattr(solvers.matcher, "release_free_memory", lambda: False)
    off = align_checkpoints(tmp_path / "a", tmp_path / "b", tmp_path / "off", arch)
    assert on["solution"].history == off["solution"].history
    got, want = load_file(tmp_path / "on" / "model.safetensors"), load_file(tmp_path / "off" / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
