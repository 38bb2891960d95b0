"""Plain algorithm functions, one per built-in solver — the POT style (``ot.emd(a, b, M)``).

``solvers.weight_matching(graph, params_a, params_b, *, classes=None, seed=0, …, max_iter=100)``
is ``solvers.solve("weight_matching", graph, params_a, params_b, …)`` with the built-in algorithm:
the same validation at the door, the same :class:`~solvers.Solution`. Each function's keywords are
the problem options (:func:`~solvers.make_problem`) followed by the solver's own options, so
``help(solvers.weight_matching)`` and an IDE show them all, and a misspelt one is refused.
"""
from __future__ import annotations

import inspect

from solvers.algorithms.activation_matching import ActivationMatching
from solvers.algorithms.relaxation import RelaxationSolver, SemiPermutationQP
from solvers.algorithms.semi_permutation import SemiPermutationSolver
from solvers.algorithms.transport import OptimalTransport
from solvers.algorithms.weight_matching import WeightMatching
from solvers.algorithms.learned import LearnedMatching
from solvers.algorithms.posterior import PosteriorMatching
from solvers.problem import make_problem
from solvers.registry import Solver, solve
from solvers.solution import Solution

__all__ = ["weight_matching", "semi_permutation", "activation_matching", "optimal_transport", "relaxation",
           "semi_permutation_qp", "learned_matching", "posterior_matching", "plain_function"]

_POSITIONAL = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("graph", "params_a", "params_b")]
_PROBLEM = [p for p in inspect.signature(make_problem).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "solver"]


def plain_function(solver: Solver, name: str | None = None):
    """``f(graph, params_a, params_b, *, <problem options>, <solver options>) → Solution`` running
    ``solver`` through :func:`solvers.solve`; its signature and docstring come from the solver."""
    name = name or solver.name

    def function(graph, params_a, params_b, **options) -> Solution:
        return solve(solver, graph, params_a, params_b, **options)

    options = solver.option_parameters()
    if options is not None:
        function.__signature__ = inspect.Signature([*_POSITIONAL, *_PROBLEM, *options], return_annotation=Solution)
    function.__name__ = function.__qualname__ = name
    summary = (type(solver).__doc__ or solver.description or "").strip()
    details = inspect.getdoc(solver.solve) or ""
    function.__doc__ = (f"{summary}\n\n``solvers.solve({name!r}, graph, params_a, params_b, …)`` as a function: "
                        f"problem options as in :func:`solvers.make_problem`, then the solver's options.\n\n"
                        f"{details}").strip()
    return function


weight_matching = plain_function(WeightMatching())
semi_permutation = plain_function(SemiPermutationSolver())
activation_matching = plain_function(ActivationMatching())
optimal_transport = plain_function(OptimalTransport())
relaxation = plain_function(RelaxationSolver())
semi_permutation_qp = plain_function(SemiPermutationQP())
learned_matching = plain_function(LearnedMatching())
posterior_matching = plain_function(PosteriorMatching())
