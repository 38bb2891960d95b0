"""Bookkeeping for :func:`architectures.from_module`: candidate spaces and what each fx value carries.

A *candidate space* (``Var``) is created wherever a parameterised op produces features (a
linear map's output units). Ops join candidates (a residual add: union-find), restrict them
(the classes exact across an activation are met with what the candidate admits, in the class
lattice) or kill them (a candidate reaching the model's output, or mixed with fixed data, has
no symmetry). Each fx value is described by ``Feat`` (a tensor and its one feature dimension,
split into segments that each index one candidate or nothing) or ``ParamRef`` (a state-dict
tensor, possibly broadcast or viewed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from symmetries.classes import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling,
                                SemiPermutation, SignedPermutation, SymmetryClass, Trivial)
from symmetries.errors import SymmetryError
from symmetries.lattice import is_subclass, meet
from symmetries.roles import Role

__all__ = ["ExtractionError", "Sealed", "Claim", "Var", "Feat", "HeadOnly", "Stacked", "ParamRef", "State", "meet_sets",
           "piece_classes", "hint_of", "common_prefix"]


class Sealed(Exception):
    """Internal: an op touched a query/key space after its bilinear pairing (the walk makes the
    node opaque)."""


class ExtractionError(SymmetryError, ValueError):
    """``from_module`` met an fx node it cannot reason about; ``node`` names it."""

    def __init__(self, message: str, *, node: str | None = None):
        super().__init__(message)
        self.node = node


#: Classes closed under block-diagonal assembly and block permutation (see symmetries.lattice).
_BLOCK_CLOSED = (Permutation, SignedPermutation, PermutationScaling, Orthogonal, Invertible, SemiPermutation)


def meet2(x: SymmetryClass, y: SymmetryClass) -> SymmetryClass:
    """The largest class inside both ``x`` and ``y``; with head structure, per head:
    ``HeadStructured(H, A) ∧ C = HeadStructured(H, A ∧ C)`` for a block-closed ``C``."""
    if is_subclass(x, y):
        return x
    if is_subclass(y, x):
        return y
    hx, hy = isinstance(x, HeadStructured), isinstance(y, HeadStructured)
    if hx and hy:
        return HeadStructured(x.num_heads, meet2(x.inner, y.inner)) if x.num_heads == y.num_heads else Trivial()
    if hx or hy:
        h, c = (x, y) if hx else (y, x)
        if isinstance(c, _BLOCK_CLOSED):
            return HeadStructured(h.num_heads, meet2(h.inner, c))
    return meet([x, y])


def meet_sets(a: tuple[SymmetryClass, ...], b: tuple[SymmetryClass, ...]) -> tuple[SymmetryClass, ...]:
    """Maximal classes of ``{x ∧ y : x ∈ a, y ∈ b}`` — the classes exact under both constraints —
    in the order of ``a`` (its first class stays the default where it survives)."""
    out: list[SymmetryClass] = []
    for x in a:
        for y in b:
            m = meet2(x, y)
            if m not in out:
                out.append(m)
    return tuple(c for c in out if not any(c != d and is_subclass(c, d) for d in out))


class Claim(NamedTuple):
    """An edge of a candidate space: ``param``'s ``axis`` (``span`` of it, ``None``: all) in ``role``;
    ``repeat = (count, block)``: the span holds ``count`` copies of the space's units laid out
    ``(size/block, count, block)`` (:meth:`symmetries.graph.WeightGraph.connect`)."""
    param: str
    axis: int
    role: Role
    span: tuple[int, int] | None
    repeat: tuple[int, int] | None = None


@dataclass
class Var:
    """A candidate space: its size, the classes still exact, the edges that index it."""
    size: int
    hint: str
    classes: tuple[SymmetryClass, ...] = (Invertible(),)
    activations: list[str] = field(default_factory=list)
    dead: str | None = None
    head_group: str | None = None
    edges: list[Claim] = field(default_factory=list)
    sealed: bool = False


@dataclass(frozen=True)
class Feat:
    """A tensor value: ``shape``; ``dim`` is its feature dimension (``None``: it indexes no space)
    and ``segs`` the consecutive pieces of that dimension, ``(var id or None, length)``. When the
    features are split into heads (``view(b, t, H, d)``), ``hdim`` is the head dimension and
    ``dim`` the within-head one (unit ``h·d + j``). ``half`` marks rotate_half's pieces of head
    features: ``(0, sign)`` the lower half ``[:d/2]``, ``(1, sign)`` the upper, times ``sign``
    (:mod:`architectures.extract.rotary`). ``rep = (count, block)`` marks a flatten's features: the
    feature dimension holds ``count`` copies of the segments' units laid out ``(n/block, count,
    block)`` — channel-major ``(S, 1)``, channels-last ``(S, C)`` (only the ops of
    :mod:`architectures.extract.repeat` may see them). On head features ``rep = (R, d)`` marks
    grouped-query copies (``repeat_kv``: head ``g·R + r`` is head ``g``), and ``rdim`` the dimension of
    the copies before they merge with the heads (``(B, G, R, L, d)``; :mod:`architectures.extract.gqa`)."""
    shape: tuple[int, ...]
    dim: int | None = None
    segs: tuple[tuple[int | None, int], ...] = ()
    hdim: int | None = None
    half: tuple[int, int] | None = None
    rep: tuple[int, int] | None = None
    rdim: int | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def spaced(self) -> bool:
        return any(v is not None for v, _ in self.segs)

    def moved(self, shape, dim: int | None) -> "Feat":
        """The same features on dimension ``dim`` of a tensor of ``shape`` (head split kept when
        the number of dimensions is unchanged)."""
        hdim = self.hdim if self.hdim is not None and len(shape) == self.ndim else None
        if dim is None:
            return Feat(tuple(shape))
        return Feat(tuple(shape), dim, self.segs, hdim, self.half, self.rep)

    def pieces(self):
        """``(var, span, repeat)`` per segment: the slice of the feature axis its units occupy
        (``None``: one segment, the whole axis) and their repeat; features of no space give
        ``(None, None, None)``."""
        count = 1 if self.rep is None else self.rep[0]
        pos = 0
        for var, n in self.segs or ((None, None),):
            yield var, None if len(self.segs) <= 1 else (pos * count, (pos + n) * count), self.rep
            pos += n or 0


@dataclass(frozen=True)
class HeadOnly:
    """Attention scores ``q kᵀ`` per head: no feature dimension left, but dimension ``hdim``
    indexes the heads of the query/key space ``var`` (its head permutation acts there); ``rep``
    query heads share each key head (grouped-query attention: head ``g·rep + r`` reads key head ``g``)."""
    shape: tuple[int, ...]
    hdim: int
    var: int
    rep: int = 1

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Stacked:
    """A tensor whose dimension ``sdim`` stacks separately described tensors: ``items[i]`` (a
    :class:`Feat`, of the shape without ``sdim``) describes ``x.select(sdim, i)`` — fused q/k/v
    reshaped to ``(3, B, H, T, d)``, or a recurrent layer's final states ``(layers·directions, B, H)``.
    Only indexing or unbinding ``sdim``, moving dimensions and copies know it; other ops refuse it."""
    shape: tuple[int, ...]
    sdim: int
    items: tuple[Feat, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class ParamRef:
    """A state-dict tensor ``name`` viewed with ``shape``; ``axes[d]`` is the tensor axis behind
    dimension ``d`` of the view (``None`` for a broadcast dimension); ``spans[d]`` the slice
    ``(start, stop)`` of that axis the dimension holds when it is cut (``bias[:8]``), else ``None``
    (``spans`` itself ``None``: no dimension is cut)."""
    name: str
    shape: tuple[int, ...]
    axes: tuple[int | None, ...]
    spans: tuple[tuple[int, int] | None, ...] | None = None

    def span(self, d: int) -> tuple[int, int] | None:
        """The slice of the tensor's axis that dimension ``d`` of the view holds (``None``: all of it)."""
        return None if self.spans is None else self.spans[d]

    @property
    def whole(self) -> bool:
        """No dimension of the view is a cut axis: every indexed axis is seen in full."""
        return self.spans is None or all(s is None for s in self.spans)


def piece_classes(classes, size: int, start: int, n: int) -> tuple[SymmetryClass, ...]:
    """The classes of units ``[start, start + n)`` of a space of ``size`` units admitting ``classes``:
    a head-structured class keeps the whole heads the piece holds (``HeadStructured(k, inner)``,
    ``inner`` for one head) and nothing if the piece cuts a head; other classes are kept."""
    out = []
    for c in classes:
        if isinstance(c, HeadStructured):
            width = size // c.num_heads
            if start % width or n % width:
                c = Trivial()
            else:
                c = c.inner if n == width else HeadStructured(n // width, c.inner)
        if c not in out:
            out.append(c)
    kept = tuple(c for c in out if not any(c != d and is_subclass(c, d) for d in out))
    return kept or (Trivial(),)


def common_prefix(a: str, b: str) -> str:
    """A head group's name: the common module path of the query and key producers."""
    pa, pb = a.split("."), b.split(".")
    common = []
    for x, y in zip(pa, pb):
        if x != y:
            break
        common.append(x)
    return ".".join(common) if common else f"{a}.heads"


def hint_of(param: str) -> str:
    """A space name for the units a parameter produces: its module's path (``layers.0``), or
    ``<name>.units`` for a parameter of the root module (which would clash with the tensor's name)."""
    return param.rsplit(".", 1)[0] if "." in param else f"{param}.units"


class State:
    """Union-find over candidate spaces, and the edges and poisoned tensors met so far."""

    def __init__(self):
        self.vars: dict[int, Var] = {}
        self.parent: dict[int, int] = {}
        self.poisoned: dict[str, str] = {}   # tensor name → fx node that used it opaquely
        self.refined: dict[int, list[tuple[int, int]]] = {}  # split candidate → its pieces
        self.touched: list[str] = []  # every tensor name connected or poisoned, in order (see walk.visit)
        self.pinned: list[Claim] = []  # edges on features of no space
        self.open_groups: set[str] = set()  # head groups a joined space may enter (channel groups)

    def new(self, size: int, hint: str, classes=None, head_group: str | None = None) -> int:
        i = len(self.parent)
        self.parent[i] = i
        self.vars[i] = Var(int(size), hint, tuple(classes) if classes else (Invertible(),), head_group=head_group)
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def var(self, i: int) -> Var:
        return self.vars[self.find(i)]

    def union(self, a: int, b: int, node: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        va, vb = self.vars[ra], self.vars[rb]
        if va.sealed or vb.sealed:
            raise Sealed(node)
        if va.size != vb.size:
            raise ExtractionError(f"fx node {node!r} joins feature spaces of sizes {va.size} and {vb.size}", node=node)
        group = va.head_group
        if va.head_group != vb.head_group:  # an attention head space joined with another space
            group = self._merge_groups(va.head_group, vb.head_group, node)
        keep, drop = (ra, rb) if ra < rb else (rb, ra)
        vk, vd = self.vars[keep], self.vars.pop(drop)
        self.parent[drop] = keep
        vk.head_group = group
        vk.classes = meet_sets(vk.classes, vd.classes)
        vk.activations += [a for a in vd.activations if a not in vk.activations]
        vk.dead = vk.dead or vd.dead
        vk.edges += vd.edges
        return keep

    def _merge_groups(self, a: str | None, b: str | None, node: str) -> str:
        """The head group of two joined spaces: open groups (channel groups, :attr:`open_groups`)
        take in a space of no group and merge with each other (one group permutation for all);
        an attention's group joins nothing (:class:`Sealed`)."""
        if not {a, b} - {None} <= self.open_groups:
            raise Sealed(node)
        keep, drop = (a, b) if a is not None else (b, a)
        if drop is not None:
            for v in self.vars.values():
                if v.head_group == drop:
                    v.head_group = keep
            self.open_groups.discard(drop)
        return keep

    def restrict(self, i: int | None, classes, activation: str | None = None) -> None:
        if i is None:
            return
        v = self.var(i)
        if v.sealed:
            raise Sealed(i)
        v.classes = meet_sets(v.classes, tuple(classes))
        if activation is not None and activation not in v.activations:
            v.activations.append(activation)

    def kill(self, i: int | None, reason: str) -> None:
        if i is not None:
            v = self.var(i)
            v.dead = v.dead or reason

    def connect(self, i: int | None, param: str, axis: int, role: Role | str,
                span: tuple[int, int] | None = None, repeat: tuple[int, int] | None = None) -> None:
        """``param``'s ``axis`` (``span`` of it, ``repeat``: :class:`Claim`) indexes candidate ``i`` in
        ``role``; with ``i`` ``None``
        it reads or writes features of no space, so those indices are *pinned*: no space may
        transform them (a layer applied to the model's input and again to a hidden space)."""
        self.touched.append(param)
        if i is None:
            self.pinned.append(Claim(param, int(axis), Role.parse(role), span, repeat))
            return
        if self.var(i).sealed:
            raise Sealed(i)
        self.var(i).edges.append(Claim(param, int(axis), Role.parse(role), span, repeat))

    def resolve(self, segs) -> tuple:
        """Segments with every split candidate replaced by its pieces."""
        out = []
        for var, n in segs:
            r = None if var is None else self.find(var)
            if r is not None and r in self.refined:
                out += self.resolve(self.refined[r])
            else:
                out.append((r, n))
        return tuple(out)

    def refine(self, i: int, sizes) -> list[int]:
        """Split candidate ``i`` into consecutive pieces of ``sizes`` (a block-diagonal map of the
        same class is an element of the class, so the pieces keep its classes — a head-structured
        class the whole heads each piece holds: :func:`piece_classes`); its edges become slices of
        the pieces."""
        r = self.find(i)
        v = self.vars[r]
        if v.sealed or v.head_group is not None:
            raise Sealed(i)
        pieces, pos = [], 0
        for n in sizes:
            j = self.new(n, v.hint, piece_classes(v.classes, v.size, pos, n))
            pj = self.vars[j]
            pj.activations, pj.dead = list(v.activations), v.dead
            for p, axis, role, span, repeat in v.edges:
                start = 0 if span is None else span[0]
                count, block = repeat or (1, 1)
                if pos % block or n % block:  # the piece's copies interleave with the others'
                    pj.edges.append(Claim(p, axis, role, span, repeat))
                    pj.dead = pj.dead or "split inside the blocks of a repeated edge"
                    continue
                pj.edges.append(Claim(p, axis, role, (start + pos * count, start + (pos + n) * count), repeat))
            pieces.append((j, n))
            pos += n
        v.edges, v.dead = [], v.dead or "split into pieces"
        self.refined[r] = pieces
        return [j for j, _ in pieces]
