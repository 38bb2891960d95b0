"""Invariance verification — the CI use (application layer).

* :mod:`symmetries.testing.invariance` — :func:`check_invariance` / :func:`assert_invariant`,
  usable from any pytest suite: ``f(T·θ) = f(θ)`` for drawn ``T``, failures shrunk to one space;
* :mod:`symmetries.testing.strategies` — hypothesis strategies for classes, elements, transform
  sets and small random architectures;
* :mod:`symmetries.testing.outputs` — running a model and comparing its outputs;
* :mod:`symmetries.testing.verify` — the ``symmetries verify`` command.
"""
from symmetries.testing.invariance import (DEFAULT_RTOL, InvarianceError, InvarianceReport, SpaceCheck,
                                           assert_invariant, cast_inputs, check_invariance, example_inputs,
                                           roundoff_factor, tied_groups)

__all__ = ["DEFAULT_RTOL", "InvarianceError", "SpaceCheck", "InvarianceReport", "check_invariance",
           "assert_invariant", "example_inputs", "cast_inputs", "tied_groups", "roundoff_factor"]
