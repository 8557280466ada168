"""The fast Johnson-Lindenstrauss map (``projection="fourier"``): an isometry at ``k = d``,
unbiased and concentrated norms, public randomness, and the privacy argument unchanged
(the features of any projected input have norm 1, so the calibration is the unprojected one).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnk.private import KernelFeatureMap, load_release, private_kernel_sum
from snnk.private.projection import FourierProjection, real_fourier_layout


def _proj(d, k, seed=0):
    return FourierProjection(d, k, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("d", [1, 2, 7, 8, 384])
def test_full_sampling_is_an_isometry(d):
    x = torch.from_numpy(np.random.default_rng(d).normal(size=(6, d)))
    P = _proj(d, d)
    y = P(x)
    np.testing.assert_allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-12)
    # Q is orthogonal: inner products kept too
    np.testing.assert_allclose(y @ y.T, x @ x.T, rtol=1e-10, atol=1e-10)
    pos, fac = real_fourier_layout(d)
    assert len(pos) == len(fac) == d and len(set(pos.tolist())) == d


def test_norms_are_unbiased_and_concentrate_like_sampling_without_replacement():
    """Over 400 public seeds: mean of ‖Px‖²/‖x‖² is 1 (±4 s.e.), and its s.d. is within 25 %
    of ``√(2/k · (d−k)/(d−1))`` (sampling k of d near-Gaussian squared coordinates)."""
    d, k = 256, 32
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, d)))
    x[0, :8] *= 20  # a spiky vector: the sign flip spreads it over the Fourier coordinates
    r = np.array([float(_proj(d, k, s)(x).square().sum() / x.square().sum()) for s in range(400)])
    sd = math.sqrt(2 / k * (d - k) / (d - 1))
    assert abs(r.mean() - 1) <= 4 * sd / math.sqrt(len(r))
    assert 0.75 * sd <= r.std(ddof=1) <= 1.25 * sd


def test_dtype_and_validation():
    P = _proj(16, 4)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    assert P(x).dtype == torch.float32 and P(x.double()).dtype == torch.float64
    np.testing.assert_allclose(P(x).double(), P(x.double()), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="projection_dim <= in_features"):
        _proj(4, 5)
    X = np.random.default_rng(0).normal(size=(20, 4))
    kw = dict(kernel="gaussian", lengthscale=1.0, epsilon=1.0, random_state=0)
    with pytest.raises(ValueError, match="projection must be one of"):
        private_kernel_sum(X, projection_dim=2, projection="hadamard", **kw)
    with pytest.raises(ValueError, match="projection_dim <= in_features"):
        private_kernel_sum(X, projection_dim=8, projection="fourier", **kw)
    with pytest.raises(ValueError, match="projection must be one of"):
        KernelFeatureMap("gaussian", 1.0, 4, 8, 2, 0, "dense")


def test_public_randomness_is_data_independent_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(50, 20)), rng.uniform(size=(7, 20)) * 100
    kw = dict(
        kernel="gaussian",
        lengthscale=2.0,
        epsilon=1.0,
        projection_dim=8,
        projection="fourier",
        num_features=64,
        public_seed=11,
        random_state=3,
    )
    ra, rb = private_kernel_sum(A, **kw), private_kernel_sum(B, **kw)
    assert set(ra.public_randomness) >= {"projection.signs", "projection.index"}
    for k, v in ra.public_randomness.items():
        assert v.tobytes() == rb.public_randomness[k].tobytes()
    r2 = load_release(ra.save(tmp_path / "f.safetensors"))
    assert r2.params() == ra.params() and r2.projection == "fourier"
    np.testing.assert_array_equal(r2.query(A), ra.query(A))
    f = r2._features.projection
    assert f.index.dtype == torch.int64 and set(f.signs.tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_sensitivity_is_the_unprojected_one_and_holds_on_hostile_rows(noise):
    """The projection changes only which unit-norm feature vector a row gets: the calibrated
    sensitivity is the same with either map or none, and ‖z(Px)‖₂ = 1, ‖z(Px)‖₁ ≤ √D on
    random, huge, tiny and zero rows."""
    d, D = 12, 64
    X = np.random.default_rng(2).normal(size=(40, d))
    kw = dict(
        kernel="gaussian",
        lengthscale=1.0,
        epsilon=1.0,
        delta=1e-6 if noise == "gaussian" else 0.0,
        noise=noise,
        num_features=D,
        random_state=0,
    )
    plain = private_kernel_sum(X, **kw)
    for projection in ("gaussian", "fourier"):
        r = private_kernel_sum(X, projection_dim=5, projection=projection, **kw)
        assert r.sketch_sensitivity == plain.sketch_sensitivity
        assert r.sketch_scale == plain.sketch_scale
        rows = np.vstack([X, 1e6 * X[:3], 1e-9 * X[:3], np.zeros((1, d))])
        Z = r.features(rows).numpy()
        np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-12)
        assert np.abs(Z).sum(1).max() <= math.sqrt(D) * (1 + 1e-12)
