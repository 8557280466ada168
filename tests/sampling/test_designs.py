"""Weighted least-squares designs: the reference's Part F, items 20-23 (qmc-dpp.md, B6)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from snnk.sampling import (
    PolynomialBasis,
    continuous_projection_dpp,
    expected_proposals,
    gram_deviation,
    optimal_weights,
    orthonormal_basis,
    sample_design,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def legendre_grid(m, N):
    x = torch.linspace(-1, 1, N, dtype=F64)[:, None]
    phi = PolynomialBasis("legendre", m - 1)(x)
    return x, phi, orthonormal_basis(phi)


def runge(x):
    return 1.0 / (1.0 + 25.0 * x[:, 0] ** 2)


def errors(U, f, idx):
    """L² error (on the grid) of the weighted LS fit from rows ``idx``, per design (batched)."""
    w = optimal_weights(U, idx.reshape(-1)).reshape(idx.shape).sqrt()
    A = w[..., None] * U[idx]
    c = torch.linalg.lstsq(A, (w * f[idx])[..., None], driver="gelsd").solution[..., 0]
    return (c @ U.T - f).norm(dim=1).numpy()


def test_expected_gram_is_identity():
    """Item 20: mean G over 2000 draws within 0.06 of I (i.i.d. n = 2m; one DPP, n = m)."""
    m, N, T = 10, 20_000, 2000
    _, _, U = legendre_grid(m, N)
    for design, n in (("iid", 2 * m), ("dpp", m)):
        idx = sample_design(U, n, design=design, num_samples=T, generator=1)
        rows = U[idx]
        G = (
            (m / n)
            * torch.einsum(
                "bni,bnj->ij",
                rows / rows.norm(dim=-1, keepdim=True),
                rows / rows.norm(dim=-1, keepdim=True),
            )
            / T
        )
        assert float(torch.linalg.matrix_norm(G - torch.eye(m, dtype=F64), 2)) <= 0.06, design


@pytest.mark.parametrize("seed", [0, 1])
def test_stability_ordering(seed):
    """Item 21: P(‖G − I‖ ≤ ½): repeated DPP ≥ 0.8 (m = 10, n = 6m), ≥ 0.9 (m = 30,
    n = 10m); i.i.d. ≤ 0.6 (m = 10, n = 10m) and ≤ 0.2 (m = 30, n = 10m). 150 trials."""
    T = 150
    for m, n_rep, p_rep, p_iid in ((10, 60, 0.8, 0.6), (30, 300, 0.9, 0.2)):
        _, _, U = legendre_grid(m, 4000)
        rep = gram_deviation(
            U, sample_design(U, n_rep, design="repeated_dpp", num_samples=T, generator=seed)
        )
        iid = gram_deviation(
            U, sample_design(U, 10 * m, design="iid", num_samples=T, generator=seed + 100)
        )
        assert float((rep <= 0.5).double().mean()) >= p_rep, m
        assert float((iid <= 0.5).double().mean()) <= p_iid, m


def test_quasi_optimality():
    """Item 22: repeated DPP at n = 6m has mean err/best ≤ 1.1; volume sampling at n = m
    has a finite mean err/best ≤ 10 while i.i.d. at n = m has a heavy tail (mean > 20)."""
    T = 150
    for m in (10, 30):
        _, _, U = legendre_grid(m, 4000)
        x = torch.linspace(-1, 1, 4000, dtype=F64)[:, None]
        f = runge(x)
        best = float((U @ (U.T @ f) - f).norm())
        rep = errors(
            U, f, sample_design(U, 6 * m, design="repeated_dpp", num_samples=T, generator=m)
        )
        vol = errors(U, f, sample_design(U, m, design="volume", num_samples=T, generator=m + 1))
        assert rep.mean() / best <= 1.1, m
        assert vol.mean() / best <= 10.0, m
    iid = errors(U, f, sample_design(U, m, design="iid", num_samples=T, generator=7))
    assert iid.mean() / best > 20.0


def test_designs_shapes_and_errors():
    _, _, U = legendre_grid(5, 200)
    assert sample_design(U, 12, design="repeated_dpp", num_samples=3, generator=0).shape == (3, 12)
    S = sample_design(U, 7, design="volume", num_samples=4, generator=0)
    assert S.shape == (4, 7)
    assert torch.equal(S, sample_design(U, 7, design="volume", num_samples=4, generator=0))
    with pytest.raises(ValueError, match="design must be one of"):
        sample_design(U, 5, design="sobol")
    with pytest.raises(ValueError, match="exactly m"):
        sample_design(U, 6, design="dpp")
    with pytest.raises(ValueError, match="n >= m"):
        sample_design(U, 3, design="volume")
    with pytest.raises(ValueError, match="orthonormal"):
        sample_design(3 * U, 5)
    idx = sample_design(U, 9, design="iid", generator=3)[0]
    w, psi = optimal_weights(U, idx), 200**0.5 * U[idx]
    G = (w[:, None] * psi).T @ psi / 9
    dev = float(torch.linalg.matrix_norm(G - torch.eye(5, dtype=F64), 2))
    assert gram_deviation(U, idx).item() == pytest.approx(dev, rel=1e-10)


def test_continuous_chain_rule_proposals_and_marginal():
    """Item 23: mean proposals over 200 samples within 10 % of m H_m (m = 20), and the
    points' marginal matches ρ_m (KS p-value > 0.01)."""
    m = 20
    basis = PolynomialBasis("legendre", m - 1)
    g = torch.Generator().manual_seed(3)
    pts, counts = [], []
    for _ in range(200):
        x, c = continuous_projection_dpp(basis, basis.sample_optimal, m, generator=g)
        pts.append(x[:, 0])
        counts.append(c)
    assert abs(np.mean(counts) / expected_proposals(m) - 1.0) <= 0.10
    assert expected_proposals(20) == pytest.approx(20 * 3.597739657, rel=1e-9)
    grid = torch.linspace(-1, 1, 20001, dtype=F64)
    dens = basis(grid[:, None]).square().sum(1) / m / 2  # ρ_m for dx
    cdf = torch.cumulative_trapezoid(dens, grid)
    cdf = torch.cat([torch.zeros(1, dtype=F64), cdf]) / cdf[-1]
    sample = torch.cat(pts).numpy()
    assert stats.kstest(sample, lambda v: np.interp(v, grid.numpy(), cdf.numpy())).pvalue > 0.01
    # the points repel: no two closer than a small fraction of the grid spacing of m points
    assert min(float(torch.diff(torch.sort(p).values).min()) for p in pts) > 1e-6


@pytest.mark.parametrize("family", ["legendre", "hermite"])
def test_polynomial_basis_orthonormal_and_optimal_sampler(family):
    basis = PolynomialBasis(family, 4, in_features=2)
    assert basis.num_features == math.comb(6, 2)
    eye = torch.eye(basis.num_features, dtype=F64)
    # orthonormality by Gauss quadrature (exact for these degrees)
    if family == "legendre":
        nodes, weights = np.polynomial.legendre.leggauss(10)
        weights = weights / 2
    else:
        nodes, weights = np.polynomial.hermite_e.hermegauss(10)
        weights = weights / np.sqrt(2 * np.pi)
    gx, gy = np.meshgrid(nodes, nodes, indexing="ij")
    X = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1))
    wq = torch.tensor(np.outer(weights, weights).ravel())
    phi = basis(X)
    torch.testing.assert_close((wq[:, None] * phi).T @ phi, eye, atol=1e-10, rtol=0)
    # optimal density: E_ρm[w φφᵀ] = I with w = m / k_m, within 5 standard errors
    Y = basis.sample_optimal(50_000, generator=1)
    py = basis(Y)
    w = basis.num_features / py.square().sum(1)
    terms = (w[:, None, None] * py[:, :, None] * py[:, None, :]).reshape(Y.shape[0], -1)
    se = terms.std(0) / Y.shape[0] ** 0.5
    assert bool(((terms.mean(0) - eye.reshape(-1)).abs() <= 5 * se + 1e-3).all())
    assert basis.sample_measure(3, generator=0).shape == (3, 2)
    with pytest.raises(ValueError, match="family"):
        PolynomialBasis("chebyshev", 3)
    with pytest.raises(ValueError, match="features"):
        basis(torch.zeros(3, 5))
