"""The repeated (block-structured) edge on tensors: a span holding a space's units ``count`` times.

An edge with ``repeat = (count, block)`` reads its span (length ``count·n``) as ``(n/block, count,
block)``: copy ``c`` of the space is ``x[o, c, b]`` with unit ``o·block + b``. A map ``T`` of the space
acts on every copy alike: ``x'[:, c, :] = T · x[:, c, :]`` (in the edge's role). Splitting the span
into ``(count, n)`` (copies first) turns it into a plain axis of the space beside a free axis of copies.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from symmetries.errors import ElementShapeError

__all__ = ["split_copies", "merge_copies", "unit_rows", "expand_repeats", "merged_block", "repeat_index",
           "repeat_units"]


def _move(t, source: int, destination: int):
    return t.movedim(source, destination) if isinstance(t, torch.Tensor) else np.moveaxis(t, source, destination)


def split_copies(t, axis: int, count: int, block: int):
    """``t`` (torch or numpy) with ``axis`` — length ``count·n``, laid out ``(n/block, count, block)`` —
    replaced by two axes ``(count, n)``: the copies at ``axis``, the space's units at ``axis + 1``."""
    shape = tuple(t.shape)
    n = shape[axis] // count
    x = t.reshape(shape[:axis] + (n // block, count, block) + shape[axis + 1:])
    return _move(x, axis + 1, axis).reshape(shape[:axis] + (count, n) + shape[axis + 1:])


def merge_copies(t, axis: int, block: int):
    """The inverse of :func:`split_copies`: axes ``(axis, axis + 1)`` = ``(count, m)`` merged into one axis
    of length ``count·m`` laid out ``(m/block, count, block)``."""
    shape = tuple(t.shape)
    count, m = shape[axis], shape[axis + 1]
    x = t.reshape(shape[:axis] + (count, m // block, block) + shape[axis + 2:])
    return _move(x, axis, axis + 1).reshape(shape[:axis] + (count * m,) + shape[axis + 2:])


def unit_rows(t, edge, size: int, axis: int | None = None):
    """``t``'s span along the edge's axis as an ``size × k`` matrix: row ``j`` holds every entry of unit ``j``
    (the other axes and, for a repeated edge, the copies flattened into the columns; ``axis``: the edge's
    axis in ``t`` when it differs from ``edge.axis``)."""
    axis = (edge.axis if axis is None else axis) % t.dim()
    start, stop = edge.span(t.shape[axis])
    x = t.narrow(axis, start, stop - start)
    if edge.repeat is not None:
        x = split_copies(x, axis, *edge.repeat)
        axis += 1
    return x.movedim(axis, 0).reshape(size, -1)


def expand_repeats(t, edges):
    """``(t', edges')``: every repeated axis of ``t`` (torch or numpy) split into ``(count, n)`` by
    :func:`split_copies`, and ``edges`` (each on a whole axis of ``t``) rewritten as plain edges of ``t'``
    (the repeated ones on the units' axis; the copies' axis is met by no edge). Edges on one axis must
    agree on its repeat (an :class:`~symmetries.errors.ElementShapeError` otherwise)."""
    ndim = len(t.shape)
    repeats: dict[int, tuple[int, int] | None] = {}
    for e in edges:
        ax = e.axis % ndim
        if repeats.setdefault(ax, e.repeat) != e.repeat:
            raise ElementShapeError(f"parameter {e.parameter!r} axis {ax} is read with repeats {repeats[ax]} and "
                                    f"{e.repeat} by different edges")
    split = sorted(ax for ax, r in repeats.items() if r is not None)
    for ax in reversed(split):
        t = split_copies(t, ax, *repeats[ax])
    out = []
    for e in edges:
        ax = e.axis % ndim
        new = ax + sum(1 for s in split if s < ax) + (1 if ax in split else 0)
        out.append(dataclasses.replace(e, axis=new, repeat=None, slice=None))
    return t, out


def merged_block(edge, n: int, m: int) -> int:
    """The block of a repeated edge after a map from ``n`` to ``m`` units: unchanged for square maps;
    ``1`` for ``block = 1`` (more outer units: a flatten's channels); else ``block·m/n`` (the outer factor
    kept, each block widened: heads, a tile). An :class:`~symmetries.errors.ElementShapeError` names the
    edge when that is not an integer."""
    block = edge.repeat[1]
    if m == n or block == 1:
        return block
    if (block * m) % n:
        raise ElementShapeError(f"a map from {n} to {m} units on the repeated axis {edge.axis} of {edge.parameter!r} "
                                f"(space {edge.space!r}, repeat {edge.repeat}) leaves no whole block: widen by a "
                                f"multiple of {n // block} units")
    return block * m // n


def repeat_index(index: torch.Tensor, count: int, block: int, block_out: int) -> torch.Tensor:
    """The gather index of a whole repeated axis for a map given by ``index`` (output unit ``j`` reads input
    unit ``index[j]``): output ``(o, c, b)`` reads input ``(s // block, c, s % block)`` with
    ``s = index[o·block_out + b]``."""
    m = index.numel()
    units = torch.arange(m, device=index.device).reshape(m // block_out, 1, block_out).expand(-1, count, -1)
    src = index[units]
    copy = torch.arange(count, device=index.device).reshape(1, count, 1)
    return ((src // block * count + copy) * block + src % block).reshape(-1)


def repeat_units(m: int, count: int, block_out: int) -> torch.Tensor:
    """For each position of a repeated axis of ``count·m`` entries, the unit it holds (for per-unit scales)."""
    return torch.arange(m).reshape(m // block_out, 1, block_out).expand(-1, count, -1).reshape(-1)
