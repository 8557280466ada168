"""Noise sources, calibration, the floating-point-safe samplers and the budget accountant."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy import stats

from snnk.private import (
    BudgetAccountant,
    BudgetError,
    NoiseSource,
    PrivacyLeakWarning,
    analytic_gaussian_sigma,
    calibrate,
)
from snnk.private import mechanisms as mech_mod


def test_calibration_scale_is_sensitivity_over_epsilon():
    for sens, eps, dim in [(1.0, 1.0, 1), (45.25, 0.3, 2048), (7.0, 8.0, 10)]:
        m = calibrate("laplace", sens, eps, 0.0, dim)
        assert m.scale == pytest.approx(sens / eps, rel=2e-6)  # grid adds <= 2^-20 relative
        assert m.scale >= sens / eps
        assert m.event().noise_multiplier == pytest.approx(m.scale / sens)


def test_analytic_gaussian_meets_its_definition_and_beats_the_classical_bound():
    for eps, delta in [(0.5, 1e-5), (1.0, 1e-6), (4.0, 1e-5), (8.0, 1e-9)]:
        s = analytic_gaussian_sigma(eps, delta)

        def cond(s, eps=eps):
            a, b = 0.5 / s - eps * s, -0.5 / s - eps * s
            return stats.norm.cdf(a) - math.exp(eps) * stats.norm.cdf(b)

        assert cond(s) == pytest.approx(delta, rel=1e-6)  # tight: the smallest valid sigma
        assert cond(s * 1.001) < delta
        if eps < 1:
            assert s < math.sqrt(2 * math.log(1.25 / delta)) / eps
    assert analytic_gaussian_sigma(1.0, 1e-5, 3.0) == pytest.approx(
        3 * analytic_gaussian_sigma(1.0, 1e-5)
    )


def test_analytic_gaussian_matches_dp_accounting():
    dpa = pytest.importorskip("dp_accounting")
    for eps, delta in [(0.5, 1e-5), (2.0, 1e-6)]:
        ref = dpa.get_sigma_gaussian(eps, delta) if hasattr(dpa, "get_sigma_gaussian") else None
        if ref is None:
            pytest.skip("dp_accounting without get_sigma_gaussian")
        assert analytic_gaussian_sigma(eps, delta) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_noise_distribution_ks(noise):
    """1e5 draws of release - T against Laplace(0, b) / N(0, σ²): p > 1e-3, mean ≈ 0."""
    m = calibrate(noise, 3.0, 0.7, 1e-5 if noise == "gaussian" else 0.0, 1)
    for seed in (0, 1, 2):
        out = m.release(np.array([12.345]), NoiseSource(seed, warn=False), size=100_000)[:, 0]
        err = out - 12.345
        ref = stats.laplace(scale=m.scale) if noise == "laplace" else stats.norm(scale=m.scale)
        assert stats.kstest(err, ref.cdf).pvalue > 1e-3
        assert abs(err.mean()) < 5 * m.std() / math.sqrt(err.size)


def test_secure_source_reads_os_entropy(monkeypatch):
    calls = []
    real = os.urandom

    def spy(k):
        calls.append(k)
        return real(k)

    monkeypatch.setattr(mech_mod.os, "urandom", spy)
    src = NoiseSource(None)
    a, b = src.laplace((1000,)), src.laplace((1000,))
    assert src.secure and calls and sum(calls) >= 8 * 4000
    assert not np.array_equal(a, b)


def test_seeded_source_warns_and_repeats():
    with pytest.warns(PrivacyLeakWarning, match="random_state"):
        a = NoiseSource(5).laplace((10,))
    with pytest.warns(PrivacyLeakWarning):
        b = NoiseSource(5).laplace((10,))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="random_state"):
        NoiseSource("abc")


def test_uniforms_are_open_and_global_rng_untouched():
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    u = NoiseSource(0, warn=False).uniform((100_000,))
    assert u.min() > 0 and u.max() < 1
    u = NoiseSource(None).uniform((100_000,))
    assert u.min() > 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_output_lattice_does_not_reveal_the_statistic(noise):
    """Every output is a multiple of the grid, whatever T: the low bits of the outputs of two
    different statistics are not disjoint (Mironov's attack needs them to be)."""
    m = calibrate(noise, 1.0, 1.0, 1e-6 if noise == "gaussian" else 0.0, 1)
    lows = []
    for t in (0.1, 0.1 + 3e-9, 1 / 3):
        out = m.release(np.array([t]), NoiseSource(1, warn=False), size=20_000)[:, 0]
        k = out / m.grid
        np.testing.assert_array_equal(k, np.round(k))
        lows.append(set((k.astype(np.int64) & 0xFF).tolist()))
    assert len(lows[0] & lows[1]) > 200 and len(lows[0] & lows[2]) > 200


def test_accountant_composes_and_refuses_overspend():
    acc = BudgetAccountant(epsilon=1.0, delta=1e-5)
    acc.spend(0.4, 0.0)
    acc.spend(0.6, 1e-5)
    assert acc.total() == pytest.approx((1.0, 1e-5))
    assert acc.remaining() == pytest.approx((0.0, 0.0))
    with pytest.raises(BudgetError, match="exceeded"):
        acc.check(0.01, 0.0)
    with pytest.raises(BudgetError):
        acc.spend(0.0, 1e-6)
    assert len(acc.spent_budget) == 2


def test_accountant_context_default_and_clone_shares_the_ledger():
    import copy

    acc = BudgetAccountant(epsilon=2.0)
    assert BudgetAccountant.default() is not acc
    with acc:
        assert BudgetAccountant.default() is acc
    assert copy.deepcopy(acc) is acc
    with pytest.raises(ValueError):
        BudgetAccountant(epsilon=-1)


@pytest.mark.parametrize(
    "args, err",
    [
        (("laplace", 0.0, 1.0, 0.0, 1), ValueError),
        (("laplace", math.inf, 1.0, 0.0, 1), ValueError),
        (("poisson", 1.0, 1.0, 0.0, 1), ValueError),
    ],
)
def test_calibrate_rejects(args, err):
    with pytest.raises(err):
        calibrate(*args)
