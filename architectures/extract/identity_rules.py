"""Extraction rules for ops that are the identity in inference, and ``F.batch_norm``.

* Dropout variants (``F.dropout1d/2d/3d``, ``F.alpha_dropout``, ``F.feature_alpha_dropout`` and
  their modules ``nn.Dropout3d``, ``nn.AlphaDropout``, ``nn.FeatureAlphaDropout``): the identity
  when ``training`` is false or ``p = 0`` (extraction traces in eval mode); a dropout called with
  ``training=True`` is random and is refused naming the node.
* Stochastic depth (torchvision's ``torchvision.ops.stochastic_depth`` and ``StochasticDepth``; timm's
  ``drop_path`` and ``DropPath``): a whole residual branch dropped at random in training, the
  identity in eval mode (``training`` false) or with ``p = 0``. Registered by qualified name, so
  neither package is imported here: the rules take effect once the model's own code imported it.
* ``F.batch_norm`` and ``aten.batch_norm`` in inference mode (``training=False``): per-channel on
  dimension 1; the gain, bias and running mean follow the channel (``out``), the running variance
  by squares (``var``); exact for permutations only, as ``nn.BatchNorm*``.

Every rule is registered through :func:`architectures.register_rule`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from architectures.extract.ops import PERM, _passthrough
from architectures.extract.rules import register_rule
from architectures.extract.state import ParamRef

__all__: list[str] = []


def _dropout(ctx, node, x, p=0.5, training=True, *args, **kwargs):
    """``F.*dropout*(x, p, training)``: the identity unless it is active."""
    training = kwargs.get("training", training)
    p = kwargs.get("p", p)
    if training and p:
        return ctx.opaque(node, f"a dropout that is active (p={p}, training=True): random, not a function of "
                                f"the input")
    return _passthrough(ctx, node, x)


def _module_dropout(ctx, node, mod, x, *args, **kwargs):
    """A dropout module: extraction traces in eval mode, where it is the identity."""
    return _passthrough(ctx, node, x)


for _f in (F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout):
    register_rule(_f, _dropout)
for _m in (nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
    register_rule(_m, _module_dropout)


def _stochastic_depth(ctx, node, x, p, mode="row", training=True):
    """``torchvision.ops.stochastic_depth(input, p, mode, training=True)``."""
    return _dropout(ctx, node, x, p, training)


def _drop_path(ctx, node, x, drop_prob=0.0, training=False, scale_by_keep=True):
    """timm's ``drop_path(x, drop_prob=0., training=False, scale_by_keep=True)``."""
    return _dropout(ctx, node, x, drop_prob, training)


register_rule("torchvision.ops.stochastic_depth", _stochastic_depth)
register_rule("torchvision.ops.StochasticDepth", _module_dropout)
for _package in ("timm.layers", "timm.models.layers"):  # timm ≥ 0.9, and its older home
    register_rule(f"{_package}.drop_path", _drop_path)
    register_rule(f"{_package}.DropPath", _module_dropout)


def batch_norm(ctx, node, x, weight=None, bias=None, running_mean=None, running_var=None, training=False,
               *args, **kwargs):
    """Batch normalisation with ATen's argument order ``(x, weight, bias, running_mean, running_var,
    training, …)``."""
    if training:
        return ctx.opaque(node, "batch normalisation with batch statistics (training=True)")
    tensors = []
    for t, role in ((weight, "out"), (bias, "out"), (running_mean, "out"), (running_var, "var")):
        if t is None:
            continue
        if not (isinstance(t, ParamRef) and t.axes == (0,) and t.whole):
            return ctx.opaque(node, "batch normalisation whose statistics or affine are not whole state-dict tensors")
        tensors.append((t.name, role))
    return ctx.per_feature(node, x, tensors, PERM, what="batch normalisation", dim=1)


def _f_batch_norm(ctx, node, x, running_mean, running_var, weight=None, bias=None, training=False, *a, **k):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training, …)``."""
    return batch_norm(ctx, node, x, k.get("weight", weight), k.get("bias", bias), running_mean, running_var,
                      k.get("training", training))


register_rule(F.batch_norm, _f_batch_norm)
if hasattr(torch.ops.aten, "batch_norm"):
    register_rule(torch.ops.aten.batch_norm.default, batch_norm)
