"""Imports the built-in solver modules; each registers its solvers on import."""
from __future__ import annotations

from solvers.algorithms import (activation_matching, learned, posterior, relaxation, semi_permutation,  # noqa: F401
                                transport, weight_matching)
