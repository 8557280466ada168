"""Shared helpers of the snnk.private tests; the slow ``audit`` tier.

Tests marked ``audit`` (empirical privacy audits, about a minute) run only when selected,
``pytest -m audit tests/private`` (``make audit``); the default run skips them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from snnk.private import PrivacyLeakWarning


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "audit: empirical privacy audit (slow; run with -m audit / make audit)"
    )


def pytest_collection_modifyitems(config, items):
    if "audit" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="privacy audit: run with `pytest -m audit` (make audit)")
    for item in items:
        if "audit" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_seeded_noise():
    """Tests seed the noise on purpose; the seeded-noise warning is tested explicitly."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="random_state is set", category=PrivacyLeakWarning
        )
        warnings.filterwarnings("ignore", message="epsilon=inf", category=PrivacyLeakWarning)
        yield


def blobs(n: int, d: int, seed: int, centers: int = 3, spread: float = 1.0):
    """A seeded Gaussian mixture: ``(X, y)`` float64 / int64."""
    rng = np.random.default_rng(10_007 + seed)
    means = np.random.default_rng(99).normal(size=(centers, d)) * 3.0
    y = rng.integers(0, centers, size=n)
    return means[y] + spread * rng.normal(size=(n, d)), y
