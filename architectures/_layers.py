"""Graph fragments shared by the convolutional builders (CNN/VGG, ResNet).

* ``connect_conv`` — a conv weight ``(out, in, kh, kw)``: axis 0 produces the output space
  (``W ← T W``), axis 1 consumes the input space (``W ← W T⁻¹``).
* ``add_batchnorm`` — BatchNorm ``y = γ (z − μ)/√(v + ε) + β``: ``γ, β, μ`` follow the channel
  in role ``out``, ``v`` in role ``var``; ``num_batches_tracked`` is fixed.
* ``BATCHNORM_CLASSES`` / ``MAXPOOL_CLASSES`` — what survives BatchNorm and max pooling.

Why BatchNorm admits permutations only (standard roles, eval mode): a channel map ``T = D P``
acts on ``z, μ`` by ``d``, on ``v`` by ``d²`` and on ``γ, β`` by ``d``, so
``y' = d γ (d z − d μ)/√(d² v + ε) + d β``. Only ``d = 1`` gives ``y' = y`` when ``ε > 0``:
``√(d² v + ε) ≠ d √(v + ε)`` breaks positive scalings and semi-permutation splits (the
identity would hold for ``ε = 0``), and ``d = −1`` maps ``y`` to ``γ(z − μ)/s − β ≠ −y``.
"""
from __future__ import annotations

from symmetries.classes import Permutation, PermutationScaling, SemiPermutation, SymmetryClass
from symmetries.lattice import is_subclass, meet

from symmetries.graph import WeightGraph

__all__ = ["connect_conv", "add_batchnorm", "BATCHNORM_CLASSES", "MAXPOOL_CLASSES", "restrict",
           "BATCHNORM_REASON", "MAXPOOL_REASON"]

#: BatchNorm with ε > 0 between a conv and the next layer: permutations only.
BATCHNORM_CLASSES: tuple[SymmetryClass, ...] = (Permutation(),)
BATCHNORM_REASON = "BatchNorm: √(d²v + ε) ≠ d√(v + ε) for ε > 0, so only d = 1 (permutations) is exact"

#: Max pooling commutes with positive monomial maps and positive splits only
#: (``max(c x) = c max(x)`` for ``c > 0``), not with sign flips or mixing maps.
MAXPOOL_CLASSES: tuple[SymmetryClass, ...] = (PermutationScaling(), SemiPermutation())
MAXPOOL_REASON = "max pooling commutes with positive monomial maps and positive splits only"


def restrict(classes, allowed) -> tuple[SymmetryClass, ...]:
    """The maximal classes contained both in one of ``classes`` and in one of ``allowed``."""
    found: list[SymmetryClass] = []
    for a in classes:
        for b in allowed:
            c = meet([a, b])
            if c not in found:
                found.append(c)
    return tuple(c for c in found if not any(c != d and is_subclass(c, d) for d in found))


def connect_conv(g: WeightGraph, name: str, out_space: str | None, in_space: str | None) -> None:
    """Connect conv weight ``name`` (and its bias, if declared) to its output and input spaces."""
    if out_space is not None:
        g.connect(f"{name}.weight", out_space, axis=0, role="out")
        if f"{name}.bias" in g:
            g.connect(f"{name}.bias", out_space, axis=0, role="out")
    if in_space is not None:
        g.connect(f"{name}.weight", in_space, axis=1, role="in")


def add_batchnorm(g: WeightGraph, name: str, channels: int, space: str | None) -> None:
    """Declare BatchNorm ``name``'s five tensors and tie them to ``space`` (``None``: all fixed)."""
    for key in ("weight", "bias", "running_mean", "running_var"):
        g.add_parameter(f"{name}.{key}", (channels,), fixed=space is None)
    g.add_parameter(f"{name}.num_batches_tracked", (), fixed=True)
    if space is not None:
        for key in ("weight", "bias", "running_mean"):
            g.connect(f"{name}.{key}", space, axis=0, role="out")
        g.connect(f"{name}.running_var", space, axis=0, role="var")
