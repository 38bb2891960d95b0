"""Tracing with concrete values: torch.fx symbolic tracing that also runs every op on the example inputs.

``trace(module, example_inputs)`` returns the fx graph module and the value of every node.
Because each proxy knows its value, ``x.dim()``, ``x.shape``, ``len(x)`` and ``if`` on a traced
tensor are answered from the example inputs (the graph is specialised to their shapes, as
shape propagation would be) instead of failing as plain symbolic tracing does.
"""
from __future__ import annotations

import contextlib
import inspect
import operator
from unittest import mock
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from architectures.extract.rules import keeps_whole, plain_functions, resolve_pending, traced_into
from architectures.extract.state import ExtractionError

__all__ = ["trace"]

# Real ops must run with fx's patches of nn.Module.__call__/__getattr__ reverted.
_untraced = getattr(fx._symbolic_trace, "_maybe_revert_all_patches", contextlib.nullcontext)


class _Proxy(fx.Proxy):
    """An fx proxy that answers shape queries and control flow from its concrete value."""

    def __getattr__(self, k: str):
        if k.startswith("__") and k.endswith("__"):  # protocol probes (__array__, …): not tensor attributes
            raise AttributeError(k)
        return super().__getattr__(k)

    def __array__(self, dtype=None, copy=None):
        """Conversion to a constant (``torch.as_tensor``, numpy): recorded, so that the walk refuses
        it when the value carries a space (its dependence on the weights would be lost)."""
        self.tracer.materialized.add(self.node)
        value = self._value()
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return value if dtype is None else value.astype(dtype)

    def _value(self):
        return self.tracer.values[self.node]

    def __bool__(self) -> bool:
        return bool(self._value())

    def __len__(self) -> int:
        return len(self._value())

    def __iter__(self):
        return iter([self[i] for i in range(len(self._value()))])

    def __index__(self) -> int:
        return operator.index(self._value())

    def __int__(self) -> int:
        return int(self._value())

    def dim(self) -> int:
        return self._value().dim()

    def size(self, dim: int | None = None):
        v = self._value()
        return v.size() if dim is None else v.size(dim)

    @property
    def shape(self):
        return self._value().shape

    @property
    def ndim(self) -> int:
        return self._value().dim()

    @property
    def dtype(self):
        return self._value().dtype

    @property
    def device(self):
        return self._value().device

    def is_floating_point(self) -> bool:
        return self._value().is_floating_point()


def _traced_constructor(fn):
    """``torch.as_tensor`` of a traced value: an fx node (it does not dispatch ``__torch_function__``)."""
    def wrapper(data, *args, **kwargs):
        if isinstance(data, _Proxy):
            return data.tracer.create_proxy("call_function", fn, (data, *args), kwargs)
        return fn(data, *args, **kwargs)
    return wrapper


class _Tracer(fx.Tracer):
    def __init__(self, inputs: tuple):
        super().__init__(autowrap_functions=plain_functions())
        self.inputs = list(inputs)
        self.values: dict[fx.Node, Any] = {}
        self._placeholders = 0
        self.materialized: set[fx.Node] = set()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """fx's leaves (``torch.nn`` modules), and every module whose own class has an extraction rule —
        except those whose rule is ``TRACE`` (traced into)."""
        if traced_into(m):
            return False
        return keeps_whole(m) or super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        """``if`` on a traced value that is not a :class:`_Proxy` (an attribute such as ``x.is_nested``):
        answered from its value, as :meth:`_Proxy.__bool__` does."""
        return bool(self._value_of(obj.node))

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = p.node
        if kind == "output":
            return p
        try:
            with _untraced():
                self.values[node] = self._run(node)
        except ExtractionError:
            raise
        except Exception as exc:  # the op failed on the example inputs: say where
            raise ExtractionError(f"running fx node {node.name!r} ({node.op} {_target_name(node)}) on the example "
                                  f"inputs failed: {exc}", node=node.name) from exc
        return p

    def _value_of(self, node: fx.Node):
        if node not in self.values:  # a constant fx stored as an attribute (create_arg of a tensor)
            self.values[node] = self._run(node)
        return self.values[node]

    def _run(self, node: fx.Node):
        if node.op == "placeholder":
            if self._placeholders >= len(self.inputs) and node.args:  # an argument left at its default
                self._placeholders += 1
                return node.args[0]
            if self._placeholders >= len(self.inputs) and str(node.target).startswith("*"):  # *args, **kwargs
                self._placeholders += 1
                return {} if str(node.target).startswith("**") else ()
            if self._placeholders >= len(self.inputs):
                raise ExtractionError(f"the module takes more inputs than the {len(self.inputs)} example inputs "
                                      f"given (placeholder {node.name!r})", node=node.name)
            value = self.inputs[self._placeholders]
            self._placeholders += 1
            return value
        if node.op == "get_attr":
            obj: Any = self.root
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        args = fx.node.map_arg(node.args, self._value_of)
        kwargs = fx.node.map_arg(node.kwargs, self._value_of)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            # called, not .forward: forward pre-hooks recompute derived tensors (pruning, legacy weight norm)
            return self.root.get_submodule(node.target)(*args, **kwargs)
        raise ExtractionError(f"unexpected fx node kind {node.op!r} ({node.name!r})", node=node.name)


def _defaults(module: nn.Module, given: int) -> dict | None:
    """Arguments of ``forward`` beyond the example inputs keep their default values (so that
    ``if mask is not None`` follows the default instead of seeing a proxy)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    rest = [p for p in params[given:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {p.name: p.default for p in rest if p.default is not p.empty} or None


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def _untraceable(module: nn.Module, exc: Exception) -> ExtractionError:
    """The error for a module torch.fx cannot trace: why, and what to use instead."""
    cls = type(module)
    if cls.__module__.startswith("transformers."):
        instead = ("for a Hugging Face model, architectures.from_hf(model) extracts the graph through torch.export "
                   "(architectures.hf_gpt2 / hf_llama declare GPT-2's and Llama's by hand)")
    else:
        instead = ("declare it with a builder that knows it (architectures.mlp, vgg, resnet, gpt2, vit, gcn, "
                   "hf_gpt2), by hand as a WeightGraph, or pass a wrapper nn.Module whose forward torch.fx can trace")
    return ExtractionError(f"torch.fx could not trace {cls.__name__} ({type(exc).__name__}: {exc}); from_module "
                           f"needs a forward that torch.fx can trace symbolically (among others, a signature fx "
                           f"can read, not one a decorator hides behind *args/**kwargs); {instead}")


def trace(module: nn.Module, example_inputs) -> tuple[fx.Graph, dict, set]:
    """Trace ``module`` on ``example_inputs`` (a tensor or a tuple) in eval mode and without
    gradients; the module's training flags, parameters and buffers are left as they were.
    Returns the fx graph, each node's value, and the nodes converted to constants."""
    if isinstance(example_inputs, (torch.Tensor,)) or not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    inputs = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs)
    resolve_pending()  # rules registered by the qualified name of a package imported since
    modes = {m: m.training for m in module.modules()}
    before = set(vars(module))
    tracer = _Tracer(inputs)
    try:
        module.eval()
        with torch.no_grad(), mock.patch.object(torch, "as_tensor", _traced_constructor(torch.as_tensor)), \
                mock.patch.object(torch, "asarray", _traced_constructor(torch.asarray)):
            graph = tracer.trace(module, concrete_args=_defaults(module, len(inputs)))
    except ExtractionError:
        raise
    except Exception as exc:  # fx's TraceError, or any failure of fx or of forward on the proxies
        raise _untraceable(module, exc) from exc
    finally:
        for m, training in modes.items():
            m.training = training
        for k in set(vars(module)) - before:  # constants fx stored on the root while tracing
            delattr(module, k)
    return graph, tracer.values, tracer.materialized
