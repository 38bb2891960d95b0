"""The one result type every solver returns (the role of ``scipy.optimize.OptimizeResult``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from symmetries.action import apply
from symmetries.transforms import TransformSet

__all__ = ["Solution", "STATUSES"]

#: ``converged`` — a stopping rule met; ``max_iter`` — the iteration cap hit; ``time_limit`` — stopped by
#: its time limit (the result is valid, only less refined; ``message`` says what was cut short);
#: ``optimal`` — the returned transform is a proven global optimum; ``failed`` — see ``message``.
STATUSES = ("converged", "max_iter", "time_limit", "optimal", "failed")


@dataclass
class Solution:
    """``transforms`` aligns B to A (apply them to B: ``solution.apply(params_b)``).

    ``objective_before`` / ``objective_after`` are the solver's objective at the start and at the
    returned transforms (for weight-space solvers ``Σ_p ‖θ_A − T·θ_B‖²``; ``objective`` names it);
    ``lower_bound`` is a certified lower bound on the best achievable objective, or ``None``;
    ``history`` is the objective after each sweep (index 0: the start).
    """
    transforms: TransformSet
    objective_before: float | None = None
    objective_after: float | None = None
    lower_bound: float | None = None
    iterations: int = 0
    wall_time: float = 0.0
    status: str = "converged"
    message: str = ""
    history: list[float] = field(default_factory=list)
    solver: str = ""
    objective: str = "sum_p ||theta_A[p] - (T . theta_B)[p]||^2"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    graph: Any = field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.transforms, TransformSet):
            self.transforms = TransformSet(self.transforms)
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def success(self) -> bool:
        return self.status != "failed"

    @property
    def gap(self) -> float | None:
        """``objective_after − lower_bound`` when a bound is proven."""
        if self.lower_bound is None or self.objective_after is None:
            return None
        return self.objective_after - self.lower_bound

    def apply(self, params_b) -> dict:
        """``T · θ_B``: B's parameters aligned to A (needs the graph the solver recorded)."""
        if self.graph is None:
            raise ValueError("this solution carries no graph; use symmetries.apply(graph, params_b, "
                             "solution.transforms)")
        return apply(self.graph, params_b, self.transforms)
