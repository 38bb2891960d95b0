"""The built-in algorithms, one module each; every module registers its solver(s) on import.

* :mod:`~solvers.algorithms.weight_matching` — coordinate descent over spaces (``weight_matching``);
* :mod:`~solvers.algorithms.semi_permutation` — the same, widening a narrow model (``semi_permutation``);
* :mod:`~solvers.algorithms.activation_matching` — statistics of activations on data (``activation_matching``);
* :mod:`~solvers.algorithms.transport` — POT transport between neuron clouds (``optimal_transport``);
* :mod:`~solvers.algorithms.relaxation` — convex relaxations with certificates (``relaxation``,
  ``semi_permutation_qp``);
* :mod:`~solvers.algorithms.learned` — the straight-through estimator (``learned_matching``);
* :mod:`~solvers.algorithms.posterior` — mean-field Gaussian posteriors by W₂ (``posterior_matching``).

The plain functions
of the same names — ``solvers.weight_matching(graph, params_a, params_b, …)`` — live in
:mod:`solvers.functions`; the modules live here so that a function and a module never share a name.
"""
