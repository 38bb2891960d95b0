"""Rotary maps: a block diagonal of scaled 2×2 rotations in Hugging Face's rotary pair layout.

A head of even width ``d`` is split in halves; unit ``i`` and unit ``i + d/2`` form pair ``i``
(``rotate_half``: ``(x₁, x₂) ↦ (−x₂, x₁)``), which rotary position embeddings rotate by the angle
``p·θᵢ`` at position ``p``. Read the pair as the complex number ``zᵢ = x_i + i·x_{i+d/2}``: the
rotation is multiplication by ``e^{i p θᵢ}``, and ``RotaryElement(c)`` multiplies ``zᵢ`` by a
non-zero complex ``cᵢ = aᵢ + i bᵢ``::

    T = [[diag(a), −diag(b)],
         [diag(b),  diag(a)]]

Such maps commute with every rotation of the pairs. ``out``: ``z ← c z``; ``in`` (``x ← Qᵀ x``
with ``Q = T⁻¹``): ``z ← z / c̄``; ``T⁻¹`` is ``1/c``, ``Tᵀ`` is ``c̄``, composition multiplies.
"""
from __future__ import annotations

from typing import Any

import torch

from symmetries._arrays import like
from symmetries.errors import ElementShapeError, InvalidElementError
from symmetries.elements.base import Element

__all__ = ["RotaryElement"]


class RotaryElement(Element):
    """``zᵢ ↦ cᵢ zᵢ`` on the ``d/2`` rotary pairs ``(i, i + d/2)`` of a width-``d`` space (``c = re + i·im``)."""

    __slots__ = ("re", "im")

    def __init__(self, re, im=None):
        re = torch.as_tensor(re)
        if re.is_complex():
            if im is not None:
                raise ElementShapeError("pass either a complex vector or its real and imaginary parts")
            re, im = re.real, re.imag
        if not re.is_floating_point():
            re = re.to(torch.float64)
        im = torch.zeros_like(re) if im is None else torch.as_tensor(im).to(dtype=re.dtype, device=re.device)
        if re.dim() != 1 or im.shape != re.shape:
            raise ElementShapeError(f"a rotary map needs two equal 1-D vectors (one per pair), got shapes "
                                    f"{tuple(re.shape)} and {tuple(im.shape)}")
        if not (bool(torch.isfinite(re).all()) and bool(torch.isfinite(im).all())):
            raise InvalidElementError("a rotary map has NaN or infinite entries")
        if bool(((re * re + im * im) == 0).any()):
            raise InvalidElementError("a rotary map with a zero pair factor is singular")
        self.re, self.im = re, im

    @classmethod
    def identity(cls, d: int) -> "RotaryElement":
        if d % 2:
            raise ElementShapeError(f"a rotary space has an even width, got {d}")
        return cls(torch.ones(d // 2, dtype=torch.float64))

    @property
    def pairs(self) -> int:
        return self.re.numel()

    @property
    def shape(self) -> tuple[int, int]:
        return 2 * self.pairs, 2 * self.pairs

    @property
    def complex(self) -> torch.Tensor:
        """The pair factors ``cᵢ`` as a complex128 vector (CPU)."""
        return torch.complex(self.re.detach().cpu().double(), self.im.detach().cpu().double())

    # -- the roles --------------------------------------------------------------------------
    @staticmethod
    def _mul(x: torch.Tensor, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        h = re.numel()
        x1, x2 = x[:h], x[h:]
        re, im = like(re, x)[:, None], like(im, x)[:, None]
        return torch.cat([re * x1 - im * x2, im * x1 + re * x2])

    def _out(self, x):
        return self._mul(x, self.re, self.im)

    def _in(self, x):
        n2 = self.re * self.re + self.im * self.im      # Qᵀ = T⁻ᵀ: z ↦ z / c̄ = z c / |c|²
        return self._mul(x, self.re / n2, self.im / n2)

    # -- algebra ------------------------------------------------------------------------------
    @staticmethod
    def _dense(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        a, b = torch.diag(re.detach().cpu().double()), torch.diag(im.detach().cpu().double())
        return torch.cat([torch.cat([a, -b], 1), torch.cat([b, a], 1)])

    def as_matrix(self) -> torch.Tensor:
        return self._dense(self.re, self.im)

    def in_matrix(self) -> torch.Tensor:
        n2 = self.re * self.re + self.im * self.im
        return self._dense(self.re / n2, -self.im / n2)        # T⁻¹: 1/c = c̄/|c|²

    def inverse(self) -> "RotaryElement":
        n2 = self.re * self.re + self.im * self.im
        return RotaryElement(self.re / n2, -self.im / n2)

    def _compose(self, other: Element) -> Element:
        if isinstance(other, RotaryElement):
            re, im = other.re.to(self.re), other.im.to(self.re)
            return RotaryElement(self.re * re - self.im * im, self.re * im + self.im * re)
        return super()._compose(other)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "RotaryElement":
        return RotaryElement(self.re.to(device=device, dtype=dtype or self.re.dtype),
                             self.im.to(device=device, dtype=dtype or self.im.dtype))

    def __repr__(self) -> str:
        return f"RotaryElement({self.pairs} pairs)"
