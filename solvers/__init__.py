"""solvers — everything that produces transforms from two models.

The solver protocol and registry arrive with issue #4; this package exists so that the
distribution's three top-level packages import from the start.
"""
__all__: list[str] = []
