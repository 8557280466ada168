"""Ridge leverage scores (exact and BLESS-style) and greedy pivoted Cholesky (item 25)."""

import numpy as np
import pytest
import torch

from snnk.kernels import Gaussian
from snnk.sampling import (
    FiniteDPP,
    approximate_ridge_leverage_scores,
    effective_dimension,
    pivoted_cholesky,
    randomly_pivoted_cholesky,
    regularization_for_dimension,
    ridge_leverage_scores,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def d3_clusters(n, seed):
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(8, 3, generator=torch.Generator().manual_seed(123), dtype=F64)
    widths = torch.logspace(-1, 0, 8, dtype=F64)
    lab = torch.randint(8, (n,), generator=g)
    return means[lab] + widths[lab, None] * torch.randn(n, 3, generator=g, dtype=F64)


def test_exact_scores_are_the_marginals_of_the_l_ensemble():
    X = d3_clusters(80, 0)
    K = Gaussian(1.0)(X)
    lam = 1e-3
    scores = ridge_leverage_scores(K, lam)
    direct = torch.diagonal(K @ torch.linalg.inv(K + 80 * lam * torch.eye(80, dtype=F64)))
    torch.testing.assert_close(scores, direct, atol=1e-10, rtol=0)
    dpp = FiniteDPP(K / (80 * lam))
    torch.testing.assert_close(dpp.inclusion_probabilities(), scores, atol=1e-10, rtol=0)
    s = torch.linalg.eigvalsh(K)
    assert effective_dimension(s, lam) == pytest.approx(float(scores.sum()), rel=1e-10)
    reg = regularization_for_dimension(K, 20.0)
    assert float(ridge_leverage_scores(K, reg).sum()) == pytest.approx(20.0, rel=1e-8)
    assert float(ridge_leverage_scores(K, dimension=20.0).sum()) == pytest.approx(20.0, rel=1e-8)
    with pytest.raises(ValueError, match="exactly one"):
        ridge_leverage_scores(K)
    with pytest.raises(ValueError, match="dimension must be in"):
        ridge_leverage_scores(K, dimension=500.0)
    with pytest.raises(ValueError, match="regularization"):
        ridge_leverage_scores(K, -1.0)
    with pytest.raises(ValueError, match="NaN"):
        ridge_leverage_scores(torch.full((3, 3), float("nan")), 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bless_within_factor_two_of_exact(seed):
    """Item 25: d_eff ≈ 160 (n = 2000, λ = 1e-4): within 2x of exact for ≥ 99 % of
    points; dictionary ≤ 10 d_eff."""
    X = d3_clusters(2000, 0)
    k = Gaussian(1.0)
    exact = ridge_leverage_scores(k(X), 1e-4)
    deff = float(exact.sum())
    assert 120 < deff < 250
    est = approximate_ridge_leverage_scores(X, k, 1e-4, generator=seed)
    ratio = est.scores / exact
    assert float(((ratio <= 2) & (ratio >= 0.5)).double().mean()) >= 0.99
    assert est.dictionary.numel() <= 10 * deff
    assert est.effective_dimension == pytest.approx(deff, rel=0.25)


def test_bless_dimension_target_and_errors():
    X = d3_clusters(600, 3)
    k = Gaussian(1.0)
    est = approximate_ridge_leverage_scores(X, k, dimension=50.0, generator=0)
    exact = float(ridge_leverage_scores(k(X), est.regularization).sum())
    assert 35 < exact < 70  # the λ found has d_eff near 50
    a = approximate_ridge_leverage_scores(X, k, dimension=50.0, generator=1)
    b = approximate_ridge_leverage_scores(X, k, dimension=50.0, generator=1)
    assert torch.equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="exactly one"):
        approximate_ridge_leverage_scores(X, k)
    with pytest.raises(ValueError, match="q2"):
        approximate_ridge_leverage_scores(X, k, 1e-3, q2=-1)
    with pytest.raises(ValueError, match="dimension"):
        approximate_ridge_leverage_scores(X, k, dimension=1e6)


def test_pivoted_cholesky_is_greedy_and_exact_on_its_pivots():
    X = d3_clusters(300, 4)
    k = Gaussian(1.0)
    K = k(X)
    res = pivoted_cholesky(X, k, 40)
    F, piv = res.factor, res.pivots
    assert len(set(piv.tolist())) == 40
    torch.testing.assert_close((F @ F.T)[piv][:, piv], K[piv][:, piv], atol=1e-10, rtol=0)
    trace = float(K.diagonal().sum() - F.square().sum())
    assert float(res.residual_trace[-1]) == pytest.approx(trace, rel=1e-8, abs=1e-10)
    assert bool((torch.diff(res.residual_trace) <= 1e-12).all())  # trace error decreases
    # the first pivot maximises the diagonal, the second the conditional variance
    d2 = K.diagonal() - K[:, piv[0]] ** 2 / K[piv[0], piv[0]]
    d2[piv[0]] = -1
    assert int(d2.argmax()) == int(piv[1])
    # duplicated rows: distinct pivots, zero columns once the rank is exhausted
    rep = pivoted_cholesky(X[:3].repeat(4, 1), k, 6)
    assert len(set(rep.pivots.tolist())) == 6
    with pytest.raises(ValueError, match="cannot pick"):
        pivoted_cholesky(X[:3], k, 4)
    with pytest.raises(ValueError, match="weight"):
        pivoted_cholesky(X, k, 3, weight=-torch.ones(300))
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    pivoted_cholesky(X, k, 3)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


def test_randomly_pivoted_cholesky_matches_the_sequential_law():
    """Blocked proposals with rejection reproduce sequential RPCholesky: the first pivot is
    ∝ diag (all equal for a Gaussian kernel: uniform) and the second ∝ the residual
    diagonal; checked on a 6-point set over 6000 runs (4 SE per item)."""
    X = torch.tensor([[0.0], [0.1], [0.2], [2.0], [2.1], [5.0]], dtype=F64)
    k = Gaussian(1.0)
    K = k(X)
    T = 6000
    g = torch.Generator().manual_seed(0)
    pairs = torch.zeros(6, 6, dtype=F64)
    for _ in range(T):
        p = randomly_pivoted_cholesky(X, k, 2, generator=g, block_size=2).pivots
        pairs[p[0], p[1]] += 1
    # P(first = i, second = j) = (1/6) · d_j^{(i)} / Σ d^{(i)}, d^{(i)} = K_jj − K_ij²/K_ii
    expected = torch.zeros(6, 6, dtype=F64)
    for i in range(6):
        d = K.diagonal() - K[i] ** 2 / K[i, i]
        d[i] = 0
        expected[i] = d / d.sum() / 6
    emp = pairs / T
    se = (expected * (1 - expected) / T).sqrt()
    assert bool(((emp - expected).abs() <= 4 * se + 1e-9).all())


def test_randomly_pivoted_cholesky_factor_and_edge_cases():
    X = d3_clusters(400, 5)
    k = Gaussian(1.0)
    K = k(X)
    res = randomly_pivoted_cholesky(X, k, 60, generator=1)
    piv, F = res.pivots, res.factor
    assert len(set(piv.tolist())) == 60
    torch.testing.assert_close((F @ F.T)[piv][:, piv], K[piv][:, piv], atol=1e-8, rtol=0)
    a = randomly_pivoted_cholesky(X, k, 60, generator=1).pivots
    assert torch.equal(a, piv)
    # smaller trace error than uniform centres
    uni = torch.randperm(400, generator=torch.Generator().manual_seed(0))[:60]
    Kmm = K[uni][:, uni]
    Z = K[:, uni] @ torch.linalg.pinv(Kmm, hermitian=True) @ K[uni]
    uniform_err = float(K.diagonal().sum() - Z.diagonal().sum())
    rp_err = float(K.diagonal().sum() - F.square().sum())
    assert rp_err < 0.8 * uniform_err
    rep = randomly_pivoted_cholesky(X[:3].repeat(4, 1), k, 6, generator=0)
    assert len(set(rep.pivots.tolist())) == 6
    with pytest.raises(ValueError, match="cannot pick"):
        randomly_pivoted_cholesky(X[:3], k, 4)
    with pytest.raises(ValueError, match="block_size"):
        randomly_pivoted_cholesky(X, k, 3, block_size=0)


def _textbook_greedy(K: torch.Tensor, m: int) -> list[int]:
    """The unblocked chain on a dense matrix: pivot = argmax of the residual diagonal."""
    R = K.clone()
    piv: list[int] = []
    for _ in range(m):
        d = R.diagonal().clone()
        d[piv] = -1.0
        j = int(d.argmax())
        piv.append(j)
        R -= torch.outer(R[:, j], R[j]) / R[j, j]
    return piv


@pytest.mark.parametrize("block_size", [1, 2, 5, 64])
def test_blocked_greedy_pivots_are_the_textbook_greedy_ones(block_size):
    """Panels of candidate columns change the order of the sums only: same pivots as the
    dense chain (weighted too), the same factor, for any panel size (1: every step a new
    panel; 2, 5: many panel ends on a pivot outside the candidates)."""
    X = d3_clusters(250, 7)
    k = Gaussian(0.7)
    w = torch.rand(250, generator=torch.Generator().manual_seed(1), dtype=F64) + 0.1
    for weight in (None, w):
        K = k(X) if weight is None else w.sqrt()[:, None] * k(X) * w.sqrt()[None, :]
        res = pivoted_cholesky(X, k, 60, weight=weight, block_size=block_size)
        assert res.pivots.tolist() == _textbook_greedy(K, 60)
        ref = pivoted_cholesky(X, k, 60, weight=weight, block_size=250)  # one panel
        torch.testing.assert_close(res.factor, ref.factor, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="block_size"):
        pivoted_cholesky(X, k, 3, block_size=0)
