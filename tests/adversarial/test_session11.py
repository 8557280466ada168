"""Hostile second reading of session 11: the CNN kernels, the NNGP layer maps, the Fourier JL map.

Each case here failed before its fix (or pins a property the review checked and found sound,
stated in its docstring):

* ABReLU maps (ReLU, leaky ReLU, abs) at tiny / huge variances: ``q₁₁q₂₂`` underflowed and the
  ``√tiny`` floor of ``s`` swamped the kernel (float64 inputs at ``1e-100``: off by ``1e46``;
  float32 at ``1e-10``: by ``60x``), or overflowed to a spurious "overflows" error.
* ConvNTK: the ``x = x′, s = s′`` entries took ``Σ̇`` and ``K̃`` from the angle forms, which
  lose ``~q·ε`` there (erf, flatten: ``K(X).diagonal()`` 52 % off ``diag(X)`` at ``1e8``).
* GELU: ``δ² = (1+q₁₁)(1+q₂₂) − q₁₂²`` cancelled to ``≤ 0`` for ``q ≳ 1e16`` (NaN, reported as
  an overflow), and ``q₁₁q₂₂δ²`` overflowed for ``q ≳ 1e77``.
* FourierProjection: float16 / bfloat16 rows raised a raw FFT error, integer rows silently gave
  zeros (the scale truncated to int), no rows raised a raw MKL error (also through
  ``release.features``).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from snnk.kernels import NNGP, NTK, ConvNNGP, ConvNTK, make_kernel
from snnk.kernels._nngp_maps import affine_expectations_, diag_expectations, expectations
from snnk.private import private_kernel_sum
from snnk.private.projection import FourierProjection, real_fourier_layout

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore::snnk.private.PrivacyLeakWarning")


def _x(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- ABReLU maps at extreme scales -------------------------------------------------------------
FAMILY = ["relu", "leaky_relu", "abs"]


@pytest.mark.category("scale")
@pytest.mark.parametrize("activation", FAMILY)
@pytest.mark.parametrize(
    ("dtype", "alpha"), [(F64, 1e-100), (F64, 1e100), (torch.float32, 1e-10), (torch.float32, 1e15)]
)
def test_abrelu_kernels_are_homogeneous_at_extreme_scales(activation, dtype, alpha):
    """Without bias the ABReLU kernels are homogeneous: ``K(αX) = α² K(X)`` and ``K(αX, Y) =
    α K(X, Y)``, at any scale whose result is representable (float64 reference at scale 1)."""
    p = {"depth": 2, "activation": activation, "bias_variance": 0.0, "weight_variance": 1.7}
    X, Y = _x(5, 6), _x(3, 6, seed=1)
    I, J = _x(3, 2, 4, 4, seed=2), _x(2, 2, 4, 4, seed=3)
    tol = {"rtol": 1e-12 if dtype == F64 else 2e-5, "atol": 0.0}
    for kern, A, B in [(NNGP(**p), X, Y), (NTK(**p), X, Y)] + [
        (cls(**p, readout=r), I, J) for cls in (ConvNNGP, ConvNTK) for r in ("gap", "flatten")
    ]:
        ref, ref_xy = kern(A), kern(A, B)
        got = kern((A * alpha).to(dtype)).double()
        torch.testing.assert_close(got / alpha**2, ref, **tol)
        got_xy = kern((A * alpha).to(dtype), B.to(dtype)).double()
        torch.testing.assert_close(got_xy / alpha, ref_xy, **tol)
        torch.testing.assert_close(kern.diag((A * alpha).to(dtype)).double() / alpha**2,
                                   ref.diagonal(), **tol)  # fmt: skip


@pytest.mark.category("scale")
def test_abrelu_maps_exact_at_tiny_variances_and_pinned_entries():
    """The maps themselves (closed form and the fused fast path): ``q = 1e-200`` gives the
    scale-1 values times ``1e-200`` (``Σ̇`` unchanged), and ``x = x′`` entries ``θ = 0``."""
    q11 = torch.tensor([[1.0], [2.0]], dtype=F64)
    q22 = torch.tensor([[1.0, 3.0]], dtype=F64)
    q12 = torch.tensor([[1.0, 0.5], [-0.7, 2.0]], dtype=F64)
    ref_k, ref_kd = expectations("relu", q11, q22, q12)
    for s in (1e-200, 1e-300, 1e200):
        k, kd = expectations("relu", q11 * s, q22 * s, q12 * s)
        torch.testing.assert_close(k / s, ref_k, rtol=1e-13, atol=0)
        torch.testing.assert_close(kd, ref_kd, rtol=1e-13, atol=0)
        out = affine_expectations_("relu", q11 * s, q22 * s, q12 * s, 1.0, 0.0)
        assert out is None  # extreme variances go through the normalised closed form
    # pinned entry q₁₂ = q₁₁ = q₂₂: Σ̇ = ½ exactly, K̃ = q/2
    q = torch.tensor([[1e-200]], dtype=F64)
    k, kd = expectations("relu", q, q, q.clone())
    assert float(kd) == 0.5 and math.isclose(float(k), 0.5e-200, rel_tol=1e-15)


# -- ConvNTK x = x′ entries -----------------------------------------------------------------------
@pytest.mark.category("scale")
@pytest.mark.parametrize("activation", ["erf", "gelu", "relu", "tanh"])
@pytest.mark.parametrize("readout", ["gap", "flatten"])
def test_conv_kernel_diagonal_matches_diag_at_large_variances(activation, readout):
    """``K(X)``'s diagonal is ``diag(X)`` (the per-image recursion) at ``q ~ 1e16``, where
    erf's angle form of ``Σ̇`` is off by O(1) at ``x = x′, s = s′``."""
    X = _x(3, 1, 4, 4, seed=4) * 1e8
    p = {"depth": 3, "activation": activation, "quadrature_degree": 20}
    for cls in (ConvNNGP, ConvNTK):
        k = cls(readout=readout, **p)
        torch.testing.assert_close(k(X).diagonal(), k.diag(X), rtol=1e-12, atol=0)


@pytest.mark.category("scale")
@pytest.mark.parametrize("scale", [1.0, 1e6, 1e8])
def test_one_by_one_conv_ntk_is_the_dense_ntk_on_its_diagonal(scale):
    """1x1 filters on 1x1 images are a dense network: ConvNTK(X) equals NTK(X) (whose ``x = x′``
    entries follow the diagonal formula) also where erf's ``ρ → 1`` (``q ~ 1e16``)."""
    X = _x(4, 3, 1, 1, seed=5) * scale
    for readout in ("gap", "flatten"):
        got = ConvNTK(depth=3, activation="erf", filter_size=1, readout=readout)(X)
        ref = NTK(depth=3, activation="erf")(X.flatten(1))
        torch.testing.assert_close(got.diagonal(), ref.diagonal(), rtol=1e-12, atol=0)
        # off the diagonal both lose ~qε in 1 − ρ² (differently rounded products)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)


# -- GELU without cancellation ------------------------------------------------------------------
@pytest.mark.category("scale")
def test_gelu_kernels_finite_and_consistent_at_large_variances():
    X = _x(4, 5, seed=6)
    for s in (1e8, 1e12, 1e40):
        for cls in (NNGP, NTK):
            k = cls(depth=2, activation="gelu")
            K = k(X * s)  # was NaN ("overflows") from q ≈ 1e16 on
            torch.testing.assert_close(K.diagonal(), k.diag(X * s), rtol=1e-12, atol=0)
            torch.testing.assert_close(k(X * s, X * s), K, rtol=1e-7, atol=0)
    # the off-diagonal formula at x = x′ agrees with the diagonal one (no cancellation)
    q = torch.tensor([1e-3, 1.0, 1e8, 1e16, 1e30], dtype=F64)
    k, kd = expectations("gelu", q[:, None], q[:, None], q[:, None])
    dk, dkd = diag_expectations("gelu", q[:, None])
    torch.testing.assert_close(k, dk, rtol=1e-12, atol=0)
    torch.testing.assert_close(kd, dkd, rtol=1e-12, atol=0)


def _gelu_mp(q11, q22, q12):
    """``E[φ(u)φ(v)]``, ``φ(x) = xΦ(x)``, by a 1-D mpmath integral over ``u`` of the closed
    conditional mean ``E[vΦ(v) | u]`` (``v | u ~ N(μ, σ²)``: ``μΦ(μ/a) + σ²/a φ(μ/a)``,
    ``a = √(1 + σ²)``)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    q11, q22, q12 = (mp.mpf(v) for v in (q11, q22, q12))
    sd = mp.sqrt(q11)
    var = max(q22 - q12**2 / q11, 0)
    a = mp.sqrt(1 + var)

    def f(u):
        mu = q12 / q11 * u
        inner = mu * mp.ncdf(mu / a) + var / a * mp.npdf(mu / a)
        return u * mp.ncdf(u) * inner * mp.npdf(u / sd) / sd

    return float(mp.quad(f, [-mp.inf, -8 * sd, 0, 8 * sd, mp.inf]))


@pytest.mark.category("scale")
def test_closed_forms_match_mpmath_at_extreme_correlations():
    """ReLU and erf against their closed forms in 40-digit arithmetic, GELU against a 1-D
    integral, at ``|ρ| → 1``, a zero row and ``q = 1e12``: error ``≤ 1e-14·√(q₁₁q₂₂)`` for
    ReLU's ``K̃`` (``1e-9`` for ``Σ̇``, whose angle is ``√(2(1−ρ))``-conditioned), erf's ``K̃``
    within ``4ε√q`` and ``Σ̇`` within ``4qε`` relative (the conditioning of ``1 − ρ²``)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    eps = torch.finfo(F64).eps
    cases = [
        (1.0, 1.0, 1 - 1e-12),
        (1.0, 1.0, 1.0),
        (1.0, 1.0, -1 + 1e-12),
        (2.0, 0.5, -1.0),
        (1e12, 1e12, 1e12 * (1 - 1e-6)),
        (1e12, 1e12, 1e12),
        (1e16, 1e16, 1e16),
        (1e12, 1.0, 1e6 * (1 - 1e-9)),
        (0.0, 1.0, 0.0),
        (3.0, 1e-8, 1e-4 * math.sqrt(3) * 0.999),
    ]
    for q11, q22, q12 in cases:
        a = torch.tensor([[q11], [q11]], dtype=F64)
        b = torch.tensor([[q22, q22]], dtype=F64)
        c = torch.full((2, 2), q12, dtype=F64)
        Q11, Q22, Q12 = (mp.mpf(v) for v in (q11, q22, q12))
        # ReLU: (s + (π − θ) q₁₂)/(2π), Σ̇ = (π − θ)/(2π)
        r = mp.sqrt(Q11 * Q22)
        th = mp.acos(max(min(Q12 / r, 1), -1)) if r > 0 else mp.pi / 2
        ref = ((r * mp.sin(th) + (mp.pi - th) * Q12) / (2 * mp.pi), (mp.pi - th) / (2 * mp.pi))
        for k, kd in (expectations("relu", a, b, c), affine_expectations_("relu", a, b, c, 1, 0)):
            assert abs(float(k[0, 0]) - float(ref[0])) <= 1e-14 * float(r) + 1e-150
            if r > 0:
                assert abs(float(kd[0, 0]) - float(ref[1])) <= 1e-9
        # erf: (2/π) asin(2q₁₂/√D), Σ̇ = (4/π)/√(D − 4q₁₂²), D = (1 + 2q₁₁)(1 + 2q₂₂)
        D = (1 + 2 * Q11) * (1 + 2 * Q22)
        ref = (2 / mp.pi * mp.asin(2 * Q12 / mp.sqrt(D)), 4 / mp.pi / mp.sqrt(D - 4 * Q12**2))
        qmax = max(q11, q22, 1.0)
        for k, kd in (expectations("erf", a, b, c), affine_expectations_("erf", a, b, c, 1, 0)):
            assert abs(float(k[0, 0]) - float(ref[0])) <= 4 * eps * (1 + math.sqrt(qmax))
            assert abs(float(kd[0, 0]) / float(ref[1]) - 1) <= 4 * eps * (4 + qmax)
        if q11 == q22 == q12:  # the diagonal formulas: within a few ε at any q
            k, kd = diag_expectations("erf", a[:1, 0])
            assert abs(float(k[0]) - float(ref[0])) <= 4 * eps
            assert abs(float(kd[0]) / float(ref[1]) - 1) <= 4 * eps
        if q11 > 0:
            k, _ = expectations("gelu", a, b, c)
            ref = _gelu_mp(q11, q22, q12)
            assert abs(float(k[0, 0]) - ref) <= 1e-13 * max(math.sqrt(q11 * q22), 1.0)


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "abs", "erf", "gelu", "tanh"])
def test_no_map_returns_nan_for_finite_variances(activation):
    """Random valid ``(q₁₁, q₂₂, q₁₂)`` at log-uniform scales ``1e-300 .. 1e150`` (and zeros),
    correlations up to ``|ρ| = 1``: every map (closed, fused, diagonal) is finite."""
    g = torch.Generator().manual_seed(7)
    e1 = torch.empty(40, 1, dtype=F64).uniform_(-300, 150, generator=g)
    e2 = torch.empty(1, 30, dtype=F64).uniform_(-300, 150, generator=g)
    q11, q22 = 10.0**e1, 10.0**e2
    q11[:3], q22[:, :3] = 0.0, 0.0
    rho = torch.empty(40, 30, dtype=F64).uniform_(-1, 1, generator=g)
    rho[:, 3:6] = torch.tensor([-1.0, 1.0, 1 - 1e-15], dtype=F64)
    q12 = rho * q11.sqrt() * q22.sqrt()
    opts = {"degree": 12} if activation == "tanh" else {}
    k, kd = expectations(activation, q11, q22, q12, **opts)
    assert torch.isfinite(k).all() and torch.isfinite(kd).all()
    fast = affine_expectations_(activation, q11, q22, q12, 1.3, 0.1)
    if fast is not None:
        assert torch.isfinite(fast[0]).all() and torch.isfinite(fast[1]).all()
    dk, dkd = diag_expectations(activation, q11, **opts)
    assert torch.isfinite(dk).all() and torch.isfinite(dkd).all()


# -- CNN kernels against an independent loop implementation -------------------------------------
def _naive_conv_kernels(X, Y, depth, activation, sw, sb, fs, padding, readout):
    """The CNN recursion written out entry by entry (loops over positions and offsets)."""
    n, C, H, W = X.shape
    P, (kh, kw) = H * W, fs
    offs = [(a - (kh - 1) // 2, b - (kw - 1) // 2) for a in range(kh) for b in range(kw)]

    def conv(K):
        out = torch.zeros(P, P, dtype=F64)
        for i, j, i2, j2 in itertools.product(range(H), range(W), range(H), range(W)):
            total = 0.0
            for dh, dw in offs:
                a, b, a2, b2 = i + dh, j + dw, i2 + dh, j2 + dw
                if padding == "circular":
                    a, b, a2, b2 = a % H, b % W, a2 % H, b2 % W
                elif not (0 <= a < H and 0 <= b < W and 0 <= a2 < H and 0 <= b2 < W):
                    continue
                total += K[a * W + b, a2 * W + b2]
            out[i * W + j, i2 * W + j2] = total * sw / len(offs) + sb
        return out

    def k0(x, y):
        return x.reshape(C, P).T @ y.reshape(C, P) / C

    def maps(S11, S22, S12):
        return expectations(activation, S11.diagonal()[:, None], S22.diagonal()[None, :], S12)

    nngp, ntk = torch.zeros(n, Y.shape[0], dtype=F64), torch.zeros(n, Y.shape[0], dtype=F64)
    for i, j in itertools.product(range(n), range(Y.shape[0])):
        x, y = X[i], Y[j]
        Sxy, Sxx, Syy = conv(k0(x, y)), conv(k0(x, x)), conv(k0(y, y))
        T = Sxy.clone()
        for layer in range(depth):
            Kt, Kd = maps(Sxx, Syy, Sxy)
            if layer == depth - 1:
                pick = (lambda M: M.mean()) if readout == "gap" else (lambda M: M.diagonal().mean())
                nngp[i, j] = sw * pick(Kt) + sb
                ntk[i, j] = nngp[i, j] + sw * pick(T * Kd)
                break
            new = conv(Kt)
            T = new + conv(T * Kd) - sb
            Sxx, Syy, Sxy = conv(maps(Sxx, Sxx, Sxx)[0]), conv(maps(Syy, Syy, Syy)[0]), new
    return nngp, ntk


@pytest.mark.category("shape")
@pytest.mark.parametrize(
    ("H", "W", "fs", "padding"),
    [
        (3, 4, (2, 2), "same"),
        (3, 3, (5, 4), "same"),
        (2, 3, (4, 5), "circular"),
        (4, 3, (3, 1), "same"),
    ],
)
def test_conv_kernels_match_a_loop_implementation(H, W, fs, padding):
    """Even filters with 'same' padding (lax's split: ``(k−1)//2`` before), filters larger than
    the image (zeros beyond it, divisor ``|q|`` kept; wrapped when circular), rectangular
    filters. (Sound: no defect found here.)"""
    X, Y = _x(2, 2, H, W, seed=8), _x(2, 2, H, W, seed=9)
    p = {"depth": 2, "weight_variance": 1.7, "bias_variance": 0.2, "filter_size": fs}
    for readout in ("gap", "flatten"):
        ref = _naive_conv_kernels(X, Y, 2, "erf", 1.7, 0.2, fs, padding, readout)
        got_nngp = ConvNNGP(activation="erf", padding=padding, readout=readout, **p)(X, Y)
        got_ntk = ConvNTK(activation="erf", padding=padding, readout=readout, **p)(X, Y)
        torch.testing.assert_close(got_nngp, ref[0], rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(got_ntk, ref[1], rtol=1e-13, atol=1e-15)


@pytest.mark.category("inplace")
def test_conv_kernels_leave_inputs_alone():
    X, Y = _x(3, 2, 4, 4, seed=10), _x(2, 2, 4, 4, seed=11)
    X0, Y0 = X.clone(), Y.clone()
    for depth in (0, 2):
        for readout in ("gap", "flatten"):
            k = ConvNTK(depth=depth, readout=readout, bias_variance=0.1)
            k(X), k(X, Y), k.diag(X)
    assert torch.equal(X, X0) and torch.equal(Y, Y0)


@pytest.mark.category("files")
def test_conv_config_round_trips_through_json_and_make_kernel():
    """(Sound: no defect found here.)"""
    k = ConvNTK(
        depth=2, activation="erf", filter_size=(2, 3), padding="circular", readout="flatten",
        image_shape=(2, 4, 5), bias_variance=0.1,
    )  # fmt: skip
    rebuilt = make_kernel(**json.loads(json.dumps(k.get_config())))
    X = _x(3, 2, 4, 5, seed=13)
    assert rebuilt == k and torch.equal(rebuilt(X.flatten(1)), k(X))


# -- the Fourier JL map -----------------------------------------------------------------------
@pytest.mark.category("dtype")
def test_fourier_projection_dtypes_and_shapes():
    P = FourierProjection(16, 5, torch.Generator().manual_seed(0))
    x = _x(3, 16, seed=12)
    ref = P(x)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)):
        got = P(x.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * ref.abs().max())
    with pytest.raises(TypeError, match="floating dtype"):
        P(x.long())
    assert P(x[:0]).shape == (0, 5)
    with pytest.raises(ValueError, match="in_features=16"):
        P(x[:, :15])
    # through a release: no rows give no features (was a raw MKL error)
    X = np.random.default_rng(0).normal(size=(30, 8))
    for kernel in ("gaussian", "linear"):
        r = private_kernel_sum(
            X, kernel=kernel, lengthscale=1.0, epsilon=1.0, projection_dim=3,
            projection="fourier", num_features=16, random_state=0,
        )  # fmt: skip
        assert tuple(r.features(np.zeros((0, 8))).shape) == (0, r._features.num_features)
        assert r.query(np.zeros((0, 8))).shape == (0,)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 6])
def test_fourier_projection_norm_is_unbiased_exactly(d):
    """``E‖Px‖² = ‖x‖²`` exactly: the mean over every ``k``-subset of the ``d`` real Fourier
    coordinates (the law of the drawn index) of ``(d/k)‖(Qsx)_I‖²``, for every ``k ≤ d``;
    and drawn indices are distinct real coordinates. (Sound: no defect found here.)"""
    x = _x(1, d, seed=d)
    pos, _ = real_fourier_layout(d)
    for k in range(1, d + 1):
        P = FourierProjection(d, k, torch.Generator().manual_seed(k))
        assert set(P.index.tolist()) <= set(pos.tolist()) and len(set(P.index.tolist())) == k
        total, count = 0.0, 0
        for subset in itertools.combinations(pos.tolist(), k):
            P.index = torch.tensor(subset)
            total, count = total + float(P(x).square().sum()), count + 1
        assert math.isclose(total / count, float(x.square().sum()), rel_tol=1e-13)


@pytest.mark.category("scale")
@pytest.mark.parametrize("kernel", ["linear", "gaussian", "cauchy", "exponential"])
def test_fourier_projection_adversarial_rows_keep_the_sensitivity(kernel):
    """Add/remove one row changes the (noiseless) statistic by at most the calibrated L2 and
    L1 bounds, for rows built against the public randomness: a unit row whose whole energy
    lands on one sampled Fourier coordinate (``‖Px‖ = √(d/k)‖x‖``: the clip of the linear
    kernel must come after the projection), huge rows whose FFT overflows, a zero row.
    (Sound: no defect found here.)"""
    d, k = 32, 4
    X = np.random.default_rng(1).normal(size=(20, d))
    kw = dict(
        kernel=kernel, lengthscale=1.0, epsilon=math.inf, num_features=64, projection_dim=k,
        projection="fourier", public_seed=5,
    )  # fmt: skip
    r0 = private_kernel_sum(X, **kw)
    P, fmap = r0._features.projection, r0._features
    pos, fac = real_fourier_layout(d)
    Q = torch.view_as_real(torch.fft.rfft(torch.eye(d, dtype=F64) * P.signs, dim=-1))
    M = Q.reshape(d, -1)[:, pos] * fac  # M[i] = Q(s ∘ eᵢ): an orthogonal matrix
    x = M[:, int((pos == P.index[0]).nonzero())].numpy()
    assert math.isclose(float(P(torch.from_numpy(x)[None]).norm()), math.sqrt(d / k))
    rows = [x, 10 * x, np.full(d, 1e308), np.tile([1e308, -1e308], d // 2), np.zeros(d)]
    for row in rows:
        diff = private_kernel_sum(np.vstack([X, row]), **kw).sketches - r0.sketches
        assert np.linalg.norm(diff) <= fmap.l2_bound * (1 + 1e-12)
        assert np.abs(diff).sum() <= fmap.l1_bound * (1 + 1e-12)


@pytest.mark.category("scale")
@pytest.mark.parametrize("projection_dim", [None, 4])
def test_linear_release_features_keep_the_direction_of_huge_rows(projection_dim):
    """A finite row whose sum of squares overflows (``‖x‖ ≈ 3e300``): the public feature map,
    the statistic and the query all clip it to its unit direction (``features`` gave ``0``
    while the statistic and the query kept the direction)."""
    X = np.random.default_rng(2).normal(size=(50, 8))
    kw = dict(
        kernel="linear", lengthscale=1.0, epsilon=math.inf, projection_dim=projection_dim,
        projection="fourier", public_seed=1,
    )  # fmt: skip
    r = private_kernel_sum(X, **kw)
    huge = np.full((1, 8), 1e300)
    z = r.features(huge).numpy()
    np.testing.assert_allclose(np.linalg.norm(z), 1.0, rtol=1e-12)
    np.testing.assert_allclose(r.query(huge, average=False), z @ r.sketches[0], rtol=1e-12)
    diff = private_kernel_sum(np.vstack([X, huge]), **kw).sketches - r.sketches
    np.testing.assert_allclose(diff, z, rtol=1e-12, atol=1e-15)
