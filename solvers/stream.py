"""Streamed problems: models read one tensor at a time, never held whole.

``make_problem(graph, A, B, lazy=True)`` (or ``solvers.solve(..., lazy=True)``) keeps A and B as
:class:`LazyParams`: read-only mappings whose ``[name]`` reads that one tensor from its source,
casts it to the working dtype and device, and checks it is finite the first time (a
:class:`~solvers.SolverInputError` naming the model and the tensor). Shapes and dtypes come from the
source's metadata without reading (``source.tensor_info(name) → (shape, dtype)``; a sharded checkpoint,
:class:`symmetries.checkpoints.ShardedCheckpoint`, gives it from its headers; a plain dict of tensors
works too), and the graph is validated against them at the door.

Weight matching then builds each space's score ``M = Σ_e A_e B_eᵀ`` edge by edge (the streamed
:class:`~solvers.local.Local`): one tensor pair and the ``m × n`` accumulators are in memory at a
time, and ``J`` is summed tensor by tensor (:meth:`~solvers.Problem.objective`). That is exact for the
classes whose subproblem needs only those cross products — the norm-keeping ones (``Permutation``,
``SignFlip``, ``SignedPermutation``, ``Orthogonal``, ``HeadStructured`` over them, ``Trivial``). Other classes
are refused (:func:`check_streamable`): scalings need B's per-row norms and a scale for every pair of
units, invertible maps the Gram matrices ``Σ B Bᵀ`` and ``Σ A Aᵀ`` and L-BFGS on the true loss,
semi-permutations the tensors themselves. Only solvers that declare ``streams = True`` accept a
lazy problem (weight matching).
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch

from symmetries.classes import HeadStructured, Orthogonal, Permutation, SignedPermutation, SignFlip, Trivial

from solvers.errors import SolverInputError

__all__ = ["LazyParams", "check_streamable", "streamable", "tensor_info", "meta_params", "all_finite",
           "row_chunk"]


def all_finite(t: torch.Tensor, chunk: int = 1 << 20) -> bool:
    """Whether a floating tensor is finite, checked ``chunk`` entries at a time (``torch.isfinite`` of the
    whole tensor would allocate a copy of it and two boolean masks)."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def tensor_info(source: Mapping, name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """``(shape, dtype)`` of ``source[name]``: from ``source.tensor_info`` when it has one (nothing read)."""
    info = getattr(source, "tensor_info", None)
    if info is not None:
        shape, dtype = info(name)
        return tuple(int(s) for s in shape), dtype
    t = torch.as_tensor(source[name])
    return tuple(t.shape), t.dtype


def meta_params(source: Mapping) -> dict[str, torch.Tensor]:
    """``name → meta tensor`` of each tensor's shape and dtype: what the graph is validated against."""
    return {k: torch.empty(tensor_info(source, k)[0], dtype=tensor_info(source, k)[1], device="meta")
            for k in source}


#: Entries per row chunk of a streamed pass: a tensor larger than this whose first axis no space touches
#: (an embedding, an output head: ``vocab × d``) is read, multiplied, measured and written this many
#: entries' worth of rows at a time — in memory too, so both paths compute the same sums.
CHUNK = 1 << 22


def row_chunk(graph, name: str, shape) -> int | None:
    """Rows per chunk of tensor ``name`` (``shape``) for a streamed pass, or ``None`` to take it whole: only
    tensors over :data:`CHUNK` entries whose first axis no space of ``graph`` acts on (so each block of rows
    is transformed on its own) are chunked."""
    numel = 1
    for s in shape:
        numel *= int(s)
    if len(shape) < 2 or numel <= CHUNK or any(e.axis % len(shape) == 0 for e in graph.edges_of(name)):
        return None
    return max(1, CHUNK // max(1, numel // int(shape[0])))


class LazyParams(Mapping):
    """A read-only view of ``source`` (name → tensor) that reads each tensor when asked, as the solvers
    compute: floating tensors in ``dtype`` on ``device``, finite (checked at the first read). ``side``
    (``"A"``/``"B"``) names the model in errors. Nothing is cached: memory holds what the caller keeps."""

    def __init__(self, source: Mapping, *, dtype: torch.dtype, device: torch.device, side: str):
        self.source, self.dtype, self.device, self.side = source, dtype, device, side
        self._meta = {k: tensor_info(source, k) for k in source}
        self._checked: set[str] = set()

    def __len__(self) -> int:
        return len(self._meta)

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __contains__(self, name) -> bool:
        return name in self._meta

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, from the source's metadata (nothing read)."""
        return self._meta[name][0]

    def is_floating(self, name: str) -> bool:
        return self._meta[name][1].is_floating_point

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._meta:
            raise KeyError(name)
        raw = self.source[name]
        t = torch.as_tensor(raw.detach() if isinstance(raw, torch.Tensor) else raw)
        if tuple(t.shape) != self._meta[name][0]:
            raise SolverInputError(f"model {self.side}: tensor {name!r} was read with shape {tuple(t.shape)}, its "
                                   f"metadata says {self._meta[name][0]} (the source changed?)", parameter=name)
        return self._cast(name, t, whole=True)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` along its first axis, read alone when the source can
        (``source.rows(name, start, stop)``; a sharded checkpoint reads that byte range), else sliced."""
        if name not in self._meta:
            raise KeyError(name)
        reader = getattr(self.source, "rows", None)
        if reader is not None:
            t = torch.as_tensor(reader(name, start, stop))
        else:
            raw = self.source[name]
            t = torch.as_tensor(raw.detach() if isinstance(raw, torch.Tensor) else raw)[start:stop]
        expected = (stop - start, *self._meta[name][0][1:])
        if tuple(t.shape) != expected:
            raise SolverInputError(f"model {self.side}: rows {start}:{stop} of tensor {name!r} were read with shape "
                                   f"{tuple(t.shape)}, its metadata says {expected} (the source changed?)",
                                   parameter=name)
        return self._cast(name, t, whole=False)

    def _cast(self, name: str, t: torch.Tensor, whole: bool) -> torch.Tensor:
        if t.is_floating_point():
            t = t.to(device=self.device, dtype=self.dtype)
            if name not in self._checked or not whole:
                if not all_finite(t):
                    raise SolverInputError(f"model {self.side}: parameter {name!r} contains NaN or infinite entries "
                                           f"(found as it was read)", parameter=name)
                if whole:
                    self._checked.add(name)
        return t

    def __repr__(self) -> str:
        return f"LazyParams({self.side}: {len(self)} tensors, {self.dtype}, {self.device})"


def streamable(cls) -> bool:
    """Whether weight matching solves ``cls``'s subproblem from cross products alone."""
    inner = cls.inner if isinstance(cls, HeadStructured) else cls
    return isinstance(inner, (Trivial, Permutation, SignFlip, SignedPermutation, Orthogonal))


def check_streamable(classes: Mapping) -> None:
    """A :class:`SolverInputError` naming the first space whose class is not streamable, and why."""
    for space, cls in classes.items():
        if streamable(cls):
            continue
        inner = cls.inner if isinstance(cls, HeadStructured) else cls
        kind = type(inner).__name__
        why = {"PositiveScaling": "its subproblem needs B's per-unit norms ‖B_j‖² and a scale for every pair of "
                                  "units, not only the cross products Σ A Bᵀ",
               "PermutationScaling": "its subproblem needs B's per-unit norms ‖B_j‖² and a scale for every pair of "
                                     "units, not only the cross products Σ A Bᵀ",
               "Invertible": "its subproblem needs the Grams Σ B Bᵀ and Σ A Aᵀ and minimises the true loss with "
                             "L-BFGS over the tensors",
               "SemiPermutation": "its split update reads the tensors themselves"}.get(
            kind, "its subproblem is not known to need only the cross products Σ A Bᵀ")
        raise SolverInputError(f"space {space!r}: a streamed (lazy) problem cannot search {cls!r}: {why}. Stream "
                               f"with a norm-keeping class there (Permutation, SignedPermutation, Orthogonal, "
                               f"HeadStructured over them), or load the models into memory", space=space, cls=cls)
