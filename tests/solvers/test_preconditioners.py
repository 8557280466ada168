"""NystromFactor, FalkonPreconditioner and NystromDiagonalPreconditioner against dense formulas."""

import torch

from snnk.kernels import Gaussian, KernelMatrix
from snnk.solvers import FalkonPreconditioner, NystromDiagonalPreconditioner, NystromFactor

F64 = torch.float64


def data(n=200, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64)


def test_nystrom_factor_features_reproduce_the_kernel_on_the_centres():
    k = Gaussian(1.5)
    X = data(120)
    C = X[:40]
    f = NystromFactor(k(C), name="K_CC")
    torch.testing.assert_close(f.L @ f.L.T, k(C), rtol=0, atol=1e-10)
    torch.testing.assert_close(f.inv_T, torch.linalg.inv(f.L).T)
    Z = f.features(k(X, C))  # z(x) = k(x, C) L⁻ᵀ
    approx = Z @ Z.T
    exact_on_centres = k(C)
    torch.testing.assert_close(approx[:40, :40], exact_on_centres, rtol=0, atol=1e-6)
    B = torch.randn(40, 2, dtype=F64)
    torch.testing.assert_close(f.solve_upper(f.solve_lower(B)), torch.cholesky_solve(B, f.L))
    sym = NystromFactor(k(C) + 1e-9 * torch.triu(torch.ones(40, 40, dtype=F64), 1), symmetrize=True)
    assert sym.size == 40


def test_falkon_preconditioner_is_the_inverse_of_its_dense_matrix():
    k = Gaussian(2.0)
    C = data(30)
    Kmm = k(C)
    f = NystromFactor(Kmm)
    alpha, wsum, m = 0.3, 500.0, 30
    P = FalkonPreconditioner(f, alpha, wsum)
    T = f.L  # L Lᵀ = K_MM + εI
    Kj = T @ T.T
    dense = (wsum / m) * Kj @ Kj + alpha * Kj  # P = Σw T (TᵀT/M + λI) Tᵀ
    R = torch.randn(30, 3, dtype=F64)
    torch.testing.assert_close(dense @ P(R), R, rtol=1e-6, atol=1e-6)


def test_nystrom_diagonal_preconditioner_is_the_inverse_of_its_dense_matrix():
    k = Gaussian(1.0)
    X = data(150)
    C = X[::5]
    w = torch.rand(150, dtype=F64, generator=torch.Generator().manual_seed(3)) + 0.5
    s = w.sqrt()
    alpha = 0.1
    f = NystromFactor(k(C))
    Knc = KernelMatrix(k, X, C, block_rows=32)
    P = NystromDiagonalPreconditioner(Knc, f, k.diag(X), alpha, s)
    F = f.solve_lower(k(X, C).T)  # (M, n)
    Q = F.T @ F
    D = torch.diag(w * (k.diag(X) - torch.diagonal(Q)).clamp_min(0.0) + alpha)
    dense = s[:, None] * Q * s[None, :] + D
    R = torch.randn(150, 2, dtype=F64)
    torch.testing.assert_close(dense @ P(R), R, rtol=1e-7, atol=1e-7)
    # unweighted default
    P1 = NystromDiagonalPreconditioner(Knc, f, k.diag(X), alpha)
    D1 = torch.diag((k.diag(X) - torch.diagonal(Q)).clamp_min(0.0) + alpha)
    torch.testing.assert_close((Q + D1) @ P1(R), R, rtol=1e-7, atol=1e-7)
