"""Hypothesis strategies for classes, elements, transform sets and small architectures.

Importable without pytest. Strategies compose: ``elements(classes())`` draws a class and
then an element of it; ``transform_sets(graph)`` draws one element per space from the
classes the space admits. Elements are drawn from integer seeds, so failures shrink to a
small size and a small seed that a person can replay with ``cls.random(n, seed=…)``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from hypothesis import strategies as st

from symmetries.classes import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling,
                      PositiveScaling, SemiPermutation, SignedPermutation, SignFlip, SymmetryClass, Trivial)
from symmetries.elements import Element
from symmetries.policy import resolve_classes
from symmetries.transforms import TransformSet, tie_heads

__all__ = ["GROUPS", "symmetry_classes", "elements", "random_element", "transform_sets", "seeds", "dtypes",
           "mlp_architectures", "cnn_architectures", "resnet_architectures", "gcn_architectures",
           "transformer_architectures", "architectures_", "example_inputs"]

#: The concrete group classes (semi-permutations are a monoid, drawn separately).
GROUPS: tuple[SymmetryClass, ...] = (Trivial(), Permutation(), SignFlip(), SignedPermutation(),
                                     PositiveScaling(), PermutationScaling(), Orthogonal(), Invertible())

seeds = st.integers(min_value=0, max_value=2**32 - 1)

#: Floating dtypes worth checking invariance in (float64: exact to ~1e-10, float32: round-off).
dtypes = st.sampled_from([torch.float64, torch.float32])


@st.composite
def _head_classes(draw, inner: Sequence[SymmetryClass]) -> HeadStructured:
    return HeadStructured(draw(st.integers(1, 4)), draw(st.sampled_from(list(inner))))


def symmetry_classes(*, groups_only: bool = True, heads: bool = True) -> st.SearchStrategy[SymmetryClass]:
    """Any class of the library: the concrete groups, optionally ``SemiPermutation`` and
    ``HeadStructured(H, inner)`` with a group inner class."""
    base = list(GROUPS) + ([] if groups_only else [SemiPermutation()])
    options = [st.sampled_from(base)]
    if heads:
        options.append(_head_classes(list(GROUPS)))
    return st.one_of(*options)


@st.composite
def elements(draw, cls: SymmetryClass | st.SearchStrategy[SymmetryClass], *, size: int | None = None,
             min_size: int = 1, max_size: int = 8, widen: int = 0, cond: float = 10.0,
             dtype: torch.dtype | st.SearchStrategy[torch.dtype] | None = None) -> Element:
    """An element of ``cls`` (a class or a strategy of classes) on a space of ``size`` units.

    ``widen > 0`` lets rectangular classes map to up to ``widen`` more units. ``cond`` bounds the
    condition number of invertible maps (and of scalings: ``spread = √cond``) so float32 checks
    stay meaningful. ``dtype`` (a dtype or a strategy such as :data:`dtypes`) casts the element.
    """
    if isinstance(cls, st.SearchStrategy):
        cls = draw(cls)
    heads = cls.num_heads if isinstance(cls, HeadStructured) else 1
    if size is None:
        size = heads * draw(st.integers(min_size, max_size))
    m = size
    if widen and cls.rectangular:
        m = size + heads * draw(st.integers(0, widen))
    el = random_element(cls, size, m, seed=draw(seeds), cond=cond)
    if isinstance(dtype, st.SearchStrategy):
        dtype = draw(dtype)
    return el if dtype is None else el.to(dtype=dtype)


def random_element(cls: SymmetryClass, n: int, m: int | None = None, *, seed=None, cond: float = 10.0) -> Element:
    """``cls.random(n, m, seed)`` with bounded conditioning: ``cond(A) ≤ cond`` for invertible maps,
    scalings log-uniform in ``[1/√cond, √cond]`` (so ``cond(D) ≤ cond``)."""
    m = n if m is None else m
    inner = cls.inner if isinstance(cls, HeadStructured) else cls
    if isinstance(inner, Invertible):
        opts = {"cond": cond}
    elif isinstance(inner, (PositiveScaling, PermutationScaling)):
        opts = {"spread": cond ** 0.5}
    else:
        opts = {}
    return cls.random(n, m=m if m != n else None, seed=seed, **opts)


def _class_at(draw, space, named: Mapping[str, SymmetryClass]) -> SymmetryClass:
    """The class drawn at ``space``: the one named for it, else one of the space's group classes."""
    if space.name in named:
        return named[space.name]
    return draw(st.sampled_from([c for c in space.classes if c.is_group] or [space.cls]))


@st.composite
def transform_sets(draw, graph, classes=None, *, strict: bool = True, one_space: bool = False,
                   cond: float = 10.0) -> TransformSet:
    """A transform set for ``graph``: per space, a class it admits (or the one given), drawn
    from a seed; head groups share their head permutation.

    ``classes`` — one class for every space or a mapping ``space → class`` (instances, types or
    names, read by :func:`symmetries.resolve_classes`; ``NotAdmittedError`` if ``strict`` and a
    space does not admit its class); unnamed spaces draw one of their declared group classes.
    ``one_space=True`` draws one space and one element there (the rest of its head group gets the
    same head permutation with identity per-head maps): the unit in which a failure is attributed.
    ``cond`` bounds the conditioning of every drawn map, as in :func:`random_element`.
    """
    resolved = resolve_classes(graph, classes, strict=strict) if classes is not None else {}
    named = {k: resolved[k] for k in (classes if isinstance(classes, Mapping) else resolved)}
    if one_space:
        space = graph.space(draw(st.sampled_from([s.name for s in graph.spaces()])))
        cls = _class_at(draw, space, named)
        el = random_element(cls, space.size, seed=draw(seeds), cond=cond)
        return TransformSet(tie_heads(graph, {space.name: el}))
    els = {}
    for space in graph.spaces():
        cls = _class_at(draw, space, named)
        els[space.name] = random_element(cls, space.size, seed=draw(seeds), cond=cond)
    return TransformSet(tie_heads(graph, els))


@st.composite
def mlp_architectures(draw, *, activations: Sequence[str] | None = None, max_depth: int = 3,
                      max_width: int = 12):
    """A small ``architectures.mlp`` of drawn depth, widths and activation."""
    from architectures import builder_activations, mlp
    act = draw(st.sampled_from(list(activations or builder_activations())))
    depth = draw(st.integers(1, max_depth))
    widths = draw(st.lists(st.integers(1, max_width), min_size=depth + 2, max_size=depth + 2))
    return mlp(widths, activation=act, bias=draw(st.booleans()))


@st.composite
def cnn_architectures(draw, *, activations: Sequence[str] | None = None, max_convs: int = 3,
                      max_channels: int = 8):
    """A small ``architectures.vgg``: 1–``max_convs`` 3×3 convs (optional max pools, BatchNorm and a
    hidden linear layer) on 8×8 inputs with 2 channels; by default one activation per class family
    (``architectures.representative_activations()``: relu, tanh, gelu)."""
    from architectures import representative_activations, vgg
    activations = activations or representative_activations()
    n = draw(st.integers(1, max_convs))
    cfg: list = []
    for i in range(n):
        cfg.append(draw(st.integers(1, max_channels)))
        if i < 2 and draw(st.booleans()):
            cfg.append("M")
    hidden = draw(st.lists(st.integers(1, max_channels), max_size=1))
    return vgg(cfg, in_channels=2, num_classes=3, hidden=hidden, batchnorm=draw(st.booleans()),
               activation=draw(st.sampled_from(list(activations))))


@st.composite
def resnet_architectures(draw):
    """A ResNet-8 (one block per stage) with 2–6 channels per stage on 2-channel inputs."""
    from architectures import resnet
    channels = draw(st.lists(st.integers(2, 6), min_size=1, max_size=3))
    return resnet(8, channels=channels, in_channels=2, num_classes=3)


@st.composite
def gcn_architectures(draw, *, activations: Sequence[str] | None = None, max_depth: int = 3, max_width: int = 8):
    """A small ``architectures.gcn`` of drawn depth, widths and activation."""
    from architectures import builder_activations, gcn
    act = draw(st.sampled_from(list(activations or builder_activations())))
    depth = draw(st.integers(1, max_depth))
    widths = draw(st.lists(st.integers(1, max_width), min_size=depth + 2, max_size=depth + 2))
    return gcn(widths, activation=act, bias=draw(st.booleans()))


@st.composite
def transformer_architectures(draw, *, norm: str | st.SearchStrategy[str] = "layernorm"):
    """A tiny GPT-2 or ViT (``d_model`` 8–16, 2 heads, 1–2 blocks, separate or packed QKV);
    ``norm="rms"`` gives the LayerNorm-rewritten form whose residual stream admits ``Orthogonal``."""
    from architectures import gpt2, vit
    norm = draw(norm) if isinstance(norm, st.SearchStrategy) else norm
    d = draw(st.sampled_from([8, 12, 16]))
    common = dict(n_heads=2, n_layers=draw(st.integers(1, 2)), d_mlp=draw(st.integers(4, 12)),
                  packed_qkv=draw(st.booleans()), norm=norm)
    if draw(st.sampled_from(["gpt2", "vit"])) == "gpt2":
        return gpt2(13, 6, d, tie_embeddings=draw(st.booleans()), **common)
    return vit(8, 4, 2, d, num_classes=5, **common)


def architectures_() -> st.SearchStrategy:
    """Any small architecture of the builders: MLP, VGG-style CNN, ResNet-8, GCN or transformer.
    Pair it with :func:`symmetries.testing.example_inputs` to run the module."""
    return st.one_of(mlp_architectures(), cnn_architectures(), resnet_architectures(), gcn_architectures(),
                     transformer_architectures())


def example_inputs(arch, batch: int = 4, *, seed: int = 0, dtype: torch.dtype = torch.float64, device=None,
                   **sizes):
    """Seeded inputs for an architecture: its own :meth:`architectures.Architecture.example_inputs`
    (MLP ``(batch, d_in)``, VGG/ResNet images ``(batch, C, image_size, image_size)``, GCN
    ``(features (nodes, d_in), adjacency)``, GPT-2 token ids, ViT images). An architecture without
    them raises :class:`architectures.ExampleInputsError`."""
    return arch.example_inputs(batch, seed=seed, dtype=dtype, device=device, **sizes)
