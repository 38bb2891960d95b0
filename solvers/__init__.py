"""solvers — everything that produces transforms from two models.

One front door, ``solve(method, graph, params_a, params_b, **options) → Solution`` (the
``scipy.optimize.minimize(method=…)`` model): ``method`` is a registered name or a solver;
input is validated into a :class:`Problem`; every solver returns a :class:`Solution`.
Solvers are found by name in a registry that built-ins and third-party packages (entry-point
group ``symmetries.solvers``) fill alike: ``register``, ``get``, ``available``.
"""
from solvers.errors import SolverError, SolverInputError, UnknownSolverError, UnsupportedClassError
from solvers.problem import Problem, as_batches, make_problem
from solvers.registry import (ENTRY_POINT_GROUP, FunctionSolver, Solver, SolverInfo, applicable, available, get, register,
                              solve, unregister)
from solvers.solution import Solution

__all__ = ["solve", "applicable", "as_batches", "register", "unregister", "get", "available", "Solver", "FunctionSolver", "SolverInfo",
           "Problem", "make_problem", "Solution", "ENTRY_POINT_GROUP", "SolverError", "SolverInputError",
           "UnknownSolverError", "UnsupportedClassError"]
