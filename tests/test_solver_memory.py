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
