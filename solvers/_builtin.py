"""Imports the built-in solver modules; each registers its solvers on import."""
from __future__ import annotations

from solvers.algorithms import (activation_matching, learned, posterior, relaxation, semi_permutation,  # noqa: F401
                                transport, weight_matching)
from solvers import rotary  # noqa: F401,E402  (the Rotary class's weight-matching subproblem)
