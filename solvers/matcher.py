"""The per-space views of a :class:`~solvers.Problem`: :class:`Matcher` builds the
:class:`~solvers.local.Local` of any space for a given set of the other spaces' transforms (A's rows
precomputed, B's with the others applied; fixed edges summed once, cross products kept between visits,
tensors streamed in row blocks where a lazy problem needs it), and :func:`search_units` lists the units
a solver visits (a head group counted as one).
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch

from symmetries.action import apply_axis
from symmetries.blocks import unit_rows
from symmetries.classes import HeadStructured
from symmetries.roles import Role

from solvers import cross_cache
from solvers.errors import SolverInputError
from solvers.local import Local, row_squares
from solvers.memory import problem_bytes, release_free_memory
from solvers.stream import row_chunk

__all__ = ["Matcher", "search_units", "KEEP_BYTES"]

#: Most bytes of B rows :meth:`Matcher.local` keeps for its caller in one call (``keep=``).
KEEP_BYTES = 1 << 27
#: Fixed edges narrower than the space are summed once only if they hold at least this many columns.
FIXED_MIN_COLS = 64


class Matcher:
    """The per-space views of a :class:`~solvers.Problem`: for each searched space, A's rows of every
    tensor meeting it (precomputed) and B's rows with the other spaces' current transforms applied
    (:meth:`local` builds the :class:`Local` of one space for a given set of transforms)."""

    def __init__(self, problem):
        self.problem = problem
        self.searched = set(problem.spaces)
        ga, gb = problem.graph, problem.graph_b
        self.by_param_b = {p.name: gb.edges_of(p.name) for p in gb.parameters()}
        self.edges: dict[str, list] = {}
        self.a_rows: dict[tuple[str, int], torch.Tensor] = {}
        self.chunks: dict[str, int | None] = {}  # rows per chunk of a tensor streamed in row blocks
        self.fixed: dict[str, tuple[int, ...]] = {}  # edges whose B rows no transform changes (_fixed_edges)
        self._fixed_acc: dict[str, tuple[dict, dict]] = {}  # their sums and B row norms per role, once computed
        self._raw_sq: dict[tuple[str, int], torch.Tensor] = {}  # B's stored rows' squared norms per (space, edge)
        #: products kept between visits (solvers.cross_cache); None: off
        self.cache = None
        self.itemsize = size = torch.empty((), dtype=problem.dtype).element_size()
        every = sum(len(problem.graph_b.edges_at(s)) * m * n * size for s, (m, n) in problem.sizes.items())
        if 0 < every <= cross_cache.SMALL_BYTES:  # every product fits: kept at any depth
            self.cache = cross_cache.CrossCache(every, min_depth=1)
        else:  # at most the bytes of the largest m × n score a visit builds anyway, and an eighth of the models
            budget = min(cross_cache.CACHE_BYTES, problem_bytes(problem) // 8,
                         max((m * n * size for m, n in problem.sizes.values()), default=0))
            if budget > 0:
                self.cache = cross_cache.CrossCache(budget)
        # a streamed problem's memory is its few tensors in flight: its cache never widens
        self._wide_budget = 0 if problem.lazy else min(cross_cache.CACHE_BYTES,
                                                       int(cross_cache.WIDE_SHARE * problem_bytes(problem)))
        for space in problem.spaces:
            m, n = problem.sizes[space]
            pairs, seen = [], {}
            b_edges = defaultdict(list)
            for e in gb.edges_at(space):
                b_edges[(e.parameter, e.axis, e.role)].append(e)
            for ea in ga.edges_at(space):
                if not b_edges[(ea.parameter, ea.axis, ea.role)]:
                    raise SolverInputError(f"graph_b lacks the edge {ea.parameter!r} axis {ea.axis} ({ea.role}) → "
                                           f"{space!r} that graph has", space=space, parameter=ea.parameter)
                eb = b_edges[(ea.parameter, ea.axis, ea.role)].pop(0)
                if ea.count != eb.count:
                    raise SolverInputError(f"{ea.parameter!r} axis {ea.axis} holds {ea.count} copies of space {space!r} "
                                           f"in graph and {eb.count} in graph_b", space=space, parameter=ea.parameter)
                shape = problem.shape(ea.parameter, "a")
                span = ea.span(shape[ea.axis])
                key = (ea.parameter, ea.axis % len(shape), span)
                if key in seen:  # a tied axis (out and in of one space): counted once, as out
                    if ea.role is Role.OUT:
                        pairs[seen[key]] = (ea, eb)
                    continue
                seen[key] = len(pairs)
                pairs.append((ea, eb))
            self.edges[space] = pairs
            self.fixed[space] = self._fixed_edges(pairs, m, n)
            for ea, _ in pairs:
                if ea.parameter not in self.chunks:
                    step = row_chunk(ga, ea.parameter, problem.shape(ea.parameter, "a"))
                    self.chunks[ea.parameter] = step if row_chunk(gb, ea.parameter, problem.shape(
                        ea.parameter, "b")) is not None else None
            if problem.lazy:  # streamed: A's rows are read when a space is visited, never kept
                continue
            for i, (ea, _) in enumerate(pairs):
                self.a_rows[(space, i)] = _rows(problem.params_a[ea.parameter], ea, m)

    def widen_cache(self) -> None:
        """A creeping solve's cache (:data:`~solvers.cross_cache.WIDEN_AFTER`): edges as long as the space is
        wide, within :data:`~solvers.cross_cache.WIDE_SHARE` of the models' bytes."""
        if self._wide_budget <= 0:
            return
        if self.cache is None:
            self.cache = cross_cache.CrossCache(self._wide_budget, min_depth=1)
        else:
            self.cache.widen(self._wide_budget)

    def adopt(self, other: "Matcher", scales: dict[str, torch.Tensor]) -> int:
        """Take the kept products of ``other`` — a Matcher of this problem with B's units scaled, ``B' = D B``
        (``scales``: ``c`` per scaled space; the staged start's balanced B) — wherever they are this problem's
        up to a column scaling: the edge's own space scaled (``out``: ``M = M' diag(1/c)``; ``in``:
        ``M = M' diag(c)``), no other axis of the tensor at a scaled space, the same dtype and device.
        Costliest first, within this cache's budget; ``other``'s products are rescaled in place. Returns how
        many were taken."""
        if self.cache is None or other.cache is None or other.problem.dtype != self.problem.dtype:
            return 0
        taken = 0
        for (space, i), sigma, product, age, work in other.cache.kept():
            ea, eb = self.edges[space][i]
            dim = len(self.problem.shape(eb.parameter, "b"))
            if ea.role is Role.VAR or any(f.space in scales for f in self.by_param_b[eb.parameter]
                                          if f.axis % dim != eb.axis % dim):
                continue
            if space in scales:
                c = scales[space].to(product.dtype).to(product.device)
                if ea.role is Role.IN:
                    product.mul_(c)
                else:
                    product.div_(c)
            taken += self.cache.put((space, i), sigma, product, age, work)
        return taken

    def _fixed_edges(self, pairs, m: int, n: int) -> tuple[int, ...]:
        """The edges meeting tensors on which no other axis is searched (an embedding, a first layer, a
        classifier read by the last layer): their sums ``Σ A_e B_eᵀ`` (and B's row norms) never change, and a
        streamed Local starts from them, once computed — summed first, in edge order, on every visit alike.
        None unless the cached ``m × n`` sums save more than they hold: those tensors have at least
        ``max(m, n)`` columns in all, or at least :data:`FIXED_MIN_COLS` and the sums fit in
        :data:`~solvers.cross_cache.SMALL_BYTES` (ResNeXt's 2048-wide last stage read by a 1000-class head)."""
        fixed, cols = [], 0
        for i, (_, eb) in enumerate(pairs):
            shape = self.problem.shape(eb.parameter, "b")
            if any(f.space in self.searched and f.axis % len(shape) != eb.axis % len(shape)
                   for f in self.by_param_b[eb.parameter]):
                continue
            fixed.append(i)
            cols += math.prod(shape) // max(shape[eb.axis], 1)
        small = cols >= FIXED_MIN_COLS and m * n * self.itemsize <= cross_cache.SMALL_BYTES
        return tuple(fixed) if cols >= max(m, n) or small else ()

    def a_row(self, space: str, i: int) -> torch.Tensor:
        """A's rows of the space's ``i``-th edge (kept in memory, or read now for a lazy problem)."""
        if (space, i) in self.a_rows:
            return self.a_rows[(space, i)]
        ea = self.edges[space][i][0]
        return _rows(self.problem.params_a[ea.parameter], ea, self.problem.sizes[space][0])

    def b_rows(self, space: str, eb, transforms: dict, n: int, t: torch.Tensor | None = None) -> torch.Tensor:
        """B's rows along ``eb``'s axis with the other axes' current transforms applied (of ``t``: a block of
        the tensor's rows along its first axis, when given)."""
        t = self.problem.params_b[eb.parameter] if t is None else t
        axis = eb.axis % t.dim()
        others = defaultdict(list)
        for f in self.by_param_b[eb.parameter]:
            if f.axis % t.dim() != axis and f.space in transforms:
                others[f.axis % t.dim()].append(f)
        for ax, group in others.items():
            t = apply_axis(t, ax, group, transforms)
        return unit_rows(t, eb, n, axis)

    def usable(self, eb, transforms: dict) -> bool:
        """Whether every other axis of the tensor indexes a settled space (or one not searched)."""
        dim = len(self.problem.shape(eb.parameter))
        for f in self.by_param_b[eb.parameter]:
            if f.axis % dim != eb.axis % dim and f.space in self.searched and f.space not in transforms:
                return False
        return True

    def local(self, space: str, transforms: dict, settled_only: bool = False, stream: bool = False,
              keep: list | None = None, norms: bool = False) -> Local:
        """The space's subproblem data; ``stream`` keeps only cross products (norm-keeping classes; a lazy
        problem always streams: one tensor pair in memory at a time). ``keep``: a list to which
        ``(space, edge, A_e, B_e)`` is appended for each edge that is a whole tensor (full span, no repeat,
        not read in row blocks), up to :data:`KEEP_BYTES` of B rows in all — the caller may then read
        ``‖A_e − T·B_e‖²``, that tensor's term of ``J``, without applying the other transforms again (not for a
        lazy problem: its rows are copies read from disk, not views). ``norms`` (with ``stream``): B's row
        norms are summed too (:meth:`Local.row_norms`: the scale terms of ``PermutationScaling``)."""
        m, n = self.problem.sizes[space]
        loc = Local(m, n)
        if self.problem.lazy:  # kept rows would be fresh copies of A's and B's tensors beside the scores: none
            keep = None
        if self.problem.lazy and (not stream or norms):
            raise SolverInputError(f"space {space!r}: a lazy problem keeps only cross products; its class "
                                   f"{self.problem.classes[space]!r} needs the tensors", space=space)
        fixed = self.fixed[space] if stream else ()
        if fixed:
            if space not in self._fixed_acc or (norms and self._fixed_acc[space][1] is None):
                part = Local(m, n)
                for i in fixed:
                    self._add_edge(part, space, i, transforms, True, norms, None)
                self._fixed_acc[space] = (part._acc, part._norms if norms else None)
            sums, sq = self._fixed_acc[space]
            for role, product in sums.items():
                loc.add_product(role, product, sq[role] if norms else None)
            for i in fixed if keep is not None else ():  # their rows: views of the tensors, no transform applied
                ea, eb = self.edges[space][i]
                if self._whole(ea, eb):
                    self._keep(keep, space, ea, self.a_row(space, i), self.b_rows(space, eb, {}, n))
        for i, (ea, eb) in enumerate(self.edges[space]):
            if i in fixed or (settled_only and not self.usable(eb, transforms)):
                continue
            self._add_edge(loc, space, i, transforms, stream, norms, keep)
        return loc

    def _add_edge(self, loc: Local, space: str, i: int, transforms: dict, stream: bool, norms: bool,
                  keep: list | None) -> None:
        """Add the space's ``i``-th edge to ``loc``: its kept product (:mod:`solvers.cross_cache`), its rows
        whole, or — a tensor streamed in row blocks — block by block."""
        m, n = loc.m, loc.n
        ea, eb = self.edges[space][i]
        if self.problem.lazy:  # the last edge's tensors (read from disk) go back to the OS before the next
            release_free_memory()
        step = self.chunks[ea.parameter] if stream else None
        if step is None and stream and self.cache is not None:  # spans and repeats too: unit_rows reads them
            product = self._cached_cross(space, i, ea, eb, transforms, m, n)
            if product is not None:  # the other axis moved by a gather only: B's row norms are the raw rows'
                loc.add_product(ea.role, product, self._raw_norms(space, i, eb, n) if norms else None)
                return
        if step is None:
            a, b = self.a_row(space, i), self.b_rows(space, eb, transforms, n)
            if keep is not None and self._whole(ea, eb):
                self._keep(keep, space, ea, a, b)
            loc.add(ea.role, a, b, stream=stream, norms=norms)
            return
        for a, b in self.row_blocks(ea, eb, transforms, m, n, step):  # Σ_e A_e B_eᵀ a block of columns at a time
            loc.add(ea.role, a, b, stream=True, norms=norms)
            del a, b

    def _raw_norms(self, space: str, i: int, eb, n: int) -> torch.Tensor:
        """``‖B_e[i]‖²`` of the space's ``i``-th edge's rows as stored (computed once): the row norms of ``B̃_e``
        too wherever the other axes are only re-indexed (a gather keeps each row's entries, moved)."""
        key = (space, i)
        if key not in self._raw_sq:
            self._raw_sq[key] = row_squares(self.b_rows(space, eb, {}, n))
        return self._raw_sq[key]

    @staticmethod
    def _keep(keep: list, space: str, ea, a: torch.Tensor, b: torch.Tensor) -> None:
        """Append ``(space, edge, A_e, B_e)`` to ``keep`` while its B rows stay within :data:`KEEP_BYTES`."""
        if sum(x[3].numel() * x[3].element_size() for x in keep) + b.numel() * b.element_size() <= KEEP_BYTES:
            keep.append((space, ea, a, b))

    def _cached_cross(self, space: str, i: int, ea, eb, transforms: dict, m: int, n: int) -> torch.Tensor | None:
        """``A_e B̃_eᵀ`` from :attr:`cache` where the edge qualifies (:meth:`CrossCache.eligible`), else ``None``."""
        t = self.problem.params_b[eb.parameter]
        axis = eb.axis % t.dim()
        other: dict[int, list] = defaultdict(list)
        for f in self.by_param_b[eb.parameter]:
            if f.axis % t.dim() != axis and f.space in transforms:
                other[f.axis % t.dim()].append(f)
        ax = self.cache.eligible(tuple(t.shape), eb, other, transforms, m, n)
        if ax is None:
            return None
        return self.cache.cross((space, i), self.problem.params_a[ea.parameter], t, ea, eb, ax, other[ax],
                                transforms, m, n)

    def _whole(self, ea, eb) -> bool:
        """Whether the edges' rows hold their whole tensors (in A and in B) exactly once."""
        return all(e.repeat is None and e.span(self.problem.shape(e.parameter, side)[e.axis])
                   == (0, self.problem.shape(e.parameter, side)[e.axis]) for e, side in ((ea, "a"), (eb, "b")))

    def row_blocks(self, ea, eb, transforms: dict, m: int, n: int, step: int):
        """``(A_e, B_e)`` restricted to blocks of ``step`` rows of the tensor's first axis (no space acts
        there): a streamed problem reads only those rows. Each is a fresh contiguous copy, in memory as
        streamed, so both paths multiply the same matrices."""
        p = self.problem
        rows = p.shape(ea.parameter, "a")[0]
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            if p.lazy:
                release_free_memory()
                ta, tb = p.params_a.rows(ea.parameter, start, stop), p.params_b.rows(eb.parameter, start, stop)
            else:
                ta = p.params_a[ea.parameter].narrow(0, start, stop - start)
                tb = p.params_b[eb.parameter].narrow(0, start, stop - start)
            a = _rows(ta, ea, m).clone(memory_format=torch.contiguous_format)
            del ta
            b = self.b_rows(None, eb, transforms, n, tb).clone(memory_format=torch.contiguous_format)
            del tb
            yield a, b


def _rows(t: torch.Tensor, edge, m: int) -> torch.Tensor:
    """``t``'s span along ``edge``'s axis, that axis first, the others (and a repeat's copies) flattened
    (``m × k``)."""
    return unit_rows(t, edge, m)


def search_units(problem) -> list[list[str]]:
    """The spaces a solver visits, in graph order, as units: a head group (its spaces searched in
    head-structured classes) is one unit, every other space its own."""
    units, groups = [], {}
    for space in problem.spaces:
        hg = problem.graph.space(space).head_group
        cls = problem.classes[space]
        if hg is None or not isinstance(cls, HeadStructured):
            if hg is not None and any(isinstance(problem.classes[s], HeadStructured)
                                      for s in problem.graph.head_groups()[hg]):
                raise SolverInputError(f"space {space!r} shares head group {hg!r} with head-structured spaces but "
                                       f"is searched in {cls!r}; give every space of the group a HeadStructured "
                                       f"class (or Trivial to all)", space=space)
            units.append([space])
        elif hg in groups:
            groups[hg].append(space)
        else:
            groups[hg] = [space]
            units.append(groups[hg])
    return units
