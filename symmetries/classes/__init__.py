"""Symmetry classes as first-class objects (size-free descriptions; sizes come with each call)."""
from symmetries.classes.base import SymmetryClass
from symmetries.classes.continuous import Invertible, Orthogonal
from symmetries.classes.discrete import Permutation, SignedPermutation, SignFlip, Trivial
from symmetries.classes.heads import HeadStructured
from symmetries.classes.rotary import Rotary
from symmetries.classes.scaling import PermutationScaling, PositiveScaling
from symmetries.classes.semi_permutation import SemiPermutation

__all__ = [
    "SymmetryClass", "Trivial", "Permutation", "SignFlip", "SignedPermutation", "PositiveScaling",
    "PermutationScaling", "Orthogonal", "Invertible", "SemiPermutation", "HeadStructured", "Rotary",
]

#: Every concrete class (heads excluded: it is parameterised by another class).
ALL = (Trivial, Permutation, SignFlip, SignedPermutation, PositiveScaling, PermutationScaling,
       Orthogonal, Invertible, SemiPermutation, Rotary)
