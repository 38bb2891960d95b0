"""The thread policy of a solve: one thread for small work, the caller's setting otherwise, always
restored (also when the solver raises)."""
import pytest
import torch

import architectures
import solvers
import solvers.threads as threads
from solvers import Solution
from symmetries import TransformSet


def _pair(widths):
    arch = architectures.mlp(widths)
    return arch, *(arch.module(seed=s).state_dict() for s in (0, 1))


def _spy(seen, fail=False):
    def solver(problem, **options):
        seen.append(torch.get_num_threads())
        if fail:
            raise RuntimeError("planted failure")
        return Solution(TransformSet(), objective_before=0.0, objective_after=0.0, status="converged")
    return solver


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_work_counts_the_cross_products_of_a_sweep():
    arch, a, b = _pair([6, 5, 3])
    problem = solvers.make_problem(arch, a, b)
    # hidden.0 meets layers.0.weight (5×6, out), layers.0.bias (5), layers.1.weight (3×5, in): m·n·k = 5·5·(6+1+3)
    assert threads.work(problem) == 5 * 5 * (6 + 1 + 3)


def test_small_work_runs_on_one_thread_and_restores(two_threads):
    arch, a, b = _pair([6, 5, 3])
    seen = []
    solvers.solve(_spy(seen), arch, a, b)
    assert seen == [1] and torch.get_num_threads() == 2


def test_large_work_keeps_the_callers_threads(two_threads, monkeypatch):
    arch, a, b = _pair([6, 5, 3])
    monkeypatch.setattr(threads, "SINGLE_THREAD_WORK", 0)
    seen = []
    solvers.solve(_spy(seen), arch, a, b)
    assert seen == [2] and torch.get_num_threads() == 2


def test_threads_are_restored_when_the_solver_raises(two_threads):
    arch, a, b = _pair([6, 5, 3])
    seen = []
    with pytest.raises(RuntimeError, match="planted"):
        solvers.solve(_spy(seen, fail=True), arch, a, b)
    assert seen == [1] and torch.get_num_threads() == 2


def test_a_real_solver_gives_the_same_answer_under_the_policy(two_threads, monkeypatch):
    arch, a, b = _pair([10, 8, 8, 3])
    one = solvers.solve("weight_matching", arch, a, b)
    monkeypatch.setattr(threads, "SINGLE_THREAD_WORK", 0)
    many = solvers.solve("weight_matching", arch, a, b)
    assert one.objective_after == pytest.approx(many.objective_after, rel=1e-12)
    assert all(one.transforms[s].allclose(many.transforms[s]) for s in one.transforms)
