"""Typed errors for the last raw ones at the API: an element's axis, a role name, a transform set
entry that is not an element (each was a plain ValueError/TypeError or a silent truncation)."""
import numpy as np
import pytest
import torch

import symmetries as sy
from symmetries.errors import ArgumentError, ArgumentTypeError


@pytest.mark.parametrize("axis", [0.7, 1.0, None, "0", True, torch.tensor(0.0), torch.tensor([0])])
def test_an_element_axis_must_be_an_integer(axis):
    el = sy.Permutation().random(4, seed=0)
    with pytest.raises(ArgumentTypeError, match="axis must be an integer") as e:
        el.apply(torch.zeros(4, 4), axis=axis)
    assert e.value.argument == "axis" and isinstance(e.value, TypeError)


@pytest.mark.parametrize("axis", [1, np.int64(1), torch.tensor(1), -1])
def test_integer_axes_of_any_kind_work(axis):
    el = sy.Permutation().random(4, seed=0)
    x = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(el.apply(x, axis=axis), el.apply(x, axis=1))


def test_a_bad_role_and_a_non_element_are_typed():
    with pytest.raises(ArgumentError, match="unknown role 'sideways'") as e:
        sy.Role.parse("sideways")
    assert e.value.argument == "role" and isinstance(e.value, ValueError)
    with pytest.raises(ArgumentTypeError, match="space 'h'") as e:
        sy.TransformSet({"h": np.eye(3)})
    assert isinstance(e.value, TypeError)
