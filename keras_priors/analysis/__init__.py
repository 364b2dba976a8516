"""Analyses of trained structured networks: inter-layer filter covariance and
block-diagonality (Deep Roots), accuracy-vs-cost plots."""

from .covariance import CovarianceResult, block_diagonality, filter_covariance, layer_responses
from .plots import plot_error_vs_cost

__all__ = [
    "CovarianceResult",
    "block_diagonality",
    "filter_covariance",
    "layer_responses",
    "plot_error_vs_cost",
]
