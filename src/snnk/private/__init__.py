"""Differentially private kernel sums, distance sums and classification (``snnk.private``).

A *curator* function (``private_kernel_sum``, ``private_distance_sums``) or estimator
(``PrivateKernelClassifier.fit``) reads the private data once, spends ``(epsilon, delta)`` from
a :class:`BudgetAccountant` and returns an immutable *release*: public randomness plus noisy
statistics. Queries on a release are post-processing, unlimited and free. Privacy parameters
(``epsilon``, ``delta``, ``neighboring``, ``lengthscale``, ``bounds``, ``data_norm``) are
declared, never inferred from the data.
"""

from snnk.private.accountant import (
    BudgetAccountant,
    BudgetError,
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    ParallelEvent,
    PrivacyLeakWarning,
)
from snnk.private.classifier import PrivateKernelClassifier
from snnk.private.distance import DistanceSumRelease, private_distance_sums
from snnk.private.kde import KernelSumRelease, private_kernel_sum
from snnk.private.mechanisms import NoiseMechanism, NoiseSource, analytic_gaussian_sigma, calibrate
from snnk.private.release import Release, load_release
from snnk.private.smooth import KernelFeatureMap, exact_kernel, exponential_sum

__all__ = [
    "BudgetAccountant",
    "BudgetError",
    "ComposedEvent",
    "DistanceSumRelease",
    "GaussianEvent",
    "KernelFeatureMap",
    "KernelSumRelease",
    "LaplaceEvent",
    "NoiseMechanism",
    "NoiseSource",
    "ParallelEvent",
    "PrivacyLeakWarning",
    "PrivateKernelClassifier",
    "Release",
    "analytic_gaussian_sigma",
    "calibrate",
    "exact_kernel",
    "exponential_sum",
    "load_release",
    "private_distance_sums",
    "private_kernel_sum",
]
