"""Elements: concrete maps of a space (``apply``, ``inverse``, ``@``, ``as_matrix``)."""
from symmetries.elements.base import Element
from symmetries.elements.dense import DenseElement
from symmetries.elements.gather import GatherElement, ScatterElement
from symmetries.elements.heads import HeadElement
from symmetries.elements.rotary import RotaryElement

__all__ = ["Element", "GatherElement", "ScatterElement", "DenseElement", "HeadElement", "RotaryElement"]
