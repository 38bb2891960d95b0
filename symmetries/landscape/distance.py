"""Distance between parameter sets: ``‖θ_A − θ_B‖₂`` over all (or chosen) floating tensors."""
from __future__ import annotations

from typing import Iterable, Mapping

from symmetries._arrays import to_tensor
from symmetries.landscape.interpolation import check_compatible

__all__ = ["l2_distance"]


def l2_distance(params_a: Mapping, params_b: Mapping, keys: Iterable[str] | None = None) -> float:
    """``sqrt(Σ_k ‖a_k − b_k‖²)`` over floating tensors (``keys`` restricts the sum), in float64."""
    check_compatible(params_a, params_b)
    total = 0.0
    for k in (params_a if keys is None else keys):
        a, _ = to_tensor(params_a[k])
        b, _ = to_tensor(params_b[k])
        if a.is_floating_point():
            total += float(((a.double() - b.to(a.device).double()) ** 2).sum())
    return total ** 0.5
