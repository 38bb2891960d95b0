"""Bayesian neural-network posteriors: mean-field Gaussians, their alignment and barriers.

A posterior ``q = N(μ, diag σ²)`` is aligned to another by one monomial transform acting on
means (``T``) and standard deviations (``|T|``), minimising the 2-Wasserstein distance; only
permutations and sign flips keep the family. ``marginalized_curve`` gives the expected loss
along the interpolated posteriors; ``train_mean_field`` fits a posterior by VI.
"""
from symmetries.posteriors.align import MEAN_FIELD_CLASSES, MeanFieldClassError, PosteriorAlignment, align_posteriors, wasserstein2
from symmetries.posteriors.barrier import expected_loss, marginalized_curve
from symmetries.posteriors.gaussian import MeanField, abs_transforms, interpolate_posteriors
from symmetries.posteriors.vi import kl_to_prior, train_mean_field

__all__ = ["MeanField", "interpolate_posteriors", "abs_transforms", "align_posteriors", "PosteriorAlignment",
           "MeanFieldClassError", "MEAN_FIELD_CLASSES", "wasserstein2", "expected_loss", "marginalized_curve",
           "train_mean_field", "kl_to_prior"]
