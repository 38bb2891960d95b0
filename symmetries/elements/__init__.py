"""Elements: concrete maps of a space (``apply``, ``inverse``, ``@``, ``as_matrix``)."""
from .base import Element
from .dense import DenseElement
from .gather import GatherElement, ScatterElement
from .heads import HeadElement

__all__ = ["Element", "GatherElement", "ScatterElement", "DenseElement", "HeadElement"]
