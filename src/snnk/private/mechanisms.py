"""Noise: a cryptographically secure source, floating-point-safe Laplace / Gaussian mechanisms
on a power-of-two grid, and the analytic Gaussian calibration.

Floating-point safety (Mironov 2012). A textbook ``T + b·Lap`` in floats leaks ``T`` through
the low bits of the output (the set of representable outputs depends on ``T``). Here the
statistic is first rounded to a grid ``g = 2^k`` (its sensitivity grows by at most ``g`` per
coordinate, which the calibration adds), noise is drawn and the sum is rounded to the same
grid: ``out = round_g(T) + g·round(η/g)``, which equals ``g·round((round_g(T) + η)/g)``, a
post-processing of the ideal mechanism on ``round_g(T)``. Every output is a multiple of ``g``
whatever ``T`` is, so the lattice reveals nothing (OpenDP samples floats on a grid in the same
spirit; diffprivlib offers the snapping mechanism). ``g`` is chosen so that the added
sensitivity is at most ``2⁻²⁰`` of the declared one.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from snnk._utils.random import draw_seed
from snnk.private.accountant import GaussianEvent, LaplaceEvent, PrivacyLeakWarning

NOISES = ("laplace", "gaussian")


class NoiseSource:
    """Where noise comes from.

    ``random_state=None`` (production): uniforms are read from ``os.urandom`` (the operating
    system's CSPRNG) on every draw, nothing is seeded and nothing can be replayed. An int (or a
    ``numpy.random.Generator``) gives reproducible noise for tests and emits a
    :class:`PrivacyLeakWarning` (anyone who knows the seed can subtract the noise).
    """

    def __init__(self, random_state=None, *, warn: bool = True):
        self.secure = random_state is None
        if self.secure:
            self._rng = None
            return
        if isinstance(random_state, np.random.Generator):
            self._rng = random_state
        elif isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
            raise TypeError(
                f"random_state must be None (secure noise), an int or a numpy Generator "
                f"(reproducible, for tests only), got {random_state!r}"
            )
        else:
            self._rng = np.random.default_rng([int(random_state) % 2**63, 0x6E6F697365])
        if warn:
            warnings.warn(
                "random_state is set: the privacy noise is reproducible from it, which voids "
                "the guarantee for anyone who knows it; use random_state=None (OS entropy) "
                "for a release you publish",
                PrivacyLeakWarning,
                stacklevel=3,
            )

    def uniform(self, size) -> np.ndarray:
        """Uniforms in the open interval (0, 1) on the 2⁻⁵³ grid, float64."""
        if self._rng is not None:
            k = self._rng.integers(0, 2**53, size=size, dtype=np.uint64)
        else:
            count = int(np.prod(size, dtype=np.int64))
            k = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)
            k = k.reshape(size)
        return (k.astype(np.float64) + 0.5) * 2.0**-53

    def laplace(self, size) -> np.ndarray:
        """Standard Laplace draws (difference of two exponentials)."""
        return np.log(self.uniform(size)) - np.log(self.uniform(size))

    def normal(self, size) -> np.ndarray:
        """Standard normal draws (Box-Muller on secure uniforms)."""
        r = np.sqrt(-2.0 * np.log(self.uniform(size)))
        return r * np.cos(2.0 * math.pi * self.uniform(size))


def public_seed(random_state) -> int:
    """The seed of the public randomness (feature frequencies, projections): an int
    ``random_state`` gives a fixed seed (independent of the noise stream), ``None`` a fresh
    OS one. The public seed is stored in the release; it reveals nothing about the data."""
    if random_state is None:
        return draw_seed()
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**62))
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise TypeError(f"random_state must be None or an int, got {random_state!r}")
    return int(np.random.SeedSequence([int(random_state) % 2**63, 0x7075626C]).generate_state(1)[0])


def check_seed(seed) -> int:
    """A non-negative int seed of public randomness."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"public_seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    r"""The smallest ``σ`` for which ``N(0, σ²)`` noise on a statistic of L2 sensitivity
    ``Δ`` is ``(ε, δ)``-DP (analytic Gaussian mechanism, Balle & Wang 2018):

    ``Φ(Δ/(2σ) − εσ/Δ) − e^ε Φ(−Δ/(2σ) − εσ/Δ) ≤ δ``.
    """
    if not (epsilon > 0 and 0 < delta < 1 and sensitivity > 0):
        raise ValueError(
            f"analytic_gaussian_sigma needs epsilon > 0, 0 < delta < 1 and sensitivity > 0, "
            f"got {epsilon}, {delta}, {sensitivity}"
        )

    def excess(log_s: float) -> float:
        s = math.exp(log_s)
        a, b = 0.5 / s - epsilon * s, -0.5 / s - epsilon * s
        value = special.ndtr(a) - math.exp(epsilon + special.log_ndtr(b))
        return math.log(max(value, 1e-300)) - math.log(delta)

    lo, hi = -20.0, 20.0
    log_s = optimize.brentq(excess, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=500)
    return float(math.exp(log_s) * sensitivity)


@dataclass(frozen=True)
class NoiseMechanism:
    """A calibrated additive mechanism for one statistic vector of ``dim`` coordinates.

    Attributes
    ----------
    noise : {"laplace", "gaussian", "none"}
        ``"none"`` is the explicit non-private mode (``epsilon = inf``).
    sensitivity : float
        The declared L1 (Laplace) or L2 (Gaussian) sensitivity ``Δ``.
    scale : float
        Laplace ``b = Δ'/ε`` or Gaussian ``σ = σ(ε, δ)·Δ'``, with ``Δ' = Δ + dim·g`` (L1) or
        ``Δ + √dim·g`` (L2) the sensitivity of the grid-rounded statistic.
    grid : float
        ``g``, a power of two; every output is a multiple of it.
    """

    noise: str
    sensitivity: float
    scale: float
    grid: float
    epsilon: float
    delta: float
    dim: int

    def release(self, statistic: np.ndarray, source: NoiseSource, size=None) -> np.ndarray:
        """``statistic`` plus noise, on the grid. ``size`` prepends shape for many draws
        (audits and tests)."""
        t = np.asarray(statistic, dtype=np.float64)
        if self.noise == "none":
            return t.copy() if size is None else np.broadcast_to(t, (size, *t.shape)).copy()
        shape = t.shape if size is None else (size, *t.shape)
        t = np.round(t / self.grid) * self.grid
        eta = source.laplace(shape) if self.noise == "laplace" else source.normal(shape)
        return t + np.round(eta * (self.scale / self.grid)) * self.grid

    def event(self):
        """The dp_accounting-style event of this release."""
        if self.noise == "laplace":
            return LaplaceEvent(self.scale / self.sensitivity)
        if self.noise == "gaussian":
            return GaussianEvent(self.scale / self.sensitivity, self.epsilon, self.delta)
        return None

    def std(self) -> float:
        """Noise standard deviation per coordinate (0 for ``"none"``)."""
        if self.noise == "laplace":
            return math.sqrt(2.0) * self.scale
        return self.scale if self.noise == "gaussian" else 0.0


def calibrate(
    noise: str, sensitivity: float, epsilon: float, delta: float, dim: int
) -> NoiseMechanism:
    """The :class:`NoiseMechanism` that makes a ``dim``-vector of L1 (``"laplace"``) or L2
    (``"gaussian"``) sensitivity ``sensitivity`` ``(epsilon, delta)``-DP; ``epsilon = inf``
    gives the non-private ``"none"``."""
    if not (sensitivity > 0 and math.isfinite(sensitivity)):
        raise ValueError(f"sensitivity must be finite and > 0, got {sensitivity}")
    dim = max(1, int(dim))
    if math.isinf(epsilon):
        return NoiseMechanism("none", sensitivity, 0.0, 0.0, epsilon, 0.0, dim)
    spread = dim if noise == "laplace" else math.sqrt(dim)
    grid = 2.0 ** math.floor(math.log2(sensitivity / (spread * 2.0**20)))
    rounded = sensitivity + spread * grid
    if noise == "laplace":
        scale = rounded / epsilon
    elif noise == "gaussian":
        scale = analytic_gaussian_sigma(epsilon, delta, rounded)
    else:
        raise ValueError(f"noise must be one of {list(NOISES)}, got {noise!r}")
    return NoiseMechanism(noise, float(sensitivity), float(scale), grid, epsilon, delta, dim)
