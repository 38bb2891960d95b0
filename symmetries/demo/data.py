"""Data shipped inside installed packages (no download): scikit-learn's handwritten digits.

1,797 greyscale 8×8 images of the digits 0–9 (UCI ML hand-written digits test set, bundled
with scikit-learn), pixels scaled to ``[0, 1]``, split into train and test sets by a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Split", "digits"]


@dataclass(frozen=True)
class Split:
    """``(x, y)`` pairs for training and testing."""
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: int

    @property
    def features(self) -> int:
        return int(self.train[0].shape[1])


def digits(seed: int = 0, test_fraction: float = 0.2, dtype: torch.dtype = torch.float32) -> Split:
    """scikit-learn's bundled digits as flat 64-pixel vectors in ``[0, 1]``, split by ``seed``."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    xt = torch.as_tensor(x / 16.0, dtype=dtype)
    yt = torch.as_tensor(y, dtype=torch.long)
    return Split((xt[train], yt[train]), (xt[test], yt[test]), 10)
