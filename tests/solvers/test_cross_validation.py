"""GCV and exact leave-one-out ridge from streaming normal equations."""

import numpy as np
import pytest
import torch

from snnk.solvers import NormalEquations
from snnk.solvers.cross_validation import default_alpha_grid, gcv_ridge, loo_ridge


def _problem(n=40, D=6, o=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(n, D, generator=g, dtype=torch.float64)
    Y = F[:, :o] * 2 + 0.3 * torch.randn(n, o, generator=g, dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return F, Y, w


def _explicit_press(F, Y, w, alpha, fit_intercept):
    """Σ_i w_i ‖y_i − ŷ_{−i}(x_i)‖² / Σw by refitting without row i (numpy)."""
    F, Y, w = F.numpy(), Y.numpy(), w.numpy()
    total = 0.0
    for i in range(len(F)):
        keep = np.arange(len(F)) != i
        Fk, Yk, wk = F[keep], Y[keep], w[keep]
        if fit_intercept:
            fm, ym = wk @ Fk / wk.sum(), wk @ Yk / wk.sum()
        else:
            fm, ym = np.zeros(F.shape[1]), np.zeros(Y.shape[1])
        Fc, Yc = Fk - fm, Yk - ym
        U = np.linalg.solve(
            Fc.T @ (wk[:, None] * Fc) + alpha * np.eye(F.shape[1]), Fc.T @ (wk[:, None] * Yc)
        )
        pred = (F[i] - fm) @ U + ym
        total += w[i] * np.sum((Y[i] - pred) ** 2)
    return total / w.sum()


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_loo_scores_equal_explicit_leave_one_out(fit_intercept, weighted):
    F, Y, w = _problem()
    w = w if weighted else None
    ne = NormalEquations(F.shape[1], Y.shape[1]).update(F, Y, w)

    def blocks():  # two blocks, to check the accumulation over blocks
        for rows in (slice(0, 15), slice(15, None)):
            yield F[rows], Y[rows], None if w is None else w[rows]

    alphas = torch.tensor([0.01, 0.3, 3.0], dtype=torch.float64)
    U, c, alpha, scores = loo_ridge(ne, blocks, fit_intercept, alphas)
    ones = torch.ones(F.shape[0], dtype=torch.float64)
    for a, s in zip(alphas.tolist(), scores.tolist(), strict=True):
        want = _explicit_press(F, Y, ones if w is None else w, a, fit_intercept)
        assert s == pytest.approx(want, rel=1e-9)
    assert alpha == float(alphas[int(torch.argmin(scores))])
    U2, c2 = ne.solve(alpha, fit_intercept=fit_intercept)
    torch.testing.assert_close(U, U2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(c, c2, rtol=1e-9, atol=1e-12)


def test_gcv_is_normal_equations_gcv_and_grids_agree():
    F, Y, _ = _problem()
    ne = NormalEquations(F.shape[1], Y.shape[1]).update(F, Y)
    got, want = gcv_ridge(ne), ne.solve_gcv()
    for a, b in zip(got, want, strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    evals = torch.linalg.eigvalsh(ne.centred(True)[0])
    grid = default_alpha_grid(evals)
    assert grid.shape == (29,) and grid.dtype == torch.float64
    assert float(grid[0]) == pytest.approx(1e-5 * float(evals.clamp_min(0).mean()), rel=1e-12)
    # the default LOO grid is the GCV grid: the chosen alpha lies on it
    alpha = loo_ridge(ne, lambda: iter([(F, Y, None)]))[2]
    assert torch.isclose(grid, torch.tensor(alpha, dtype=torch.float64), rtol=1e-12).any()


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_gcv_with_few_alphas_factors_each_and_equals_the_eigen_route(fit_intercept):
    """<= FEW_ALPHAS candidates: one Cholesky each; the same scores and solution as the
    eigendecomposition route (which a longer grid takes)."""
    from snnk.solvers.cross_validation import FEW_ALPHAS, ridge_gcv

    F, Y, w = _problem(n=60, D=8)
    ne = NormalEquations(8, 2).update(F, Y, w)
    A, B, yy = ne.centred(fit_intercept)
    few = torch.tensor([0.03, 0.4, 5.0], dtype=torch.float64)
    assert few.numel() <= FEW_ALPHAS
    U, a, scores = ridge_gcv(A, B, yy, ne.wsum, extra_dof=int(fit_intercept), alphas=few)
    many = torch.cat([few, few * 1e6])  # the same three first, then worse ones
    U2, a2, scores2 = ridge_gcv(A, B, yy, ne.wsum, extra_dof=int(fit_intercept), alphas=many)
    torch.testing.assert_close(scores, scores2[:3], rtol=1e-10, atol=0)
    assert a == a2
    torch.testing.assert_close(U, U2, rtol=1e-9, atol=1e-12)
    # and the solution is the ridge solution at the chosen alpha
    torch.testing.assert_close(U, ne.solve(a, fit_intercept)[0], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        ridge_gcv(A, B, yy, ne.wsum, alphas=torch.tensor([0.0, 1.0]))


def test_default_grid_of_ridge_gcv_is_the_estimators_grid():
    """The grid from A's trace equals default_alpha_grid of its eigenvalues."""
    from snnk.solvers.cross_validation import ridge_gcv

    F, Y, w = _problem(n=50, D=7)
    ne = NormalEquations(7, 2).update(F, Y, w)
    _, a, scores = ridge_gcv(*ne.centred(True), ne.wsum, extra_dof=1)
    grid = default_alpha_grid(torch.linalg.eigvalsh(ne.centred(True)[0]))
    assert scores.numel() == grid.numel() == 29
    assert min(abs(a / float(g) - 1) for g in grid) < 1e-10
