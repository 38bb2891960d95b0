"""Extraction: the weight graph of a ``torch.nn.Module``, by torch.fx tracing.

``from_module(module, example_inputs)`` traces the module (fx symbolic tracing, every op also run
on the example inputs so shapes are known), walks the fx graph and builds a ``WeightGraph``:

* a parameterised op (Linear, Conv1d/2d, Embedding, ``nn.MultiheadAttention``, ``x @ W``) creates
  a candidate space on its output units (weight axis 0 / embedding axis 1 and bias: ``out``) and
  consumes its input's space (weight axis 1: ``in``);
* BatchNorm (eval mode; ``running_var`` role ``var``), LayerNorm and RMSNorm carry the space
  through; elementwise activations restrict it to the classes the activation registry says are
  exact; residual adds join spaces (union-find);
* a space's classes are the meet, in the class lattice, of what every op touching it allows; a
  space reaching the model's input or output, or mixed with fixed values, gets no space at all,
  and a tensor left with no space is declared fixed.

An op with no rule raises :class:`ExtractionError` naming the fx node, or with
``unknown="fixed"`` makes every space entering it (and every tensor it uses) fixed — never a
silently wrong space.
"""
from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from symmetries.classes import Orthogonal, Trivial
from symmetries.roles import Role

from architectures.extract import functional as _functional  # noqa: F401  (registers the built-in rules)
from architectures.extract import identity_rules as _identity_rules  # noqa: F401  (registers them)
from architectures.extract import recurrent as _recurrent  # noqa: F401  (registers them)
from architectures.extract import attention_modules as _attention_modules  # noqa: F401  (registers them)
from architectures.extract.aten import equivalent
from architectures.extract.binary import BINARY_FUNCTIONS, BINARY_METHODS
from architectures.extract.context import Context
from architectures.extract.heads import HEAD_FUNCTIONS, HEAD_METHODS
from architectures.extract.repeat import copies_aware, has_copies, has_repeats, repeat_aware
from architectures.extract.rotary import HALF_OPS
from architectures.extract.rules import resolve_pending, rule_for
from architectures.extract.stacked import stack_aware
from architectures.extract.state import ExtractionError, Feat, HeadOnly, ParamRef, Sealed, Stacked, meet_sets
from architectures.extract.trace import trace
from symmetries.graph import WeightGraph

__all__ = ["from_module", "walk_graph", "ExtractionError"]


def from_module(module: nn.Module, example_inputs: Any, *, unknown: str = "error",
                name: str | None = None) -> WeightGraph:
    """The weight graph of ``module`` (state-dict keys become parameter names).

    ``example_inputs`` — a tensor or a tuple of positional inputs (shapes fix reshapes).
    ``unknown`` — ``"error"`` (default): an op with no rule whose inputs carry a space raises
    :class:`ExtractionError` naming the fx node; ``"fixed"``: such a region gets no symmetry.
    The module is not modified (it is traced in eval mode, without gradients).
    """
    if unknown not in ("error", "fixed"):
        raise ValueError(f"unknown must be 'error' or 'fixed', got {unknown!r}")
    graph, values, materialized = trace(module, example_inputs)
    return walk_graph(module, graph, values, unknown=unknown, name=name, materialized=materialized)


def walk_graph(module: nn.Module, graph: fx.Graph, values: dict, *, unknown: str = "error", name: str | None = None,
               materialized=()) -> WeightGraph:
    """The weight graph of ``module`` from an fx ``graph`` of its computation (fx tracing, or
    ``torch.export``'s ATen graph) and the value of every node on example inputs. ``get_attr``
    nodes whose target is a state-dict key of ``module`` are its tensors."""
    if unknown not in ("error", "fixed"):
        raise ValueError(f"unknown must be 'error' or 'fixed', got {unknown!r}")
    resolve_pending()
    ctx = _Walk(module, values, unknown)
    for node in graph.nodes:
        ctx.visit(node)
        if node in materialized:
            ctx.opaque(node, "its value was converted to a constant while tracing (torch.as_tensor, numpy)",
                       own=True)
    return ctx.build(name or type(module).__name__)


class _Walk(Context):
    """The walk over the fx graph: what each node carries, and the candidate spaces."""

    # -- the walk ---------------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        if node.op == "output":
            self._kill_outputs(self.info.get(a) if isinstance(a, fx.Node) else a
                               for a in fx.node.map_arg(node.args, lambda n: n)[0:1])
            return
        if node.op == "placeholder":
            self.info[node] = self._plain(self.values[node])
            return
        if node.op == "get_attr":
            value = self.values[node]
            if node.target in self.tensors and isinstance(value, torch.Tensor):
                self.info[node] = ParamRef(node.target, tuple(value.shape), tuple(range(value.dim())))
            else:
                self.info[node] = self._plain(value)
            return
        args = fx.node.map_arg(node.args, lambda n: self._fresh(self.info[n]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self._fresh(self.info[n]))
        element = node.target is operator.getitem and isinstance(args[0], (tuple, list))
        if _has_halves((args, kwargs)) and not _half_op(node):
            self.info[node] = self.opaque(node, "a half of each head's features (rotate_half's x[..., :d/2] or "
                                                "x[..., d/2:]) used other than negated and concatenated back")
            return
        if has_repeats((args, kwargs)) and not (element or repeat_aware(node, self.root)):
            self.info[node] = self.opaque(node, "an op on a flatten's features (a channel space repeated over "
                                                "positions) other than a linear map, an activation or dropout")
            return
        if has_copies((args, kwargs)) and not (element or copies_aware(node)):
            self.info[node] = self.opaque(node, "an op on key/value heads repeated for grouped queries "
                                                "(repeat_kv) other than moving dimensions, merging the copies "
                                                "and attention")
            return
        if _has_heads((args, kwargs)) and not (element or _head_aware(node, self.root)):
            self.info[node] = self.opaque(node, "an op on features split into attention heads")
            return
        if _has_stacked((args, kwargs)) and not (element or stack_aware(node)):
            self.info[node] = self.opaque(node, "an op on a stack of separately described tensors (fused q/k/v "
                                                "reshaped together, or a recurrent layer's final states)")
            return
        module = self.root.get_submodule(node.target) if node.op == "call_module" else None
        rule = rule_for(node.target if module is None else module)
        mark = len(self.state.touched)
        try:
            if rule is None:
                result = NotImplemented
            elif module is not None:
                result = rule(self, node, module, *args, **kwargs)
            else:
                result = rule(self, node, *args, **kwargs)
        except Sealed:
            result = self.opaque(node, "it splits, joins or reuses features tied as attention heads (query/key "
                                       "features after their pairing in scores) or as channel groups")
        if result is NotImplemented:
            result = self.opaque(node, "no rule for this op")
        self.info[node] = self._described(node, module, (args, kwargs), result, mark)

    def _described(self, node: fx.Node, module, args, result, mark: int):
        """No tensor is skipped: every state-dict tensor the node reads — a parameter among its
        arguments and, for a module, the module's own tensors — must have been connected, fixed
        (poisoned) or passed on by the rule. Otherwise the rule did not describe it: an
        :class:`ExtractionError` naming the node and the tensors, or (``unknown="fixed"``) every
        space the node meets keeps no symmetry."""
        if not _holds_tensor(self.values.get(node)):
            return result
        required = set(self.carried(args)[1])
        if module is not None:
            unread = ("num_batches_tracked",) if isinstance(module, nn.modules.batchnorm._NormBase) else ()
            required.update(k for k in self.tensors if k.startswith(f"{node.target}.") and k.rsplit(".", 1)[-1]
                            not in unread)
        touched = set(self.carried(result)[1])
        for n in self.state.touched[mark:]:
            touched.add(n)
            if n in self.derived:
                touched.update(self.derived[n].sources)
        missing = sorted(required - touched)
        if not missing:
            return result
        vars_ = self.carried(args)[0] + self.carried(result)[0]
        why = f"its rule does not describe the tensor(s) {', '.join(map(repr, missing))} it reads"
        if vars_ and self.unknown == "error":
            raise ExtractionError(f"from_module cannot reason about fx node {node.name!r}: {why}. Pass "
                                  f"unknown='fixed' to leave that region without symmetry.", node=node.name)
        for v in vars_:
            self.state.kill(v, f"fixed region at fx node {node.name!r} ({why})")
        self.poison(missing, node)
        return self._plain(self.values.get(node))

    def _fresh(self, info):
        """``info`` with split candidates replaced by their pieces."""
        if isinstance(info, Feat) and info.segs:
            return Feat(info.shape, info.dim, self.state.resolve(info.segs), info.hdim, info.half, info.rep, info.rdim)
        if isinstance(info, Stacked):
            return Stacked(info.shape, info.sdim, self._fresh(info.items))
        if isinstance(info, tuple):
            return tuple(self._fresh(i) for i in info)
        return info

    def _kill_outputs(self, items) -> None:
        for item in items:
            if isinstance(item, HeadOnly):
                self.state.kill(item.var, "reaches the model's output")
            elif isinstance(item, Feat):
                for v, _ in self.state.resolve(item.segs):
                    self.state.kill(v, "reaches the model's output")
            elif isinstance(item, ParamRef):
                self.state.poisoned.setdefault(item.name, "output")
            elif isinstance(item, Stacked):
                self._kill_outputs(item.items)
            elif isinstance(item, (tuple, list)):
                self._kill_outputs(item)
            elif isinstance(item, dict):
                self._kill_outputs(item.values())
            elif isinstance(item, fx.Node):
                self._kill_outputs([self.info.get(item)])

    # -- assembling the weight graph ---------------------------------------------------------------------
    def _sources(self, edges):
        """``edges`` with every edge on a derived tensor replaced by the edges on its sources."""
        for p, axis, role, span, repeat in edges:
            d = self.derived.get(p)
            if d is None:
                yield p, axis, role, span, repeat
            else:  # the sources share the derived tensor's layout along the axis: the same repeat
                carried = d.expand(axis, role, span)
                yield from ((*e, repeat) for e in carried[0]) if carried is not None else ()

    def _edges(self, r: int) -> list:
        """The edges of candidate ``r``, on every state-dict key of a shared tensor, without repeats."""
        return self._edges_of(self.state.vars[r].edges)

    def _edges_of(self, raw) -> list:
        seen, es = set(), []
        for p, axis, role, span, repeat in self._sources(raw):
            for alias in self.aliases.get(p, [p]):
                key = (alias, axis % self.tensors[alias].dim(), role, span, repeat)
                if key not in seen:
                    seen.add(key)
                    es.append(key)
        return es

    def _merge_shared(self) -> None:
        """A tensor axis claimed by two candidates (a module called twice) makes them one space."""
        st = self.state
        changed = True
        while changed:
            changed, owner = False, {}
            for r in sorted({st.find(i) for i in st.vars}):
                for p, axis, _, span, _ in self._edges(r):
                    other = owner.setdefault((p, axis, span), r)
                    if st.find(other) != st.find(r):
                        try:
                            st.union(other, r, f"shared tensor {p!r}")
                        except (Sealed, ExtractionError):
                            st.kill(other, f"{p!r} is shared with an attention head space")
                            st.kill(r, f"{p!r} is shared with an attention head space")
                            continue
                        changed = True
                        break
                if changed:
                    break

    def _derived_classes(self, roots) -> None:
        """A space indexed by a derived tensor keeps the classes its carry-over to the sources is
        exact for (:meth:`Derivation.expand`), or none where there is no exact carry-over."""
        st = self.state
        for r in roots:
            v = st.vars[r]
            for p, axis, role, span, _ in v.edges:
                d = self.derived.get(p)
                carried = None if d is None else d.expand(axis, role, span)
                if d is not None and carried is None:
                    st.kill(r, f"{p!r} is {d.why}, which this space's transforms cannot be carried through")
                elif carried is not None:
                    v.classes = meet_sets(v.classes, carried[1])

    def _kill_overlaps(self, edges) -> None:
        """Two claims of overlapping but different indices of one tensor axis (``bias[:8]`` and
        ``bias[4:]``; a whole axis and a slice of it) cannot both be transformed: both spaces keep no
        symmetry. A dead space's claim counts (its indices must stay as they are), and so does a
        pinned one (indices that meet features of no space: ``State.pinned``)."""
        st = self.state
        claims = defaultdict(list)
        for r, es in [*edges.items(), (None, self._edges_of(st.pinned))]:
            for p, axis, _, span, _ in es:
                n = self.tensors[p].shape[axis]
                claims[(p, axis)].append((r, span or (0, n)))
        for (p, axis), cl in claims.items():
            for i, (r1, (a1, b1)) in enumerate(cl):
                for r2, (a2, b2) in cl[i + 1:]:
                    if a1 < b2 and a2 < b1 and (r1, a1, b1) != (r2, a2, b2):  # same space, same indices: a tie
                        for r in (r1, r2):
                            if r is not None:
                                st.kill(r, f"indices {a1}:{b1} and {a2}:{b2} of axis {axis} of {p!r} are claimed by "
                                           f"different spaces, or read from features of no space")

    def build(self, name: str) -> WeightGraph:
        st = self.state
        self._merge_shared()
        roots = {st.find(i) for i in st.vars}
        self._derived_classes(roots)
        edges = {r: self._edges(r) for r in roots}
        self._kill_overlaps(edges)
        poisoned = set()
        for p in st.poisoned:
            for q in (self.derived[p].sources if p in self.derived else (p,)):
                poisoned.update(self.aliases.get(q, [q]))
        for r in roots:
            if any(p in poisoned for p, *_ in edges[r]):
                st.kill(r, "one of its tensors is used where no symmetry is known")
        groups = defaultdict(list)
        for r in roots:
            if st.vars[r].head_group is not None:
                groups[st.vars[r].head_group].append(r)
        for members in groups.values():  # one head permutation: a dead member freezes the group
            if any(st.vars[r].dead or all(c == Trivial() for c in st.vars[r].classes) for r in members):
                for r in members:
                    st.kill(r, "another space of its head group has no symmetry")
        g = WeightGraph(name)
        alive = []
        for r in sorted(roots):
            v = st.vars[r]
            classes = v.classes
            claims = defaultdict(set)
            for p, axis, role, span, repeat in edges[r]:
                claims[(p, axis, span, repeat)].add(role)
            if any({Role.OUT, Role.IN} <= roles for roles in claims.values()):
                classes = _tied(classes)
            classes = tuple(c for c in classes if c != Trivial())
            if v.dead is None and classes and edges[r]:
                alive.append((r, classes))
        connected = {p for r, _ in alive for p, *_ in edges[r]}
        for pname, t in self.tensors.items():
            g.add_parameter(pname, tuple(t.shape), fixed=pname not in connected)
        used = set(self.tensors)
        for r, classes in alive:
            v = st.vars[r]
            sname = v.hint or "space"
            while sname in used:
                sname += "'"
            used.add(sname)
            g.add_space(sname, v.size, classes, activation="+".join(v.activations) or None,
                        head_group=v.head_group)
            for p, axis, role, span, repeat in edges[r]:
                g.connect(p, sname, axis=axis, role=role, slice=span, repeat=repeat)
        g.validate()
        return g


_HEAD_AWARE = {*BINARY_FUNCTIONS, *HEAD_FUNCTIONS, operator.getitem, torch.cat, torch.concat, torch.softmax, torch.nn.functional.softmax, torch.transpose,
               torch.permute, torch.reshape, torch.flatten, torch.unsqueeze, torch.nn.functional.dropout}
_HEAD_AWARE_METHODS = {*BINARY_METHODS, *HEAD_METHODS, "softmax", "view", "reshape", "transpose", "permute",
                       "contiguous", "flatten", "to", "float", "double", "type_as", "unsqueeze", "expand"}


def _has_halves(args) -> bool:
    found = []
    fx.node.map_aggregate(args, lambda a: found.append(a) if isinstance(a, Feat) and a.half is not None else None)
    return bool(found)


def _half_op(node) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    try:
        return (equivalent(node.target) if node.op == "call_function" else node.target) in HALF_OPS
    except TypeError:
        return False


def _has_heads(args) -> bool:
    found = []
    fx.node.map_aggregate(args, lambda a: found.append(a) if isinstance(a, HeadOnly) or (
        isinstance(a, Feat) and a.hdim is not None) else None)
    return bool(found)


def _has_stacked(args) -> bool:
    found = []
    fx.node.map_aggregate(args, lambda a: found.append(a) if isinstance(a, Stacked) else None)
    return bool(found)


def _head_aware(node, root) -> bool:
    if node.op == "call_module":  # dropout (identity in eval mode) on attention weights or heads
        return isinstance(root.get_submodule(node.target), (nn.Dropout, nn.Identity))
    if node.op == "call_method":
        return node.target in _HEAD_AWARE_METHODS
    if node.op == "call_function":
        target = equivalent(node.target)  # an ATen operator acts like its torch-level equivalent
        if isinstance(target, str):
            return target in _HEAD_AWARE_METHODS
        try:
            return target in _HEAD_AWARE
        except TypeError:
            return False
    return False


def _holds_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _tied(classes):
    """Tied axes (``out`` and ``in`` of one space) need ``T⁻ᵀ = T``."""
    return meet_sets(tuple(classes), (Orthogonal(),))
