"""solvers — everything that produces transforms from two models.

One front door, ``solve(method, graph, params_a, params_b, **options) → Solution`` (the
``scipy.optimize.minimize(method=…)`` model): ``method`` is a registered name or a solver;
input is validated into a :class:`Problem`; every solver returns a :class:`Solution`.
Solvers are found by name in a registry that built-ins and third-party packages (entry-point
group ``symmetries.solvers``) fill alike: ``register``, ``get``, ``available``.

Each built-in solver is also a plain function of the same name (:mod:`solvers.functions`):
``solvers.weight_matching(graph, params_a, params_b, *, classes=None, max_iter=100, …)``. Building
blocks for solver authors: :mod:`solvers.local` (per-space views) and :func:`subproblem` (the
per-class subproblem solvers, registered by class). The algorithms live in :mod:`solvers.algorithms`.
"""
from solvers.errors import SolverError, SolverInputError, UnknownSolverError, UnsupportedClassError
from solvers.problem import Problem, as_batches, make_problem
from solvers.registry import (ENTRY_POINT_GROUP, FunctionSolver, Solver, SolverInfo, applicable, available, get, register,
                              solve, unregister)
from solvers.solution import Solution
from solvers.subproblems import subproblem
from solvers.functions import (activation_matching, learned_matching, optimal_transport, posterior_matching, relaxation,
                               semi_permutation, semi_permutation_qp, weight_matching)

__all__ = ["solve", "applicable", "as_batches", "register", "unregister", "get", "available", "Solver", "FunctionSolver", "SolverInfo",
           "Problem", "make_problem", "Solution", "ENTRY_POINT_GROUP", "SolverError", "SolverInputError",
           "UnknownSolverError", "UnsupportedClassError", "subproblem", "weight_matching", "semi_permutation",
           "activation_matching", "optimal_transport", "relaxation", "semi_permutation_qp", "learned_matching",
           "posterior_matching"]
