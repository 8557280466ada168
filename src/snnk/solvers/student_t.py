r"""Scale mixtures of Gaussian processes: the Student-t process of an inverse-gamma scale.

Model (Lee, Yun, Yang & Lee, ICLR 2022, "Scale mixtures of neural network Gaussian
processes"): the last layer's variance gets a prior, ``f = σ g`` with ``g ~ GP(0, K)`` and
``σ² ~ InvGamma(a, b)`` (density ``∝ (σ²)^{-a-1} e^{-b/σ²}``). With the noise inside the
scaled covariance, ``y | σ² ~ N(0, σ² C)`` with ``C = K + s I``, the marginal of ``y`` (``n``
values) is the multivariate Student-t ``MVT_{2a}(0, (b/a) C)``:

.. math:: \log p(y) = \log Γ(a + n/2) − \log Γ(a) − \tfrac n2 \log(2π b)
          − \tfrac12 \log|C| − (a + \tfrac n2) \log\big(1 + \tfrac{Q}{2b}\big),
          \qquad Q = yᵀ C^{-1} y,

the posterior of the scale is ``σ² | y ~ InvGamma(a + n/2, b + Q/2)``, and a test value is

.. math:: y_* | y \sim t_{2a+n}\Big(k_*ᵀ C^{-1} y,\;
          \frac{2b + Q}{2a + n}\,(c_{**} − k_*ᵀ C^{-1} k_*)\Big):

the GP's mean, its variance rescaled by a data-dependent factor, and heavier tails. As
``a → ∞`` with ``b/a = v`` fixed, everything tends to the GP with covariance ``v C``.

These functions take the two numbers a Gaussian-process solver already has, ``Q`` and
``log|C|``, so any solver (dense Cholesky, Woodbury on inducing points, CG) can offer the
Student-t process.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "student_t_log_marginal",
    "student_t_log_pdf",
    "student_t_posterior_scale",
]


def _check_prior(shape: float, rate: float) -> None:
    for name, v in (("shape", shape), ("rate", rate)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(
                f"the inverse-gamma prior's {name} must be a positive finite number, got {v!r}"
            )


def student_t_log_marginal(
    quad: torch.Tensor, logdet: torch.Tensor, n: int, shape: float, rate: float
) -> torch.Tensor:
    r"""``log p(y)`` of the Student-t process (see the module docstring).

    Parameters
    ----------
    quad : torch.Tensor
        ``Q = yᵀ C⁻¹ y`` (any shape: one value per independent output).
    logdet : torch.Tensor
        ``log |C|`` (broadcasts with ``quad``).
    n : int
        Number of observations.
    shape, rate : float
        ``a`` and ``b`` of the ``InvGamma(a, b)`` prior on the last-layer variance.
    """
    _check_prior(shape, rate)
    a, b = float(shape), float(rate)
    return (
        math.lgamma(a + n / 2.0)
        - math.lgamma(a)
        - 0.5 * n * math.log(2.0 * math.pi * b)
        - 0.5 * logdet
        - (a + n / 2.0) * torch.log1p(quad / (2.0 * b))
    )


def student_t_posterior_scale(
    quad: torch.Tensor, n: int, shape: float, rate: float
) -> tuple[torch.Tensor, float]:
    """``(factor, df)``: predictive variances of the GP with covariance ``C`` are multiplied
    by ``factor = (2b + Q)/(2a + n)`` and the predictive law is Student-t with ``df = 2a + n``
    degrees of freedom."""
    _check_prior(shape, rate)
    return (2.0 * rate + quad) / (2.0 * shape + n), 2.0 * shape + n


def student_t_log_pdf(
    y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, df: float
) -> torch.Tensor:
    r"""Log density of the univariate Student-t ``t_ν(mean, var)`` at ``y`` (``var`` is the
    squared scale, not the variance): ``log Γ((ν+1)/2) − log Γ(ν/2) − ½ log(νπ var)
    − ((ν+1)/2) log(1 + (y − mean)²/(ν var))``."""
    r2 = (y - mean).square() / var
    return (
        math.lgamma((df + 1.0) / 2.0)
        - math.lgamma(df / 2.0)
        - 0.5 * torch.log(df * math.pi * var)
        - 0.5 * (df + 1.0) * torch.log1p(r2 / df)
    )
