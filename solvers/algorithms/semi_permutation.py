"""The ``semi_permutation`` solver: align a narrow model B into a wide model A.

It is weight matching (:class:`~solvers.algorithms.weight_matching.WeightMatching`) run on a width-changing
problem (pass ``graph_b``, B's narrower graph): the class policy gives every width-changing space
its rectangular class (``SemiPermutation`` for ReLU units, ``Orthogonal`` with orthonormal columns
for an RMS residual stream), whose subproblem is the split update of :mod:`solvers.splits`;
spaces of equal width are matched as usual. The result applies to B with ``graph_b``.
"""
from __future__ import annotations

from solvers.registry import register
from solvers.algorithms.weight_matching import WeightMatching

__all__ = ["SemiPermutationSolver"]


class SemiPermutationSolver(WeightMatching):
    """Weight matching that widens a narrow model (split maps where widths differ)."""

    name = "semi_permutation"
    description = ("align a narrow model into a wide one: split maps (LAP cover + exact per-group "
                   "fractions) where widths differ, weight matching elsewhere")


register("semi_permutation", SemiPermutationSolver)
