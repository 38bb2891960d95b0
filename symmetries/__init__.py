"""symmetries — the symmetries of neural-network weights as first-class objects.

Classes (``Permutation``, ``SemiPermutation``, ``Orthogonal``, ``Invertible``,
``PositiveScaling``, ``SignFlip``, their monomial products and ``HeadStructured``)
describe groups of maps of a hidden space; elements are concrete maps with ``apply``,
``inverse``, ``@`` and ``as_matrix``; a ``TransformSet`` holds one element per space of
an architecture's weight graph, and ``apply`` acts with it on a whole parameter set.
"""
from importlib.metadata import PackageNotFoundError, version

from . import errors, lattice
from .action import apply
from .classes import (HeadStructured, Invertible, Orthogonal, Permutation, PermutationScaling,
                      PositiveScaling, SemiPermutation, SignedPermutation, SignFlip, SymmetryClass, Trivial)
from .elements import DenseElement, Element, GatherElement, HeadElement, ScatterElement
from .roles import Role
from .transforms import TransformSet, identity_transforms, random_transforms

try:
    __version__ = version("symmetries")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "apply", "random_transforms", "identity_transforms", "TransformSet", "Role",
    "SymmetryClass", "Trivial", "Permutation", "SignFlip", "SignedPermutation", "PositiveScaling",
    "PermutationScaling", "Orthogonal", "Invertible", "SemiPermutation", "HeadStructured",
    "Element", "GatherElement", "ScatterElement", "DenseElement", "HeadElement",
    "errors", "lattice", "__version__",
]
