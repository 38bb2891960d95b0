"""Convex relaxations of weight matching, with certified lower bounds (the ``relaxation`` and
``semi_permutation_qp`` solvers).

* :mod:`solvers.algorithms.relaxation.misfit` — the convex misfit ``f(X) = Σ_p ‖A_p X_in(p) − X_out(p) B_p‖²``
  (equal to ``J`` on the classes) and its certificate ``L(X̂) ≤ min_C f``;
* :mod:`solvers.algorithms.relaxation.apg` — the default engine: accelerated projected gradient with exact
  Birkhoff and spectral-ball projections;
* :mod:`solvers.algorithms.relaxation.solver` — the cvxpy formulation, rounding, and the ``relaxation`` solver;
* :mod:`solvers.algorithms.relaxation.qp` — the fraction QP of a semi-permutation (``semi_permutation_qp``).
"""
from solvers.algorithms.relaxation.apg import QuadraticMisfit, project_birkhoff, project_spectral_ball, relax_apg
from solvers.algorithms.relaxation.misfit import RELAXABLE, Misfit, RelaxedOptimum, Term, build_misfit
from solvers.algorithms.relaxation.qp import SemiPermutationQP, fit_fractions, fraction_bound
from solvers.algorithms.relaxation.solver import RelaxationSolver, formulate, relax, round_relaxed, sample_rounding

__all__ = ["Misfit", "Term", "RelaxedOptimum", "build_misfit", "RELAXABLE", "QuadraticMisfit", "project_birkhoff",
           "project_spectral_ball", "relax_apg", "formulate", "relax", "round_relaxed", "sample_rounding",
           "RelaxationSolver", "fit_fractions", "fraction_bound", "SemiPermutationQP"]
