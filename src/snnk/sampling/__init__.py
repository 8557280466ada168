r"""Determinantal point processes, volume sampling and leverage scores (``snnk.sampling``).

Exact, float64, seeded samplers in torch, stable where the usual implementations fail:

* :func:`projection_dpp` (Gram–Schmidt chain rule with clamped residuals, batched),
  :class:`FiniteDPP` (L-ensembles and k-DPPs; elementary symmetric polynomials in log space),
  :func:`sample_dpp`, :func:`sample_k_dpp`;
* designs for optimal weighted least squares: :func:`sample_design` (i.i.d. from the optimal
  density, projection DPP, repeated projection DPPs, volume-rescaled sampling),
  :func:`gram_deviation`, :func:`optimal_weights`, :func:`continuous_projection_dpp`
  (chain rule with rejection from the optimal density), :class:`PolynomialBasis`;
* ridge leverage scores: :func:`ridge_leverage_scores` (exact), BLESS-style
  :func:`approximate_ridge_leverage_scores`, :func:`pivoted_cholesky` (greedy) and
  :func:`randomly_pivoted_cholesky` (RPCholesky, blocked with rejection).

Layer: depends on ``snnk._utils``, ``snnk.kernels`` and ``snnk.solvers`` only, so that the
centre selection of :mod:`snnk.features` can use it.
"""

from snnk.sampling.bases import FAMILIES, PolynomialBasis
from snnk.sampling.designs import (
    DESIGNS,
    continuous_projection_dpp,
    expected_proposals,
    gram_deviation,
    optimal_weights,
    sample_design,
)
from snnk.sampling.dpp import (
    FiniteDPP,
    log_elementary_symmetric_polynomials,
    orthonormal_basis,
    projection_dpp,
    sample_dpp,
    sample_k_dpp,
)
from snnk.sampling.greedy import PivotedCholesky, pivoted_cholesky, randomly_pivoted_cholesky
from snnk.sampling.leverage import (
    LeverageEstimate,
    approximate_ridge_leverage_scores,
    effective_dimension,
    regularization_for_dimension,
    ridge_leverage_scores,
)

__all__ = [
    "DESIGNS",
    "FAMILIES",
    "FiniteDPP",
    "LeverageEstimate",
    "PivotedCholesky",
    "PolynomialBasis",
    "approximate_ridge_leverage_scores",
    "continuous_projection_dpp",
    "effective_dimension",
    "expected_proposals",
    "gram_deviation",
    "log_elementary_symmetric_polynomials",
    "optimal_weights",
    "orthonormal_basis",
    "pivoted_cholesky",
    "projection_dpp",
    "randomly_pivoted_cholesky",
    "regularization_for_dimension",
    "ridge_leverage_scores",
    "sample_design",
    "sample_dpp",
    "sample_k_dpp",
]
