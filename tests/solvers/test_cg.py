"""conjugate_gradient: solves SPD systems on operators, column by column, with a preconditioner."""

import itertools

import torch

from snnk.solvers import CGInfo, conjugate_gradient

F64 = torch.float64


def system(n=60, cond=1e4, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    evals = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=F64)
    H = (Q * evals) @ Q.T
    return 0.5 * (H + H.T), torch.randn(n, 3, generator=g, dtype=F64)


def test_solves_every_column():
    H, B = system()
    X, info = conjugate_gradient(lambda V: H @ V, B, tol=1e-12, max_iter=500)
    assert isinstance(info, CGInfo) and info.converged
    torch.testing.assert_close(X, torch.linalg.solve(H, B), rtol=1e-8, atol=1e-8)
    assert info.residuals.shape == (3,)
    assert info.n_iter <= 500


def test_preconditioner_cuts_iterations():
    H, B = system(cond=1e6)
    plain = conjugate_gradient(lambda V: H @ V, B, tol=1e-8, max_iter=1000)[1]
    Hinv_approx = torch.linalg.inv(H + 1e-3 * torch.eye(60, dtype=F64))
    pre = conjugate_gradient(
        lambda V: H @ V, B, precond=lambda R: Hinv_approx @ R, tol=1e-8, max_iter=1000
    )[1]
    assert pre.n_iter < plain.n_iter / 3


def test_tol_zero_runs_max_iter_and_callback_sees_every_iteration():
    H, B = system()
    seen = []
    _, info = conjugate_gradient(
        lambda V: H @ V, B, tol=0.0, max_iter=7, callback=lambda it, rel: seen.append(it)
    )
    assert info.n_iter == 7 and seen == list(range(1, 8))
    assert not info.converged


def test_columns_stop_independently():
    """A column that starts solved (zero right-hand side) stays exactly zero."""
    H, B = system()
    B[:, 1] = 0.0
    X, _ = conjugate_gradient(lambda V: H @ V, B, tol=1e-10, max_iter=500)
    assert torch.equal(X[:, 1], torch.zeros(60, dtype=F64))
    torch.testing.assert_close(H @ X[:, 0], B[:, 0], rtol=1e-7, atol=1e-7)


def test_objective_decreases_monotonically():
    """CG minimises ½xᵀHx − bᵀx over growing Krylov spaces."""
    H, B = system(cond=1e3)
    b = B[:, :1]
    vals = []
    for k in range(1, 12):
        x = conjugate_gradient(lambda V: H @ V, b, tol=0.0, max_iter=k)[0]
        vals.append(float(0.5 * x.T @ H @ x - b.T @ x))
    assert all(b2 <= a + 1e-12 * abs(a) for a, b2 in itertools.pairwise(vals))
    assert vals[-1] < vals[0]
