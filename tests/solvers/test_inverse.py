"""SPD inverse with an analytic gradient, and Newton–Schulz iterations (snnk.solvers.inverse)."""

import pytest
import torch

from snnk.solvers.inverse import SPD_INVERSE_METHODS, newton_schulz_inverse, spd_inverse


def gaussian_gram(n=32, d=6, jitter=1e-3, batch=(), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = 0.5 * torch.randn(*batch, n, d, generator=g, dtype=dtype)
    A = torch.exp(-0.5 * torch.cdist(X, X).square())
    return A + jitter * torch.eye(n, dtype=dtype)


@pytest.mark.parametrize("method", SPD_INVERSE_METHODS)
def test_spd_inverse_matches_the_exact_inverse_over_a_batch(method):
    A = gaussian_gram(batch=(2, 3))
    inv = spd_inverse(A, method, max_iter=200, tol=1e-12)
    assert inv.shape == A.shape and inv.dtype == A.dtype
    torch.testing.assert_close(inv, torch.linalg.inv(A), rtol=1e-8, atol=1e-8)
    # symmetric exactly (symmetrised input; Cholesky inverse / symmetrised iterations)
    torch.testing.assert_close(inv, inv.mT, rtol=0, atol=1e-9)


def test_spd_inverse_keeps_float32_and_computes_in_float64():
    A = gaussian_gram(n=16, jitter=1e-2)
    inv32 = spd_inverse(A.float())
    assert inv32.dtype == torch.float32
    # float64 inside: the only float32 error is the final rounding (plus the input's)
    exact = torch.linalg.inv(A.float().double())
    assert float((inv32.double() - exact).abs().max() / exact.abs().max()) < 1e-6


@pytest.mark.parametrize("method", SPD_INVERSE_METHODS)
def test_spd_inverse_gradient_is_the_analytic_one(method):
    A = gaussian_gram(n=8, jitter=0.1, batch=(2,)).requires_grad_()

    def f(A):
        return spd_inverse(0.5 * (A + A.mT), method, max_iter=200, tol=1e-13)

    assert torch.autograd.gradcheck(f, (A,), atol=1e-6, rtol=1e-5)


def test_newton_raises_when_it_does_not_converge():
    A = gaussian_gram(jitter=1e-6)  # condition number ~1e6: 3 iterations are far too few
    with pytest.raises(RuntimeError, match="did not converge"):
        spd_inverse(A, "newton", max_iter=3, tol=1e-10)


def test_newton_schulz_reports_iterations_and_residual():
    A = gaussian_gram(jitter=1e-2)
    inv, it, res = newton_schulz_inverse(A, max_iter=200, tol=1e-12)
    assert 1 <= it < 200 and res <= 1e-12
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    assert float(torch.linalg.matrix_norm(eye - A @ inv)) / A.shape[-1] ** 0.5 == pytest.approx(
        res, rel=1e-6, abs=1e-15
    )
    _, it3, res3 = newton_schulz_inverse(A, max_iter=3, tol=0.0)
    assert it3 == 3 and res3 > res


def test_spd_inverse_checks_its_arguments():
    A = gaussian_gram(n=4)
    with pytest.raises(ValueError, match="method must be one of"):
        spd_inverse(A, "svd")
    with pytest.raises(ValueError, match="square matrices"):
        spd_inverse(A[:, :3])
