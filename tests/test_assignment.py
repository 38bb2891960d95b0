"""Batched linear assignment (the h² head-pair blocks of an attention space): the same optima as one
assignment at a time, and the same refusals."""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from symmetries.assignment import assignment_permutation, assignment_permutations, backends


@pytest.mark.parametrize("backend", sorted(backends()))
@pytest.mark.parametrize("maximize", [True, False])
def test_batched_assignments_equal_one_at_a_time(backend, maximize):
    scores = np.random.default_rng(3).standard_normal((7, 9, 9)).astype(np.float32)  # unique optima
    got = assignment_permutations(scores, maximize=maximize, backend=backend)
    want = np.stack([assignment_permutation(s, maximize=maximize, backend=backend) for s in scores])
    assert got.shape == (7, 9) and np.array_equal(got, want)
    for s, p in zip(scores.astype(np.float64), got):  # optimal by scipy's independent solver
        rows, cols = linear_sum_assignment(s, maximize=maximize)
        assert np.isclose(s[np.arange(9), p].sum(), s[rows, cols].sum(), rtol=0, atol=1e-9)
        assert sorted(p) == list(range(9))


def test_batched_assignments_refuse_bad_stacks():
    with pytest.raises(ValueError, match="square"):
        assignment_permutations(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="square"):
        assignment_permutations(np.zeros((3, 3)))
    bad = np.zeros((3, 4, 4))
    bad[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        assignment_permutations(bad)
    with pytest.raises(ValueError, match="backend"):
        assignment_permutations(np.zeros((1, 2, 2)), backend="nope")
    assert assignment_permutations(np.zeros((3, 0, 0))).shape == (3, 0)
