"""The Gaussian marginal likelihood from sufficient statistics, its gradient, the box optimiser."""

import math

import numpy as np
import pytest
import torch

from snnk.solvers import (
    log_marginal_likelihood_from_stats,
    log_marginal_likelihood_with_grad,
    minimize_bounded,
)
from snnk.solvers.likelihood import profile_amplitude_noise

F64 = torch.float64


def problem(n=50, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, D, generator=g, dtype=F64)
    y = torch.randn(n, generator=g, dtype=F64)
    return Z, y


def dense_lml(Z, y, a, s):
    C = a * Z @ Z.T + s * torch.eye(Z.shape[0], dtype=F64)
    return float(torch.distributions.MultivariateNormal(torch.zeros_like(y), C).log_prob(y))


def test_matches_the_dense_gaussian_density():
    Z, y = problem()
    for a, s in [(1.0, 0.1), (2.5, 0.7), (0.3, 1e-3)]:
        v = log_marginal_likelihood_from_stats(
            Z.T @ Z, Z.T @ y, y @ y, 50, torch.tensor(a, dtype=F64), torch.tensor(s, dtype=F64)
        )
        assert float(v) == pytest.approx(dense_lml(Z, y, a, s), rel=1e-10)


def test_gradient_matches_the_dense_model():
    """∂/∂ log a, ∂/∂ log s and, through G = ZᵀZ and b = Zᵀy, ∂/∂Z = Z S + y g_bᵀ."""
    Z, y = problem()
    la, ln = math.log(1.3), math.log(0.2)
    g = log_marginal_likelihood_with_grad(Z.T @ Z, Z.T @ y, y @ y, 50, la, ln)
    Zr = Z.clone().requires_grad_(True)
    th = torch.tensor([la, ln], dtype=F64, requires_grad=True)
    C = torch.exp(th[0]) * Zr @ Zr.T + torch.exp(th[1]) * torch.eye(50, dtype=F64)
    ref = torch.distributions.MultivariateNormal(torch.zeros(50, dtype=F64), C).log_prob(y)
    gZ, gth = torch.autograd.grad(ref, [Zr, th])
    assert g.value == pytest.approx(float(ref.detach()), rel=1e-10)
    assert g.log_amplitude == pytest.approx(float(gth[0]), rel=1e-8)
    assert g.log_noise == pytest.approx(float(gth[1]), rel=1e-8)
    torch.testing.assert_close(Z @ g.gram + y[:, None] * g.proj[None, :], gZ)
    torch.testing.assert_close(g.gram, g.gram.T)


def test_old_import_path_is_the_same_function():
    from snnk.models.gp import log_marginal_likelihood_from_stats as old

    assert old is log_marginal_likelihood_from_stats


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_minimize_bounded_finds_the_box_constrained_minimum(method):
    target = np.array([0.5, 3.0])  # the second coordinate lies outside the box

    def fun(theta):
        r = theta - target
        return float(r @ r), 2.0 * r

    seen = []
    kw = {"max_iter": 400, "learning_rate": 0.05} if method == "adam" else {"max_iter": 50}
    theta, n_iter, stopped = minimize_bounded(
        fun, np.zeros(2), (-1.0, 1.0), method=method, callback=seen.append, **kw
    )
    np.testing.assert_allclose(theta, [0.5, 1.0], atol=1e-2)
    assert (-1.0 <= theta).all() and (theta <= 1.0).all()
    assert stopped is None and len(seen) == n_iter > 0
    with pytest.raises(ValueError, match="method"):
        minimize_bounded(fun, np.zeros(2), (-1.0, 1.0), method="newton")


def test_minimize_bounded_reports_the_iteration_limit():
    def rosen(t):
        x, y = t
        v = (1 - x) ** 2 + 100 * (y - x * x) ** 2
        return v, np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])

    _, n_iter, stopped = minimize_bounded(rosen, np.array([-1.5, 2.0]), (-5.0, 5.0), max_iter=3)
    assert n_iter == 3 and stopped is not None


def _brute_force_max(G, b, yy, n, prior=None, bounds=(-11.5, 11.5)):
    """The maximum of log p(y) over (log a, log s): a 21 x 21 grid of the Cholesky-based
    likelihood (the definition), then Nelder-Mead from the best grid point, in the box."""
    from scipy.optimize import minimize

    def neg(th):
        th = np.clip(th, *bounds)
        a, s = (torch.tensor(math.exp(v), dtype=F64) for v in th)
        return -float(log_marginal_likelihood_from_stats(G, b, yy, n, a, s, prior))

    grid = [(la, ln) for la in np.linspace(-6, 6, 21) for ln in np.linspace(-8, 4, 21)]
    start = min(grid, key=neg)
    res = minimize(neg, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12})
    return -res.fun, np.clip(res.x, *bounds)


@pytest.mark.parametrize("prior", [None, (3.0, 2.0)], ids=["gaussian", "student-t"])
def test_profile_amplitude_noise_is_the_joint_maximum(prior):
    """The O(D) spectral profile equals a brute-force maximisation of the dense-checked
    likelihood, from a bad start (log a = log s = 5), and its value is the likelihood at the
    returned arguments."""
    g = torch.Generator().manual_seed(3)
    Z = torch.randn(80, 12, generator=g, dtype=F64)
    w = torch.randn(12, generator=g, dtype=F64)
    y = 0.7 * Z @ w + 0.3 * torch.randn(80, generator=g, dtype=F64)
    G, b, yy = Z.T @ Z, Z.T @ y, y @ y
    value, la, ln = profile_amplitude_noise(G, b, yy, 80, (5.0, 5.0), (-11.5, 11.5), prior)
    ref, _ = _brute_force_max(G, b, yy, 80, prior)
    assert value == pytest.approx(ref, rel=1e-7, abs=1e-7)
    at = log_marginal_likelihood_from_stats(
        G,
        b,
        yy,
        80,
        torch.tensor(math.exp(la), dtype=F64),
        torch.tensor(math.exp(ln), dtype=F64),
        prior,
    )
    assert float(at) == pytest.approx(value, rel=1e-10)


def test_profile_amplitude_noise_pure_noise_hits_the_lower_amplitude_bound():
    """y independent of Z: the amplitude goes to its lower bound and s to Var y; no NaN."""
    g = torch.Generator().manual_seed(4)
    Z = torch.randn(400, 6, generator=g, dtype=F64)
    y = 2.0 * torch.randn(400, generator=g, dtype=F64)
    y = y - Z @ torch.linalg.lstsq(Z, y[:, None]).solution[:, 0]  # orthogonal to Z
    value, la, ln = profile_amplitude_noise(Z.T @ Z, Z.T @ y, y @ y, 400, (0.0, 0.0), (-11.5, 11.5))
    assert math.isfinite(value)
    assert la == pytest.approx(-11.5, abs=1e-6)
    assert math.exp(ln) == pytest.approx(float(y @ y) / 400, rel=1e-3)
