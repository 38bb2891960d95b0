"""Barriers along a linear path, under both definitions in use.

* mean-of-endpoints (Git Re-Basin): ``B = max_α L(α) − ½ (L(0) + L(1))``;
* linear (Frankle et al., Entezari et al., Kwok et al.): ``B = max_α [L(α) − ((1−α) L(0) + α L(1))]``.

For accuracy (higher is better) the signs flip: ``B = max_α [reference(α) − acc(α)]``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from symmetries.landscape.evaluation import LossFn, evaluate
from symmetries.landscape.interpolation import alphas as even_alphas
from symmetries.landscape.interpolation import check_compatible, interpolate

__all__ = ["barrier_mean", "barrier_linear", "Curve", "interpolation_curve", "alpha_grid"]

Adjust = Callable[[dict, float], dict]


def _check(alphas, values) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.shape != v.shape or a.size < 2:
        raise ValueError(f"need matching alphas and values with at least 2 points, got {a.size} and {v.size}")
    if not (a[0] == 0.0 and a[-1] == 1.0 and np.all(np.diff(a) > 0)):
        raise ValueError("alphas must increase from 0 to 1 (both endpoints included)")
    return a, v


def alpha_grid(alphas: int | Sequence[float] | None = None) -> np.ndarray:
    """The α of a path as float64: ``alphas`` evenly spaced values (25 if ``None``; any integer,
    numpy's included) or the given ones, which must increase from 0 to 1 (``ValueError``
    otherwise; a non-integer number is a ``TypeError``)."""
    if getattr(alphas, "ndim", None) == 0:   # a 0-d numpy array or tensor: its number
        alphas = alphas.item()
    if alphas is None or (isinstance(alphas, numbers.Integral) and not isinstance(alphas, bool)):
        return even_alphas(int(alphas) if alphas is not None else None).numpy()
    if isinstance(alphas, (bool, numbers.Number)):
        raise TypeError(f"alphas must be a number of points (an integer) or a sequence of values, got "
                        f"{alphas!r} ({type(alphas).__name__})")
    a = np.asarray(alphas, dtype=np.float64)
    _check(a, a)
    return a


def barrier_mean(alphas: Sequence[float], values: Sequence[float], *, higher_is_better: bool = False) -> float:
    """``max_α v(α) − ½(v(0) + v(1))`` (Git Re-Basin); for accuracies ``½(v(0)+v(1)) − min_α v(α)``."""
    a, v = _check(alphas, values)
    ref = 0.5 * (v[0] + v[-1])
    return float(ref - v.min()) if higher_is_better else float(v.max() - ref)


def barrier_linear(alphas: Sequence[float], values: Sequence[float], *, higher_is_better: bool = False) -> float:
    """``max_α [v(α) − ((1−α) v(0) + α v(1))]`` (Frankle, Entezari, Kwok); sign-flipped for accuracies."""
    a, v = _check(alphas, values)
    ref = v[0] + a * (v[-1] - v[0])  # exact when the endpoints agree
    return float(np.max(ref - v)) if higher_is_better else float(np.max(v - ref))


@dataclass(frozen=True)
class Curve:
    """Loss and accuracy along ``θ(α)``; barriers under both definitions are properties."""
    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    label: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def loss_barrier(self) -> float:
        """Git Re-Basin: ``max_α L(α) − mean of the endpoints``."""
        return barrier_mean(self.alphas, self.loss)

    @property
    def loss_barrier_linear(self) -> float:
        """Frankle / Entezari / Kwok: ``max_α [L(α) − ((1−α)L(0) + αL(1))]``."""
        return barrier_linear(self.alphas, self.loss)

    @property
    def accuracy_barrier(self) -> float:
        """``mean endpoint accuracy − min_α acc(α)`` (nan without class targets)."""
        if np.isnan(self.accuracy).any():
            return float("nan")
        return barrier_mean(self.alphas, self.accuracy, higher_is_better=True)

    @property
    def accuracy_barrier_linear(self) -> float:
        if np.isnan(self.accuracy).any():
            return float("nan")
        return barrier_linear(self.alphas, self.accuracy, higher_is_better=True)

    @property
    def midpoint(self) -> tuple[float, float]:
        """Loss and accuracy at the α nearest ½."""
        i = int(np.argmin(np.abs(self.alphas - 0.5)))
        return float(self.loss[i]), float(self.accuracy[i])

    def as_dict(self) -> dict:
        return dict(label=self.label, alphas=self.alphas.tolist(), loss=self.loss.tolist(),
                    accuracy=self.accuracy.tolist(), loss_barrier=self.loss_barrier,
                    loss_barrier_linear=self.loss_barrier_linear, accuracy_barrier=self.accuracy_barrier,
                    accuracy_barrier_linear=self.accuracy_barrier_linear, **self.meta)


def interpolation_curve(model: nn.Module, params_a: Mapping, params_b: Mapping, data, *,
                        alphas: int | Sequence[float] | None = None, loss_fn: LossFn | None = None,
                        adjust: Adjust | None = None, batch_size: int = 1024, device=None,
                        label: str = "", progress: Callable[[int, int], None] | None = None) -> Curve:
    """Evaluate ``model`` at ``θ(α) = (1−α)θ_A + αθ_B`` for 25 evenly spaced α (default).

    Each point is :func:`~symmetries.landscape.evaluate` (its ``loss_fn`` contract: ``(sum, count)``
    or a summed scalar; default the per-token cross-entropy of :mod:`solvers.losses`, so
    ``(batch, time, vocab)`` logits with ``(batch, time)`` targets give per-token loss and accuracy).
    ``adjust(params, α) → params`` corrects each interpolated set before evaluation (e.g.
    :func:`~symmetries.landscape.batchnorm_adjust` or :func:`~symmetries.landscape.repair_adjust`).
    ``progress(i, total)`` is called after each point.
    """
    check_compatible(params_a, params_b)
    a = alpha_grid(alphas)
    losses, accs = [], []
    for i, alpha in enumerate(a):
        p = interpolate(params_a, params_b, float(alpha))
        if adjust is not None and 0.0 < alpha < 1.0:
            p = adjust(p, float(alpha))
        ev = evaluate(model, data, p, loss_fn=loss_fn, batch_size=batch_size, device=device)
        losses.append(ev.loss)
        accs.append(ev.accuracy)
        if progress is not None:
            progress(i + 1, len(a))
    return Curve(a, np.asarray(losses), np.asarray(accs), label)

