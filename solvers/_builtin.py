"""Imports the built-in solver modules; each registers its solvers on import."""
from __future__ import annotations

from solvers import weight_matching, activation_matching, transport, semi_permutation, relaxation, learned  # noqa: F401,I001
