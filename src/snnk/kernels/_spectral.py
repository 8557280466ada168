"""Spectral measures of shift-invariant kernels (Bochner's theorem).

A continuous shift-invariant kernel ``k(x - y)`` with ``k(0) = 1`` is the characteristic
function of a probability measure ``p``: ``k(δ) = E_{ω~p}[cos(ωᵀδ)]``. Each class below is
that measure at unit lengthscale (angular frequencies); a kernel with lengthscale ``ℓ`` uses
``ω / ℓ``. All draws are float64 on the CPU from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import special, stats


class Spectrum:
    """A spectral measure on R^d at unit lengthscale.

    Attributes
    ----------
    rotation_invariant : bool
        True when ``p`` depends on ``‖ω‖`` only; then orthogonal and structured samplers may
        draw directions and radii separately without biasing the estimator.
    """

    rotation_invariant: bool = False

    def sample(self, n: int, d: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` i.i.d. frequencies, shape ``(n, d)``."""
        raise NotImplementedError

    def radius(self, n: int, d: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` i.i.d. draws of ``‖ω‖`` (rotation-invariant measures only), shape ``(n,)``."""
        raise TypeError(
            f"{type(self).__name__} is not rotation invariant: its frequencies cannot be split "
            f"into orthogonal directions and radii; use sampler='iid' or 'qmc'"
        )

    def qmc_dim(self, d: int) -> int:
        """Number of uniform coordinates :meth:`ppf` consumes per frequency."""
        return d

    def ppf(self, u: np.ndarray, d: int) -> np.ndarray:
        """Map uniforms ``u`` of shape ``(n, qmc_dim(d))`` to frequencies ``(n, d)``."""
        raise NotImplementedError


class GaussianSpectrum(Spectrum):
    """``ω ~ N(0, I_d)``: the spectrum of ``exp(-‖δ‖²/2)``."""

    rotation_invariant = True

    def sample(self, n, d, generator):
        return torch.randn(n, d, generator=generator, dtype=torch.float64)

    def radius(self, n, d, generator):
        # chi_d, drawn as the norm of a Gaussian vector (no global RNG involved).
        return torch.linalg.vector_norm(self.sample(n, d, generator), dim=1)

    def ppf(self, u, d):
        return special.ndtri(u)


class StudentSpectrum(Spectrum):
    """Multivariate Student-t with ``df`` degrees of freedom and identity scale.

    ``ω = g·sqrt(df/u)``, ``g ~ N(0, I_d)``, ``u ~ χ²_df``; spectrum of the Matérn kernel
    with ``ν = df/2`` written as ``k(r) = 2^{1-ν}/Γ(ν) (√(2ν) r)^ν K_ν(√(2ν) r)``.
    """

    rotation_invariant = True

    def __init__(self, df: float):
        self.df = float(df)

    def _chi2(self, n, generator):
        k = round(self.df)
        if abs(k - self.df) < 1e-12:
            return torch.randn(n, k, generator=generator, dtype=torch.float64).square().sum(1)
        # Non-integer df: inverse CDF of uniforms from the same generator.
        u = torch.rand(n, generator=generator, dtype=torch.float64).clamp(1e-300, 1 - 1e-16)
        return torch.from_numpy(stats.chi2.ppf(u.numpy(), self.df))

    def sample(self, n, d, generator):
        g = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return g * torch.sqrt(self.df / self._chi2(n, generator)).unsqueeze(1)

    def radius(self, n, d, generator):
        r = torch.linalg.vector_norm(
            torch.randn(n, d, generator=generator, dtype=torch.float64), dim=1
        )
        return r * torch.sqrt(self.df / self._chi2(n, generator))

    def qmc_dim(self, d):
        return d + 1

    def ppf(self, u, d):
        g = special.ndtri(u[:, :d])
        c = stats.chi2.ppf(u[:, d], self.df)
        return g * np.sqrt(self.df / c)[:, None]


class CauchySpectrum(Spectrum):
    """Independent standard Cauchy coordinates: the spectrum of ``exp(-‖δ‖₁)``."""

    def sample(self, n, d, generator):
        u = torch.rand(n, d, generator=generator, dtype=torch.float64)
        return torch.tan(torch.pi * (u - 0.5))

    def ppf(self, u, d):
        return np.tan(np.pi * (u - 0.5))
