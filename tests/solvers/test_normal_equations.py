"""Closed-form least squares (spec 10.16), ridge, weights, GCV and multinomial logistic."""

import numpy as np
import pytest
import torch

from snnk.solvers import NormalEquations, multinomial_logistic, solve_spd

F64 = torch.float64


def _problem(n=400, D=30, o=2, seed=0, cond=None):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(n, D, generator=g, dtype=F64)
    if cond is not None:  # impose singular values between 1 and cond
        U, _, Vt = torch.linalg.svd(F, full_matrices=False)
        F = U @ torch.diag(torch.logspace(0, np.log10(cond), D, dtype=F64)) @ Vt
    Y = F @ torch.randn(D, o, generator=g, dtype=F64) + 0.1 * torch.randn(
        n, o, generator=g, dtype=F64
    )
    return F, Y


def _accumulate(F, Y, w=None, block=37):
    ne = NormalEquations(F.shape[1], Y.shape[1])
    for s in range(0, F.shape[0], block):
        ne.update(F[s : s + block], Y[s : s + block], None if w is None else w[s : s + block])
    return ne


def test_item16_normal_equations_match_lstsq():
    F, Y = _problem(cond=50.0)
    U, c = _accumulate(F, Y).solve(0.0, fit_intercept=False)
    ref = torch.linalg.lstsq(F, Y).solution
    assert float(torch.linalg.norm(U - ref) / torch.linalg.norm(ref)) < 1e-8
    assert torch.equal(c, torch.zeros(2, dtype=F64))


def test_intercept_is_unpenalised_and_matches_augmented_lstsq():
    F, Y = _problem()
    Y = Y + 5.0
    U, c = _accumulate(F, Y).solve(0.0)
    A = torch.cat([F, torch.ones(F.shape[0], 1, dtype=F64)], 1)
    ref = torch.linalg.lstsq(A, Y).solution
    torch.testing.assert_close(U, ref[:-1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c, ref[-1], rtol=1e-9, atol=1e-9)


def test_ridge_matches_formula_and_weights_match_scaled_problem():
    F, Y = _problem()
    lam = 3.7
    U, _ = _accumulate(F, Y).solve(lam, fit_intercept=False)
    ref = torch.linalg.solve(F.T @ F + lam * torch.eye(F.shape[1], dtype=F64), F.T @ Y)
    torch.testing.assert_close(U, ref, rtol=1e-10, atol=1e-10)
    w = torch.rand(F.shape[0], generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    Uw, _ = _accumulate(F, Y, w).solve(0.0, fit_intercept=False)
    refw = torch.linalg.lstsq(F * w.sqrt()[:, None], Y * w.sqrt()[:, None]).solution
    torch.testing.assert_close(Uw, refw, rtol=1e-9, atol=1e-9)


def test_item16_gradient_descent_approaches_but_never_beats_closed_form():
    F, Y = _problem(n=200, D=10, o=1, cond=10.0)
    U, _ = _accumulate(F, Y).solve(0.0, fit_intercept=False)

    def loss(V):
        return float((F @ V - Y).square().sum() / F.shape[0])

    best = loss(U)
    H = F.T @ F / F.shape[0]
    step = 1.0 / float(torch.linalg.eigvalsh(H).max())
    V = torch.zeros_like(U)
    for _ in range(2000):
        V = V - step * (2 * H @ V - 2 * F.T @ Y / F.shape[0]) / 2
        assert loss(V) >= best - 1e-12
    assert (loss(V) - best) / best < 1e-4


def test_rank_deficient_gives_minimum_norm_solution():
    F, Y = _problem(D=12)
    F = torch.cat([F, F[:, :3]], 1)  # duplicated columns: FᵀF singular
    U, _ = _accumulate(F, Y).solve(0.0, fit_intercept=False)
    ref = torch.linalg.pinv(F) @ Y
    torch.testing.assert_close(U, ref, rtol=1e-7, atol=1e-7)
    x = solve_spd(F.T @ F, F.T @ Y)
    torch.testing.assert_close(x, ref, rtol=1e-7, atol=1e-7)


def test_gcv_picks_the_cross_validation_optimum_within_one_grid_step():
    g = torch.Generator().manual_seed(3)
    n, D = 300, 80
    F = torch.randn(n, D, generator=g, dtype=F64)
    Y = F[:, :5] @ torch.ones(5, 1, dtype=F64) + 2.0 * torch.randn(n, 1, generator=g, dtype=F64)
    grid = torch.logspace(-2, 4, 25, dtype=F64)
    ne = _accumulate(F, Y)
    _, _, a_gcv, _ = ne.solve_gcv(grid)
    # 10-fold cross-validation on the same grid.
    folds = torch.arange(n) % 10
    cv = []
    for a in grid:
        err = 0.0
        for k in range(10):
            tr, te = folds != k, folds == k
            U, c = _accumulate(F[tr], Y[tr]).solve(float(a))
            err += float((F[te] @ U + c - Y[te]).square().sum())
        cv.append(err)
    i_cv = int(np.argmin(cv))
    i_gcv = int(torch.argmin((grid - a_gcv).abs()))
    assert abs(i_cv - i_gcv) <= 1, (i_cv, i_gcv)


def test_multinomial_logistic_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(4)
    n, D, K = 300, 8, 3
    F = torch.randn(n, D, generator=g, dtype=F64)
    y = torch.argmax(F[:, :K] + 0.5 * torch.randn(n, K, generator=g, dtype=F64), 1)
    Y = torch.nn.functional.one_hot(y, K).to(F64)
    alpha = 2.0
    res = multinomial_logistic(
        lambda: iter([(F, slice(0, n))]), Y, F.T @ F, F.sum(0), alpha, tol=1e-12
    )
    assert res.converged
    sk = LogisticRegression(C=1.0 / alpha, tol=1e-12, max_iter=10_000).fit(F.numpy(), y.numpy())
    p_ours = torch.softmax(F @ res.coef + res.intercept, 1).numpy()
    np.testing.assert_allclose(p_ours, sk.predict_proba(F.numpy()), atol=1e-6)
    np.testing.assert_allclose(res.coef.T.numpy(), sk.coef_, atol=1e-5)


def test_logistic_row_sums_survive_a_block_size_that_moves_between_passes():
    """The remembered probabilities belong to their rows: a source whose block size changes
    from pass to pass (a CUDA budget read from free memory) gives the fixed-block fit."""
    from snnk.solvers import BlockSums, softmax_newton

    g = torch.Generator().manual_seed(5)
    n, D, K = 300, 6, 3
    F = torch.randn(n, D, generator=g, dtype=F64)
    Y = torch.nn.functional.one_hot(torch.argmax(F[:, :K], 1), K).to(F64)
    passes = []

    def moving():
        size = (37, 50, 64)[len(passes) % 3]
        passes.append(size)
        return ((F[i : i + size], Y[i : i + size], None) for i in range(0, n, size))

    def fixed():
        return iter([(F, Y, None)])

    kw = {"wsum": float(n), "ysum": Y.sum(0), "tol": 1e-10}
    ref = softmax_newton(BlockSums(fixed), F.T @ F, F.sum(0), 1.0, **kw)
    got = softmax_newton(BlockSums(moving, remember=True), F.T @ F, F.sum(0), 1.0, **kw)
    assert len(set(passes)) == 3 and got.converged
    torch.testing.assert_close(got.coef, ref.coef, rtol=1e-6, atol=1e-8)


def test_update_checks():
    ne = NormalEquations(3, 1)
    with pytest.raises(ValueError, match="no rows"):
        ne.solve(1.0)


def test_blocked_lower_triangle_gram_equals_full_product():
    g = torch.Generator().manual_seed(9)
    F = torch.randn(40, 1300, generator=g, dtype=F64)  # > 2 column blocks of 512
    w = torch.rand(40, generator=g, dtype=F64)
    ne = _accumulate(F, torch.randn(40, 1, generator=g, dtype=F64), w, block=13)
    torch.testing.assert_close(ne.FtF, (F * w[:, None]).T @ F, rtol=1e-12, atol=1e-12)
    assert torch.equal(ne.FtF, ne.FtF.T)


@pytest.mark.parametrize("k", [1, 10, 32, 33, 100])
def test_crossprod_and_cholesky_solve_equal_the_plain_products(k):
    from snnk._utils import crossprod
    from snnk.solvers.normal_equations import cholesky_solve

    g = torch.Generator().manual_seed(k)
    A = torch.randn(300, 50, dtype=torch.float64, generator=g)
    B = torch.randn(300, k, dtype=torch.float64, generator=g)
    torch.testing.assert_close(crossprod(A, B), A.T @ B, rtol=1e-12, atol=1e-12)
    S = A.T @ A + torch.eye(50, dtype=torch.float64)
    L = torch.linalg.cholesky(S)
    R = torch.randn(50, k, dtype=torch.float64, generator=g)
    torch.testing.assert_close(cholesky_solve(L, R), torch.cholesky_solve(R, L))
    torch.testing.assert_close(S @ cholesky_solve(L, R), R)


def test_multinomial_logistic_without_intercept_and_with_weights_is_stationary():
    # the gradient of the penalised weighted loss vanishes at the returned solution
    g = torch.Generator().manual_seed(3)
    F = torch.randn(400, 12, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (400,), generator=g)
    Y = torch.nn.functional.one_hot(y, 4).double()
    w = torch.rand(400, dtype=torch.float64, generator=g) + 0.5
    alpha = 0.3
    for fit_intercept in (True, False):
        Fw = F * w[:, None]
        res = multinomial_logistic(
            lambda: iter([(F, slice(0, 400))]),
            Y,
            Fw.T @ F,
            Fw.sum(0),
            alpha,
            sample_weight=w,
            tol=1e-12,
            fit_intercept=fit_intercept,
        )
        assert res.converged
        P = torch.softmax(F @ res.coef + res.intercept, dim=1)
        R = w[:, None] * (P - Y)
        grad = F.T @ R + alpha * res.coef
        center = torch.eye(4, dtype=torch.float64) - 0.25  # softmax shift invariance
        assert float((grad @ center).abs().max()) < 1e-8
        if fit_intercept:
            assert float((R.sum(0) @ center).abs().max()) < 1e-8
        else:
            assert float(res.intercept.abs().max()) == 0.0


def test_multinomial_logistic_float32_features_and_warm_start_reach_the_same_minimiser():
    """Hessian-vector products in float32 and a start from the ridge solution change the
    path, not the (unique) minimiser: loss and gradient are float64."""
    g = torch.Generator().manual_seed(11)
    n, D, K = 500, 24, 4
    F = torch.randn(n, D, generator=g, dtype=F64)
    y = torch.argmax(F[:, :K] + 0.7 * torch.randn(n, K, generator=g, dtype=F64), 1)
    Y = torch.nn.functional.one_hot(y, K).to(F64)
    alpha = 0.5
    ne = _accumulate(F, Y)
    ref = multinomial_logistic(
        lambda: iter([(F, slice(0, n))]), Y, ne.FtF, ne.Fsum, alpha, tol=1e-12
    )
    F32 = F.float()
    blocks = [(F32[s : s + 128], slice(s, min(n, s + 128))) for s in range(0, n, 128)]
    ridge_U, ridge_c = ne.solve(alpha)
    for init in (None, (ridge_U, ridge_c)):
        res = multinomial_logistic(
            lambda: iter(blocks), Y, ne.FtF, ne.Fsum, alpha, tol=1e-12, init=init, FtY=ne.FtY
        )
        assert res.converged and res.n_hess > 0
        torch.testing.assert_close(res.coef, ref.coef, rtol=0, atol=1e-7)
        torch.testing.assert_close(res.intercept, ref.intercept, rtol=0, atol=1e-7)
        assert abs(res.loss - ref.loss) <= 1e-9 * abs(ref.loss)


def test_multinomial_logistic_warm_start_beats_or_keeps_the_zero_start():
    """The start is the best multiple t >= 0 of the given direction; a useless direction
    (here the negated solution) falls back to zero."""
    g = torch.Generator().manual_seed(5)
    n, D, K = 300, 10, 3
    F = torch.randn(n, D, generator=g, dtype=F64)
    y = torch.argmax(F[:, :K], 1)
    Y = torch.nn.functional.one_hot(y, K).to(F64)
    ne = _accumulate(F, Y)
    feats = lambda: iter([(F, slice(0, n))])  # noqa: E731
    ref = multinomial_logistic(feats, Y, ne.FtF, ne.Fsum, 1.0, tol=1e-12)
    for sign in (1.0, -1.0):
        init = (sign * ref.coef, sign * ref.intercept)
        res = multinomial_logistic(feats, Y, ne.FtF, ne.Fsum, 1.0, tol=1e-12, init=init)
        assert res.converged
        torch.testing.assert_close(res.coef, ref.coef, rtol=0, atol=1e-8)
        if sign > 0:  # started at the minimiser: nothing left to do
            assert res.n_iter <= 1
