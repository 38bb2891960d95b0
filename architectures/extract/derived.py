"""Module tensors computed from state-dict tensors, for :func:`architectures.from_module`.

A rule names a module's tensor (``ctx.param(path, "weight")``). When that tensor is not a state-dict
entry it is *derived*: weight normalisation (``parametrizations.weight_norm`` and the legacy
``nn.utils.weight_norm``: ``w = g · v / ‖v‖``), spectral normalisation (``w = W / uᵀ W v`` in eval
mode, ``parametrizations.spectral_norm`` and the legacy hook), pruning (``w = orig ⊙ mask``) — or
something extraction does not know (another parametrization, a plain tensor attribute). The rule's
edges on the derived tensor are then carried over to the tensors it is computed from, and the space
keeps only the classes for which that carry-over is exact:

* weight norm with the norm taken over every axis but ``dim``: along ``dim``, ``g`` and ``v`` both
  follow the space (same role); a positive monomial map scales ``g`` and ``v`` alike and ``v/‖v‖``
  does not see the scale, so ``PermutationScaling`` is exact (a sign flip is not: ``g`` and ``v`` flip
  together and ``w`` keeps its sign). Along any other axis only ``v`` follows, and ``‖v‖`` is kept by
  orthogonal maps only (``Orthogonal``). A whole-tensor norm (``dim=None``): ``Orthogonal`` on every axis;
* spectral norm: ``W`` follows; ``u`` (length ``W.shape[dim]``) follows the space of axis ``dim`` and
  ``v`` that of the other axis of a matrix, both with the opposite role, so that ``uᵀ W v`` is
  unchanged. Claimed for orthogonal maps only, which also keep the singular values the power
  iteration estimates in training mode; the other axes of a convolution kernel share ``v`` with
  the kernel positions, which no edge expresses: such a space keeps no symmetry;
* pruning: ``orig`` and ``mask`` follow the space together. Only permutations keep the mask a mask
  (a scaling would scale it too), so ``Permutation``;
* anything else: every space the derived tensor meets keeps no symmetry.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from symmetries.classes import Orthogonal, Permutation, PermutationScaling, SymmetryClass
from symmetries.roles import Role

__all__ = ["Derivation", "derivation"]

Edge = tuple[str, int, Role, "tuple[int, int] | None"]


@dataclass(frozen=True)
class Derivation:
    """How the module tensor ``name`` (not a state-dict entry) is computed: ``kind`` is one of
    ``weight_norm``, ``spectral_norm``, ``prune`` or ``unknown``; ``sources`` the state-dict tensors
    it is computed from; ``parts`` names them by role (``g``/``v``, ``orig``/``u``/``v``,
    ``orig``/``mask``); ``dim`` the normalised axis (``None``: the whole tensor); ``ndim`` the
    tensor's number of axes; ``why`` what it is, in words."""
    name: str
    kind: str
    sources: tuple[str, ...]
    parts: tuple[tuple[str, str], ...] = ()
    dim: int | None = None
    ndim: int = 0
    why: str = ""

    def part(self, key: str) -> str | None:
        return dict(self.parts).get(key)

    def expand(self, axis: int, role: Role, span) -> tuple[list[Edge], tuple[SymmetryClass, ...]] | None:
        """The edges on the source tensors that replace the edge ``(axis, role, span)`` of the derived
        tensor, and the classes for which they are exact; ``None``: no exact carry-over."""
        role, axis = Role.parse(role), axis % max(self.ndim, 1)
        if self.kind == "prune":
            return [(self.part("orig"), axis, role, span), (self.part("mask"), axis, role, span)], (Permutation(),)
        if self.kind == "weight_norm":
            if self.dim is not None and axis == self.dim:
                return [(self.part("v"), axis, role, span), (self.part("g"), axis, role, span)], (PermutationScaling(),)
            return [(self.part("v"), axis, role, span)], (Orthogonal(),)
        if self.kind == "spectral_norm":
            edges = [(self.part("orig"), axis, role, span)]
            other = Role.IN if role is Role.OUT else Role.OUT
            if axis == self.dim:
                if self.part("u") is not None:
                    edges.append((self.part("u"), 0, other, span))
            elif self.ndim == 2 and self.part("v") is not None:
                edges.append((self.part("v"), 0, other, span))
            else:
                return None
            return edges, (Orthogonal(),)
        return None


def _prefix(path: str) -> str:
    return f"{path}." if path else ""


def _exists(tensors, names: dict[str, str]) -> bool:
    return all(n in tensors for n in names.values())


def _parametrized(module: nn.Module, path: str, attr: str, tensors, name: str) -> Derivation:
    plist = module.parametrizations[attr]
    pre = f"{_prefix(path)}parametrizations.{attr}."
    sources = tuple(k for k in tensors if k.startswith(pre))
    kinds = [type(p).__name__ for p in plist]
    shaped = tensors.get(pre + "original1", tensors.get(pre + "original"))  # not module.<attr>: that runs
    ndim = shaped.dim() if shaped is not None else 0                          # the parametrization
    if kinds == ["_WeightNorm"]:
        names = {"g": pre + "original0", "v": pre + "original1"}
        dim = plist[0].dim
        if _exists(tensors, names) and -1 <= dim < ndim:
            return Derivation(name, "weight_norm", sources, tuple(names.items()), None if dim == -1 else dim, ndim,
                              "a weight-norm parametrization")
    if kinds == ["_SpectralNorm"]:
        names = {"orig": pre + "original"}
        for k in ("u", "v"):
            if pre + f"0._{k}" in tensors:
                names[k] = pre + f"0._{k}"
        if _exists(tensors, names) and 0 <= plist[0].dim < ndim and (ndim == 1 or "u" in names):
            return Derivation(name, "spectral_norm", sources, tuple(names.items()), plist[0].dim, ndim,
                              "a spectral-norm parametrization")
    return Derivation(name, "unknown", sources, why=f"a parametrization ({', '.join(kinds)}) extraction does not know")


def _hooked(module: nn.Module, path: str, attr: str, tensors, name: str) -> Derivation | None:
    """Legacy hooks that recompute ``module.<attr>`` before each call: weight norm, spectral norm, pruning."""
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm
    pre = _prefix(path)
    for hook in module._forward_pre_hooks.values():
        ndim = getattr(module, attr).dim()
        if isinstance(hook, WeightNorm) and hook.name == attr:
            names = {"g": f"{pre}{attr}_g", "v": f"{pre}{attr}_v"}
            if _exists(tensors, names) and -1 <= hook.dim < ndim:
                return Derivation(name, "weight_norm", tuple(names.values()), tuple(names.items()),
                                  None if hook.dim == -1 else hook.dim, ndim, "nn.utils.weight_norm")
            return Derivation(name, "unknown", tuple(n for n in names.values() if n in tensors), why="weight norm")
        if isinstance(hook, SpectralNorm) and hook.name == attr:
            names = {k: f"{pre}{attr}_{k}" for k in ("orig", "u", "v")}
            if _exists(tensors, names) and 0 <= hook.dim < ndim:
                return Derivation(name, "spectral_norm", tuple(names.values()), tuple(names.items()), hook.dim, ndim,
                                  "nn.utils.spectral_norm")
            return Derivation(name, "unknown", tuple(n for n in names.values() if n in tensors), why="spectral norm")
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == attr:
            names = {"orig": f"{pre}{attr}_orig", "mask": f"{pre}{attr}_mask"}
            if _exists(tensors, names):
                return Derivation(name, "prune", tuple(names.values()), tuple(names.items()), None, ndim, "pruning")
            return Derivation(name, "unknown", tuple(n for n in names.values() if n in tensors), why="pruning")
    return None


def derivation(root: nn.Module, tensors, path: str, attr: str) -> Derivation | None:
    """How ``root.<path>.<attr>`` is computed when it is a tensor but not a state-dict entry (``tensors``
    the state dict); ``None`` when the module has no such tensor."""
    if "." in attr:  # a submodule's tensor named from its parent (``out_proj.weight`` of an attention)
        sub, attr = attr.rsplit(".", 1)
        path = f"{path}.{sub}" if path else sub
    try:
        module = root.get_submodule(path) if path else root
    except AttributeError:
        return None
    name = f"{_prefix(path)}{attr}"
    from torch.nn.utils import parametrize
    if parametrize.is_parametrized(module, attr):
        return _parametrized(module, path, attr, tensors, name)
    if not isinstance(getattr(module, attr, None), torch.Tensor):
        return None
    hooked = _hooked(module, path, attr, tensors, name)
    if hooked is not None:
        return hooked
    return Derivation(name, "unknown", (), why="a tensor attribute outside the state dict")
