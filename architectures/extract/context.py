"""The context a rule of :func:`architectures.from_module` receives: the traced module, each node's
example value, and the helpers that create, join, restrict and fix candidate spaces.

What each fx value carries is one of :class:`Feat` (a tensor and the candidate spaces of its
feature dimension), :class:`ParamRef` (a state-dict tensor) or :class:`HeadOnly` (attention
scores, indexed by heads), or a plain Python value.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from architectures.extract.derived import Derivation, derivation
from architectures.extract.state import ExtractionError, Feat, HeadOnly, ParamRef, Stacked, State

__all__ = ["Context"]


class Context:
    """What a rule is given: the traced module, every node's example value, and the candidate spaces.

    ``root`` is the module; ``value(node)``/``shape(node)`` the node's value on the example inputs;
    ``param(module, attr)`` a state-dict name; ``elementwise`` and ``per_feature`` the two common
    rules; ``opaque`` the refusal; ``state`` (:class:`~architectures.extract.state.State`) the
    union-find of candidate spaces, for rules that create or join spaces.
    """

    def __init__(self, root: nn.Module, values: dict, unknown: str):
        self.root, self.values, self.unknown = root, values, unknown
        self.state = State()
        self.info: dict[fx.Node, Any] = {}
        self.tensors = dict(root.state_dict(keep_vars=True))
        by_id = defaultdict(list)
        for k, t in self.tensors.items():
            by_id[id(t)].append(k)
        self.aliases = {k: ks for ks in by_id.values() for k in ks}
        self.derived: dict[str, Derivation] = {}

    def value(self, node: fx.Node):
        """The value of fx node ``node`` on the example inputs."""
        return self.values[node]

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        """The shape of ``node``'s (tensor) value on the example inputs."""
        return tuple(self.values[node].shape)

    def param(self, module: str, attr: str, present: Any = True) -> str | None:
        """The state-dict name of ``module``'s tensor ``attr`` (``module`` a submodule path, ``node.target``
        of a ``call_module`` node); ``None`` when ``present`` is ``None``/``False`` (an absent bias)
        or the module has no such tensor. A tensor computed from state-dict tensors (weight or
        spectral norm, pruning, any parametrization) keeps its module name: edges on it are carried
        over to its sources when the graph is built, with the classes that keep that exact (see
        :mod:`architectures.extract.derived`), and a space it meets otherwise keeps no symmetry."""
        if present is None or present is False:
            return None
        name = f"{module}.{attr}" if module else attr
        if name in self.tensors:
            return name
        d = self.derived.get(name) or derivation(self.root, self.tensors, module, attr)
        if d is None:
            return None
        self.derived[name] = d
        return name

    def poison(self, names, node: fx.Node) -> None:
        """The tensors ``names`` are used where no symmetry is known: every space they index is fixed."""
        for n in names:
            if n is not None:
                self.state.poisoned.setdefault(n, node.name)
                self.state.touched.append(n)

    def join(self, node, a, b) -> None:
        """``a`` and ``b`` must index one space: union their segments, or kill them if one is fixed."""
        a_sp, b_sp = isinstance(a, Feat) and a.spaced(), isinstance(b, Feat) and b.spaced()
        if not a_sp and not b_sp:
            return
        if a_sp and b_sp and [n for _, n in a.segs] == [n for _, n in b.segs]:
            for (va, _), (vb, _) in zip(a.segs, b.segs):
                if va is None or vb is None:
                    self.state.kill(va if vb is None else vb, f"joined with fixed features at fx node {node.name!r}")
                else:
                    self.state.union(va, vb, node.name)
            return
        if a_sp and b_sp:
            self.opaque(node, "joins feature dimensions split into different pieces")
            return
        for t in (a, b):
            if isinstance(t, Feat):
                for v, _ in t.segs:
                    self.state.kill(v, f"joined with fixed features at fx node {node.name!r}")

    def attach(self, node, x: Feat, p: ParamRef, D: int, N: int) -> None:
        """Parameter ``p`` follows the features of ``x`` (a bias, a gain, a class token): role ``out``."""
        d = D - (N - len(p.shape))
        axis, cut = p.axes[d], p.span(d)
        pos = 0 if cut is None else cut[0]
        for var, n in x.segs:
            if var is None:
                self.poison([p.name], node)
            self.state.connect(var, p.name, axis, "out", None if len(x.segs) == 1 and cut is None else (pos, pos + n))
            pos += n
        self.state.touched.append(p.name)

    def opaque(self, node: fx.Node, why: str, own: bool = False):
        """An op no rule can reason about, for reason ``why``: harmless if nothing spaced flows in; else
        an :class:`ExtractionError` naming the node, or (``unknown="fixed"``) a fixed region. Returns
        what the node then carries. ``own``: look at what the node itself carries instead of its inputs."""
        vars_, params = self.carried(self.info.get(node) if own else
                                     fx.node.map_arg((node.args, node.kwargs), lambda n: self.info.get(n)))
        if node.op == "call_module" and not own:
            prefix = f"{node.target}."
            params += [k for k in self.tensors if k.startswith(prefix)]
        if vars_ and self.unknown == "error":
            spaces = ", ".join(sorted({repr(self.state.var(v).hint) for v in vars_}))
            raise ExtractionError(
                f"from_module cannot reason about fx node {node.name!r} ({node.op} {_target(node, self.root)}): "
                f"{why}; it receives features of space(s) {spaces}. Pass unknown='fixed' to leave that region "
                f"without symmetry.", node=node.name)
        for v in vars_:
            self.state.kill(v, f"fixed region at fx node {node.name!r}")
        self.poison(params, node)
        return self.info.get(node) if own else self._plain(self.values.get(node))

    def carried(self, obj) -> tuple[list[int], list[str]]:
        """The live candidate spaces and the state-dict tensors that ``obj`` (what values carry, in
        tuples, lists and dicts) holds."""
        vars_, params = [], []

        def collect(a):
            if isinstance(a, Feat):
                vars_.extend(v for v, _ in self.state.resolve(a.segs) if v is not None and not self.state.var(v).dead)
            elif isinstance(a, HeadOnly):
                vars_.append(a.var)
            elif isinstance(a, ParamRef):
                params.append(a.name)
            elif isinstance(a, Stacked):
                collect(a.items)
            elif isinstance(a, (tuple, list)):
                for b in a:
                    collect(b)
            elif isinstance(a, dict):
                for b in a.values():
                    collect(b)
        collect(obj)
        return vars_, params

    def _plain(self, value):
        if isinstance(value, torch.Tensor):
            return Feat(tuple(value.shape))
        if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
            return tuple(self._plain(v) for v in value)
        return value

    # -- the two common rules -------------------------------------------------------------------------
    def elementwise(self, node: fx.Node, x, name: str, classes):
        """``f`` applied unit by unit to ``x``: its spaces keep only ``classes`` (the classes exact across
        ``f``, met in the class lattice) and record the activation ``name``."""
        if not isinstance(x, Feat):
            return self.opaque(node, f"{name} of something that is not a tensor")
        for var, _ in x.segs:
            self.state.restrict(var, classes, name)
        return x.moved(self.shape(node), x.dim)

    def follow(self, x: Feat, tensors, axis: int = 0) -> None:
        """Tensors ``[(name, role)]`` index ``x``'s features on their ``axis``, segment by segment (a
        split feature dimension gives each piece a slice, a flatten's repeated features a repeated
        edge: :meth:`Feat.pieces`); ``None`` names are skipped. Features of no
        space pin the axis (no space may transform it)."""
        for var, span, repeat in x.pieces():
            for name, role in tensors:
                if name is not None:
                    self.state.connect(var, name, axis, role, span, repeat)

    def per_feature(self, node: fx.Node, x, tensors, classes, *, what: str = "this op", dim: int | None = None):
        """An op acting feature by feature on ``x`` with per-feature tensors ``[(name, role)]`` (axis 0
        follows the features; ``None`` names skipped) that commutes with ``classes``: those tensors join
        ``x``'s spaces and the spaces keep only ``classes``. ``dim``: the dimension the features must
        be on (negative counts from the end), or ``None``. Unspaced input fixes the tensors."""
        if not isinstance(x, Feat):
            return self.opaque(node, f"{what} of something that is not a tensor")
        if not x.spaced():
            self.poison([t for t, _ in tensors if t is not None], node)
            return Feat(self.shape(node))
        if dim is not None and x.dim != dim % x.ndim:
            return self.opaque(node, f"{what} over dimensions other than the features (dimension {x.dim})")
        self.follow(x, tensors)
        for var, _ in x.segs:
            self.state.restrict(var, classes)
        return x.moved(self.shape(node), x.dim)


def _target(node, root) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(root.get_submodule(node.target)).__name__})"
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__qualname__", getattr(t, "__name__", repr(t)))
