"""Imports the built-in solver modules; each registers its solvers on import."""
from __future__ import annotations

import importlib

_MODULES = ("weight_matching", "activation_matching", "transport", "semi_permutation", "relaxation", "learned")

for _name in _MODULES:
    try:
        importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as exc:  # a built-in module not written yet must not break the registry
        if exc.name != f"{__package__}.{_name}":
            raise
