"""Plots of loss and accuracy along interpolation paths (matplotlib, Agg backend).

The format follows the path's suffix (:data:`FORMATS`: PNG, PDF, SVG); any other suffix is refused
before anything is drawn.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from symmetries.errors import SymmetryError
from symmetries.io import atomic_path
from symmetries.landscape.barrier import Curve

__all__ = ["plot_curves", "FORMATS", "PlotFormatError"]

#: Suffix → matplotlib format of the files :func:`plot_curves` writes.
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


class PlotFormatError(SymmetryError, ValueError):
    """A plot path whose suffix names no format :func:`plot_curves` writes."""


def plot_format(path: str | os.PathLike) -> str:
    """The format for ``path`` from its suffix (case-insensitive), or :class:`PlotFormatError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise PlotFormatError(f"cannot write a plot to {str(path)!r}: the suffix must be one of "
                              f"{', '.join(FORMATS)} (not {suffix or 'none'})")
    return FORMATS[suffix]


def plot_curves(curves: Sequence[Curve], path: str | os.PathLike, *, title: str = "",
                extra: Sequence[Curve] = (), extra_title: str = "marginalized (BNN)") -> Path:
    """Loss (left) and accuracy (right) against α for each curve; ``extra`` curves (e.g. posterior
    paths) get a third panel of expected loss. Written atomically to ``path`` in the format its suffix
    names (``.png``, ``.pdf``, ``.svg``)."""
    fmt = plot_format(path)
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = 3 if extra else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.0), constrained_layout=True)
    for c in curves:
        label = f"{c.label} (barrier {c.loss_barrier:.3f})"
        style = dict(ls="--", color="0.3") if c.label == "naive" else {}
        axes[0].plot(c.alphas, c.loss, marker=".", label=label, **style)
        axes[1].plot(c.alphas, 100 * c.accuracy, marker=".", label=c.label, **style)
    axes[0].set(xlabel="α  (0 = model A, 1 = model B)", ylabel="test loss", title="loss along the path")
    axes[1].set(xlabel="α", ylabel="test accuracy (%)", title="accuracy along the path")
    if extra:
        for c in extra:
            axes[2].plot(c.alphas, c.loss, marker=".", label=f"{c.label} (barrier {c.loss_barrier:.3f})")
        axes[2].set(xlabel="α", ylabel="expected test loss", title=extra_title)
        axes[2].legend(fontsize=8)
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    out = Path(path)
    try:
        with atomic_path(out, suffix=out.suffix) as tmp:
            fig.savefig(tmp, dpi=110, format=fmt)
    finally:
        plt.close(fig)
    return out
