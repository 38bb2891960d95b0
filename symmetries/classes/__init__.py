"""Symmetry classes as first-class objects (size-free descriptions; sizes come with each call)."""
from .base import SymmetryClass
from .continuous import Invertible, Orthogonal
from .discrete import Permutation, SignedPermutation, SignFlip, Trivial
from .heads import HeadStructured
from .scaling import PermutationScaling, PositiveScaling
from .semi_permutation import SemiPermutation

__all__ = [
    "SymmetryClass", "Trivial", "Permutation", "SignFlip", "SignedPermutation", "PositiveScaling",
    "PermutationScaling", "Orthogonal", "Invertible", "SemiPermutation", "HeadStructured",
]

#: Every concrete class (heads excluded: it is parameterised by another class).
ALL = (Trivial, Permutation, SignFlip, SignedPermutation, PositiveScaling, PermutationScaling,
       Orthogonal, Invertible, SemiPermutation)
