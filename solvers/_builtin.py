"""Imports the built-in solver modules; each registers its solvers on import."""
from __future__ import annotations

from solvers.algorithms import activation_matching, relaxation, semi_permutation, transport, weight_matching  # noqa: F401
from solvers import learned  # noqa: F401
