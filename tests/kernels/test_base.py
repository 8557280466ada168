"""Exact kernels against independent reference formulas (scikit-learn where it has them)."""

import math

import numpy as np
import pytest
import torch
from sklearn.gaussian_process.kernels import Matern as SkMatern
from sklearn.metrics.pairwise import (
    laplacian_kernel,
    linear_kernel,
    polynomial_kernel,
    rbf_kernel,
)

from snnk import kernels


@pytest.fixture
def data():
    g = np.random.default_rng(1)
    return g.normal(size=(37, 5)), g.normal(size=(23, 5))


def test_gaussian_matches_sklearn(data):
    X, Y = data
    K = kernels.Gaussian(lengthscale=1.7)(X, Y)
    assert K.dtype == torch.float64
    np.testing.assert_allclose(
        K.numpy(), rbf_kernel(X, Y, gamma=1 / (2 * 1.7**2)), rtol=0, atol=1e-10
    )


def test_laplace_matches_sklearn(data):
    X, Y = data
    K = kernels.Laplace(lengthscale=2.5)(X, Y)
    np.testing.assert_allclose(K.numpy(), laplacian_kernel(X, Y, gamma=1 / 2.5), atol=1e-10)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_matern_matches_sklearn(data, nu):
    X, Y = data
    K = kernels.Matern(nu=nu, lengthscale=1.3)(X, Y)
    np.testing.assert_allclose(K.numpy(), SkMatern(length_scale=1.3, nu=nu)(X, Y), atol=1e-10)


def test_polynomial_and_linear_match_sklearn(data):
    X, Y = data
    K = kernels.Polynomial(degree=3, coef0=0.5, scale=0.2)(X, Y)
    np.testing.assert_allclose(
        K.numpy(), polynomial_kernel(X, Y, degree=3, gamma=0.2, coef0=0.5), atol=1e-10
    )
    np.testing.assert_allclose(kernels.Linear()(X, Y).numpy(), linear_kernel(X, Y), atol=1e-10)


def test_softmax_is_exp_of_scaled_dot(data):
    X, Y = data
    K = kernels.Softmax(temperature=3.0)(X, Y)
    np.testing.assert_allclose(K.numpy(), np.exp(X @ Y.T / 3.0), rtol=1e-12)


def _arccos_reference(X, Y, n):
    """Monte-Carlo-free reference straight from Cho & Saul's formula, in NumPy."""
    out = np.empty((len(X), len(Y)))
    for i, x in enumerate(X):
        for j, y in enumerate(Y):
            nx, ny = np.linalg.norm(x), np.linalg.norm(y)
            th = math.acos(max(-1.0, min(1.0, x @ y / (nx * ny))))
            J = [
                math.pi - th,
                math.sin(th) + (math.pi - th) * math.cos(th),
                3 * math.sin(th) * math.cos(th) + (math.pi - th) * (1 + 2 * math.cos(th) ** 2),
            ][n]
            out[i, j] = (nx * ny) ** n * J / math.pi
    return out


@pytest.mark.parametrize("order", [0, 1, 2])
def test_arccosine_matches_formula(data, order):
    X, Y = data
    K = kernels.ArcCosine(order)(X, Y)
    np.testing.assert_allclose(K.numpy(), _arccos_reference(X, Y, order), atol=1e-10)


def test_arccosine_special_values():
    # Spec 10.7: the ReLU-SNNK kernel k_1/2 is 0.5 for x = w unit and 1/(2π) at θ = π/2.
    e1 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    e2 = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    k = kernels.ArcCosine(1)
    assert 0.5 * k(e1, e1).item() == pytest.approx(0.5, abs=1e-14)
    assert 0.5 * k(e1, e2).item() == pytest.approx(1 / (2 * math.pi), abs=1e-14)


def test_arccosine_monte_carlo_definition():
    # k_n = 2 E[Θ(wx)Θ(wy)(wx)^n(wy)^n]: checked by Monte Carlo within 5 standard errors.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, generator=g, dtype=torch.float64)
    w = torch.randn(400_000, 6, generator=g, dtype=torch.float64)
    for n in (0, 1, 2):
        px, py = w @ x[0], w @ x[1]
        s = 2 * (px > 0) * (py > 0) * (px.clamp_min(0) ** n) * (py.clamp_min(0) ** n)
        est, se = s.mean().item(), s.std().item() / math.sqrt(len(s))
        assert abs(est - kernels.ArcCosine(n)(x[:1], x[1:]).item()) < 5 * se


KERNELS = [
    kernels.Gaussian(2.0),
    kernels.Laplace(1.5),
    kernels.Matern(2.5, 0.7),
    kernels.ArcCosine(2),
    kernels.Softmax(4.0),
    kernels.Polynomial(2),
    kernels.Linear(),
]


@pytest.mark.parametrize("k", KERNELS, ids=repr)
def test_blocks_equal_one_shot_and_diag(k):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(50, 4, generator=g, dtype=torch.float64)
    Y = torch.randn(13, 4, generator=g, dtype=torch.float64)
    full = k(X, Y, block_rows=10_000)
    blocked = k(X, Y, block_rows=7)
    torch.testing.assert_close(blocked, full, rtol=0, atol=1e-13)
    torch.testing.assert_close(k.diag(X), torch.diagonal(k(X)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", KERNELS, ids=repr)
def test_keeps_dtype_and_batch_shape(k):
    X = torch.randn(2, 3, 9, 4)
    Y = torch.randn(3, 5, 4)
    K = k(X, Y)
    assert K.shape == (2, 3, 9, 5) and K.dtype == torch.float32
    torch.testing.assert_close(K[1, 2], k(X[1, 2], Y[2]))
    Kh = k(X.to(torch.bfloat16), Y.to(torch.bfloat16))
    assert Kh.dtype == torch.bfloat16 and torch.isfinite(Kh.float()).all()


def test_composition():
    X = torch.randn(20, 3, dtype=torch.float64)
    a, b = kernels.Gaussian(1.0), kernels.Linear()
    torch.testing.assert_close((a + b)(X), a(X) + b(X))
    torch.testing.assert_close((a * b)(X), a(X) * b(X))
    torch.testing.assert_close((2.0 * a)(X), 2.0 * a(X))
    torch.testing.assert_close((a * 3)(X), 3.0 * a(X))
    s = 2.0 * a + b * a
    torch.testing.assert_close(s.diag(X), torch.diagonal(s(X)))
    assert (2.0 * a).shift_invariant and not (a + b).shift_invariant
    assert kernels.make_kernel(**s.get_config()) == s


def test_make_kernel_by_name():
    assert kernels.make_kernel("rbf", lengthscale=2.0) == kernels.Gaussian(2.0)
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.make_kernel("gausian")


@pytest.mark.parametrize(
    "build, exc, match",
    [
        (lambda: kernels.Gaussian(0.0), ValueError, "lengthscale"),
        (lambda: kernels.Gaussian(-1.0), ValueError, "lengthscale"),
        (lambda: kernels.Matern(nu=1.0), ValueError, "nu"),
        (lambda: kernels.ArcCosine(3), ValueError, "order"),
        (lambda: kernels.Softmax(temperature=0), ValueError, "temperature"),
    ],
)
def test_bad_hyper_parameters(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_bad_inputs():
    k = kernels.Gaussian()
    X = torch.randn(5, 3)
    with pytest.raises(ValueError, match="NaN"):
        k(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="infinite"):
        k(torch.tensor([[float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="last dimension"):
        k(X, torch.randn(4, 2))
    with pytest.raises(TypeError, match="floating"):
        k(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating"):
        k(np.ones((3, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="empty"):
        k(torch.empty(0, 3))
    with pytest.raises(ValueError, match="dimension"):
        k(torch.randn(3))
    if torch.device("meta") != X.device:  # mismatched devices, checked without a GPU
        with pytest.raises(ValueError, match="device"):
            k(X, torch.randn(4, 3, device="meta"))
