"""Hugging Face models through extraction: :func:`from_hf`.

``transformers`` models cannot be traced by torch.fx (their ``forward`` hides its signature behind
decorators, builds masks with ``vmap`` and returns cache objects), and transformers 5.x no longer
ships its own fx tracer. :func:`from_hf` records the model with ``torch.export`` (non-strict, in
eval mode, without the key/value cache) and walks the resulting ATen graph with the extraction
rules of :func:`architectures.from_module` — ATen operators follow the rules of their torch-level
equivalents (:mod:`architectures.extract.aten`). The result is a ``WeightGraph`` on the model's own
state-dict names, with the same guarantees: an op extraction cannot reason about raises
:class:`~architectures.ExtractionError` naming the node (or, ``unknown="fixed"``, leaves that
region without symmetry). ``transformers`` is not imported here: any ``nn.Module`` that
``torch.export`` can record works.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from architectures.extract.state import ExtractionError
from architectures.extract.walk import walk_graph
from symmetries.graph import WeightGraph

__all__ = ["from_hf", "hf_example_inputs"]


def hf_example_inputs(model: nn.Module, batch: int = 2, length: int = 8) -> tuple:
    """Example inputs for a Hugging Face model from its config: token ids ``(batch, length)`` (below
    ``vocab_size``, ``length`` capped by ``max_position_embeddings``) for text models, random
    ``pixel_values`` ``(batch, channels, size, size)`` in the model's dtype for vision models."""
    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", "input_ids")
    g = torch.Generator().manual_seed(0)
    if config is None:
        raise ExtractionError(f"{type(model).__name__} has no config to build example inputs from; pass "
                              f"example_inputs")
    if name == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        return (torch.randn(batch, getattr(config, "num_channels", 3), size, size, generator=g, dtype=dtype),)
    if name == "input_ids":
        vocab = getattr(config, "vocab_size", None)
        if vocab is None:
            raise ExtractionError(f"{type(config).__name__} has no vocab_size; pass example_inputs")
        n = min(length, getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", length))
        return (torch.randint(0, vocab, (batch, n), generator=g),)
    raise ExtractionError(f"no default example inputs for main input {name!r}; pass example_inputs")


def _kwargs(model: nn.Module) -> dict:
    """Keyword arguments that keep the recorded computation a function of the inputs: no cache."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


class _Recorder(fx.Interpreter):
    """Runs the exported graph on the example inputs and keeps every node's value."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n):
        value = super().run_node(n)
        self.values[n] = value
        return value


def from_hf(model: nn.Module, example_inputs: Any = None, *, unknown: str = "error",
            name: str | None = None) -> WeightGraph:
    """The weight graph of a Hugging Face model (``AutoModel.from_config(...)``,
    ``*ForCausalLM``, ``*ForSequenceClassification``, ``*ForImageClassification``…), or any module
    ``torch.export`` can record, on its state-dict names.

    ``example_inputs`` — a tensor or a tuple of positional inputs (``None``: from the config, see
    :func:`hf_example_inputs`); the graph is specialised to their shapes. ``unknown`` as in
    :func:`architectures.from_module`. The model is recorded in eval mode without gradients and left
    as it was (training flags, parameters).
    """
    if unknown not in ("error", "fixed"):
        raise ValueError(f"unknown must be 'error' or 'fixed', got {unknown!r}")
    if example_inputs is None:
        example_inputs = hf_example_inputs(model)
    if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    inputs = tuple(example_inputs)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            try:
                ep = torch.export.export(model, inputs, _kwargs(model), strict=False)
            except Exception as exc:  # torch.export's own errors: say which model and why
                raise ExtractionError(f"torch.export could not record {type(model).__name__} "
                                      f"({type(exc).__name__}: {str(exc)[:500]})") from exc
            gm = ep.module()
            for node in list(gm.graph.nodes):  # export's input guards: checks, no computation
                if node.op == "call_module" and str(node.target).startswith("_guards_fn") and not node.users:
                    gm.graph.erase_node(node)
            recorder = _Recorder(gm)
            flat = torch.utils._pytree.tree_leaves((inputs, _kwargs(model)))
            placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
            if len(flat) != len(placeholders):
                raise ExtractionError(f"the exported graph of {type(model).__name__} takes {len(placeholders)} "
                                      f"inputs, the example inputs give {len(flat)}")
            recorder.run(*flat)
    finally:
        for m, training in modes.items():
            m.training = training
    _check_names(model, gm.graph)
    try:
        return walk_graph(model, gm.graph, recorder.values, unknown=unknown, name=name or type(model).__name__)
    except ExtractionError as err:
        if type(model).__name__.startswith(_ROTARY_FAMILIES):
            raise ExtractionError(f"{err} [{type(model).__name__}: architectures.hf_llama(model.config) declares the "
                                  f"full graph of this family (grouped-query attention included), or pass "
                                  f"unknown='fixed' to leave the region without symmetry]", node=err.node) from err
        raise


#: Model families whose graph ``architectures.hf_llama`` declares (named in a refusal).
_ROTARY_FAMILIES = ("Llama", "Mistral", "Qwen2")


def _check_names(model: nn.Module, graph: fx.Graph) -> None:
    """Every tensor the exported graph reads must be one of the model's (a state-dict key or a
    non-persistent buffer), so that no state-dict tensor is read under another name."""
    known = set(model.state_dict()) | {n for n, _ in model.named_buffers()}
    for node in graph.nodes:
        if node.op == "get_attr" and isinstance(getattr_path(model, node.target), (nn.Parameter,)) \
                and node.target not in known:
            raise ExtractionError(f"the exported graph reads parameter {node.target!r}, which is not a state-dict "
                                  f"key of {type(model).__name__}", node=node.name)


def getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
