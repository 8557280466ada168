"""The fast paths of kernel-sum releases: blocked statistic and cached query kernel.

They must compute the same statistic and the same answers as the public feature map
(``release.features``), for every kernel, with and without projection, grouped or not, in
float32 and float64, across block boundaries, and handle hostile rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnk.private import private_kernel_sum
from snnk.private._compute import BLOCK_ELEMENTS, safe_row_norms

KERNELS = ["gaussian", "exponential", "laplace", "cauchy", "linear"]


def _release(kernel, k=None, groups=None, n=300, d=6, D=64, eps=math.inf, **kw):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, d))
    g = None if groups is None else rng.integers(0, groups, n)
    r = private_kernel_sum(
        X,
        kernel=kernel,
        lengthscale=2.0,
        epsilon=eps,
        num_features=D,
        projection_dim=k,
        groups=g,
        n_groups=groups,
        random_state=0,
        **kw,
    )
    return X, g, r


# the L1 (Laplace) kernel has no projection: it runs unprojected only
CASES = [
    (kernel, k, projection)
    for kernel in KERNELS
    for k, projection in [(None, "gaussian"), (4, "gaussian"), (4, "fourier")]
    if kernel != "laplace" or k is None
]


@pytest.mark.parametrize("kernel, k, projection", CASES)
@pytest.mark.parametrize("groups", [None, 3])
def test_statistic_and_query_match_the_public_feature_map(kernel, k, projection, groups):
    X, g, r = _release(kernel, k, groups, eps=1.0, projection=projection)
    assert r.projection == projection
    Z = r.features(X).numpy()
    # eps = 1: the statistic is checked through the noiseless build below; here the query
    # of the noisy sketch against z(Y)ᵀS̃ computed from the public map
    Y = np.random.default_rng(4).normal(size=(40, X.shape[1]))
    Zy = r.features(Y).numpy()
    want = Zy @ r.sketches.T
    got = r.query(Y, average=False).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    got32 = r.query(Y.astype(np.float32), average=False).reshape(want.shape)
    np.testing.assert_allclose(got32, want, rtol=0, atol=1e-4 * np.abs(want).max() + 1e-6)
    # eps = inf: the sketch is the statistic itself
    _, _, r0 = _release(kernel, k, groups, projection=projection)
    G = 1 if groups is None else groups
    gg = np.zeros(len(X), int) if g is None else g
    T = np.stack([Z[gg == c].sum(0) for c in range(G)])
    np.testing.assert_allclose(r0.sketches, T, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_statistic_is_the_same_across_block_boundaries_and_dtypes(kernel):
    # several row blocks (BLOCK_ELEMENTS / max(d, D) rows each) and a ragged last one
    D, d = 256, 3
    n = 2 * BLOCK_ELEMENTS // D + 37
    X, _, r = _release(kernel, n=n, d=d, D=D)
    Z = r.features(X).numpy()
    np.testing.assert_allclose(r.sketches[0], Z.sum(0), rtol=1e-10, atol=1e-9)
    X32 = X.astype(np.float32)
    rel32 = private_kernel_sum(
        X32,
        kernel=kernel,
        lengthscale=2.0,
        epsilon=math.inf,
        num_features=D,
        public_seed=r.public_seed,
    )
    Z32 = r.features(X32.astype(np.float64)).numpy()
    np.testing.assert_allclose(rel32.sketches[0], Z32.sum(0), rtol=1e-10, atol=1e-9)


def test_hostile_rows_in_the_statistic():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(50, 4))
    for kernel in KERNELS:
        for bad in (np.nan, np.inf, -np.inf):
            Xb = X.copy()
            Xb[17, 2] = bad
            with pytest.raises(ValueError, match="X contains"):
                private_kernel_sum(Xb, kernel=kernel, lengthscale=1.0, epsilon=1.0, num_features=8)
    # a finite row whose squared norm overflows: the linear kernel still clips it to norm 1
    Xh = X.copy()
    Xh[0] = [1e200, -1e200, 0.0, 0.0]
    r = private_kernel_sum(Xh, kernel="linear", lengthscale=1.0, epsilon=math.inf)
    want = X[1:] / np.maximum(np.linalg.norm(X[1:], axis=1, keepdims=True), 1.0)
    np.testing.assert_allclose(
        r.sketches[0], want.sum(0) + np.array([1, -1, 0, 0]) / math.sqrt(2), rtol=1e-12
    )
    # ... and a row whose float64 phases overflow contributes 0 (finite release)
    Xh[0] = [1e307, -1e307, 1e307, 0.0]
    r = private_kernel_sum(Xh, lengthscale=1e-3, epsilon=1.0, num_features=8, random_state=0)
    assert np.isfinite(r.sketches).all()
    r0 = private_kernel_sum(Xh, lengthscale=1e-3, epsilon=math.inf, num_features=8)
    Z = r0.features(X[1:]).numpy()
    np.testing.assert_allclose(r0.sketches[0], Z.sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_query_falls_back_to_float64_when_float32_phases_overflow(kernel):
    # 3e38·(ω₁ + ω₂) overflows float32 for most of the 32 frequencies: the float32 answer is
    # NaN and the row is recomputed in float64 (the linear kernel rescales the norm instead)
    _, _, r = _release(kernel, d=2, D=64)
    Y = np.array([[3e38, 3e38], [0.5, 0.1]], dtype=np.float32)
    got = r.query(Y)
    want = r.query(Y.astype(np.float64))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        r.query(np.array([[np.nan, 0.0]], dtype=np.float32))


def test_safe_row_norms():
    x = torch.tensor([[3e200, 4e200], [3.0, 4.0], [0.0, 0.0], [1e-200, 0.0]], dtype=torch.float64)
    got = safe_row_norms(x).numpy()
    np.testing.assert_allclose(got[:3], [5e200, 5.0, 0.0], rtol=1e-15)
    assert 0 <= got[3] <= 1e-200  # may underflow: only max(‖x‖, ℓ) is used
    x = torch.tensor([[np.inf, 1.0], [np.nan, 1.0]], dtype=torch.float64)
    assert not torch.isfinite(safe_row_norms(x)).any()


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_many_groups_use_block_indicators(kernel):
    # G·n > 2²²: the group indicator is built per row block, never as a (G, n) matrix
    n, G = 4300, 1000
    X, g, r = _release(kernel, groups=G, n=n, d=2, D=8)
    assert G * n > 1 << 22
    Z = r.features(X).numpy()
    T = np.zeros((G, Z.shape[1]))
    np.add.at(T, g, Z)
    np.testing.assert_allclose(r.sketches, T, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r.counts, np.bincount(g, minlength=G))
