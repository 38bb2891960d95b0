"""symmetries — the symmetries of neural-network weights as first-class objects.

Classes (``Permutation``, ``SemiPermutation``, ``Orthogonal``, ``Invertible``,
``PositiveScaling``, ``SignFlip``, their monomial products and ``HeadStructured``)
describe groups of maps of a hidden space; elements are concrete maps with ``apply``,
``inverse``, ``@`` and ``as_matrix``; a ``TransformSet`` holds one element per space of
an architecture's weight graph, and ``apply`` acts with it on a whole parameter set.
"""
from importlib.metadata import PackageNotFoundError, version

from symmetries import errors, lattice
from symmetries.action import apply
from symmetries.classes import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling,
                      PositiveScaling, Rotary, SemiPermutation, SignedPermutation, SignFlip, SymmetryClass, Trivial)
from symmetries.elements import DenseElement, Element, GatherElement, HeadElement, RotaryElement, ScatterElement
from symmetries.graph import Edge, Parameter, Space, WeightGraph
from symmetries.policy import CLASS_NAMES, parse_class, resolve_classes, standard_class
from symmetries.roles import Role
from symmetries.transforms import TransformSet, identity_transforms, random_transforms, tie_heads

try:
    __version__ = version("symmetries")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "apply", "random_transforms", "identity_transforms", "TransformSet", "Role",
    "SymmetryClass", "Trivial", "Permutation", "SignFlip", "SignedPermutation", "PositiveScaling",
    "PermutationScaling", "Orthogonal", "Invertible", "SemiPermutation", "HeadStructured", "Rotary",
    "Element", "GatherElement", "ScatterElement", "DenseElement", "HeadElement", "RotaryElement",
    "tie_heads", "WeightGraph", "Parameter", "Space", "Edge", "resolve_classes", "parse_class", "standard_class", "CLASS_NAMES",
    "errors", "lattice", "__version__",
]
