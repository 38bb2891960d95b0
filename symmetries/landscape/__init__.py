"""Loss landscape along linear paths between (aligned) models.

Interpolation ``θ(α) = (1−α)θ_A + αθ_B``; loss/accuracy curves and barriers under both
definitions (mean of endpoints; linear interpolation of endpoints); BatchNorm reset and
REPAIR of interpolated models; MergeMany; L2 distance; linear CKA per space; the approximate
dimension of the matched weight clouds (Ferbach et al.).
"""
from symmetries.landscape.activations import channel_stats, producers, space_activations
from symmetries.landscape.barrier import Curve, alpha_grid, barrier_linear, barrier_mean, interpolation_curve
from symmetries.landscape.batchnorm import batchnorm_adjust, has_batchnorm, reset_batchnorm
from symmetries.landscape.cka import cka_per_space, linear_cka
from symmetries.landscape.dimension import MatchedDimension, approximate_dimension, matched_dimension, neuron_cloud
from symmetries.landscape.distance import l2_distance
from symmetries.landscape.evaluation import Evaluation, batches, evaluate
from symmetries.landscape.interpolation import DEFAULT_ALPHAS, alphas, check_compatible, interpolate
from symmetries.landscape.merge import Merge, mean_params, merge_many
from symmetries.landscape.plot import plot_curves
from symmetries.landscape.repair import repair, repair_adjust

__all__ = [
    "interpolate", "alphas", "DEFAULT_ALPHAS", "check_compatible", "evaluate", "Evaluation", "batches",
    "Curve", "interpolation_curve", "alpha_grid", "barrier_mean", "barrier_linear", "reset_batchnorm",
    "batchnorm_adjust", "has_batchnorm", "repair", "repair_adjust", "merge_many", "Merge", "mean_params", "l2_distance",
    "linear_cka", "cka_per_space", "space_activations", "channel_stats", "producers", "plot_curves",
    "matched_dimension", "approximate_dimension", "neuron_cloud", "MatchedDimension",
]
