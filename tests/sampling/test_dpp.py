"""Finite DPP samplers: the reference's Part F, items 15-19 (qmc-dpp.md)."""

import numpy as np
import pytest
import torch

from snnk.sampling import (
    FiniteDPP,
    log_elementary_symmetric_polynomials,
    orthonormal_basis,
    projection_dpp,
    sample_dpp,
    sample_k_dpp,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_basis(N, r, seed):
    return orthonormal_basis(torch.randn(N, r, generator=gen(seed), dtype=F64))


def ill_conditioned(seed=0, N=784, rank=392):
    """DPPy #61/#70/#80: L = Q diag(ev) Qᵀ, rank 392, eigenvalues log-spaced 1e-12..1."""
    Q, _ = torch.linalg.qr(torch.randn(N, N, generator=gen(seed), dtype=F64))
    ev = torch.zeros(N, dtype=F64)
    ev[:rank] = torch.logspace(-12, 0, rank, dtype=F64)
    return (Q * ev) @ Q.T


def valid(S, size, N):
    return all(len(set(s.tolist())) == size and 0 <= min(s) and max(s) < N for s in S)


def test_projection_dpp_inclusion_and_pair_probabilities():
    """Item 15: N = 30, r = 5, 2e4 samples; singletons and 10 pairs within 4 SE."""
    N, r, T = 30, 5, 20_000
    U = random_basis(N, r, 0)
    K = U @ U.T
    S = projection_dpp(U, T, generator=1)
    assert S.shape == (T, r) and valid(S, r, N)
    member = torch.zeros(T, N, dtype=F64)
    member.scatter_(1, S, 1.0)
    p_hat, p = member.mean(0), K.diag()
    se = (p * (1 - p) / T).sqrt()
    assert bool(((p_hat - p).abs() <= 4 * se + 1e-12).all())
    rng = np.random.default_rng(0)
    for _ in range(10):
        i, j = rng.choice(N, 2, replace=False)
        q = float(K[i, i] * K[j, j] - K[i, j] ** 2)
        q_hat = float((member[:, i] * member[:, j]).mean())
        assert abs(q_hat - q) <= 4 * (q * (1 - q) / T) ** 0.5 + 1e-12


def test_projection_dpp_is_seeded_and_batch_independent():
    U = random_basis(40, 6, 2)
    a = projection_dpp(U, 10, generator=5)
    b = projection_dpp(U, 10, generator=gen(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, projection_dpp(U, 10, generator=6))
    np_state, t_state = np.random.get_state()[1].copy(), torch.get_rng_state()  # noqa: NPY002
    projection_dpp(U, 3, generator=None)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), t_state)


def test_l_ensemble_expected_size_and_marginals():
    """Item 16: E|S| = Σ λ/(1+λ) within 4 SE; the marginal kernel is L(L+I)⁻¹."""
    A = torch.randn(25, 25, generator=gen(3), dtype=F64)
    L = A @ A.T / 10
    dpp = FiniteDPP(L)
    lam = torch.linalg.eigvalsh(L)
    q = lam / (1 + lam)
    assert dpp.expected_size == pytest.approx(float(q.sum()), rel=1e-10)
    K = L @ torch.linalg.inv(L + torch.eye(25, dtype=F64))
    torch.testing.assert_close(dpp.marginal_kernel(), K, atol=1e-10, rtol=0)
    T = 4000
    sizes = torch.tensor([len(s) for s in dpp.sample(T, generator=4)], dtype=F64)
    se = (float((q * (1 - q)).sum()) / T) ** 0.5
    assert abs(float(sizes.mean()) - float(q.sum())) <= 4 * se
    # a correlation kernel gives the same process
    sizes_k = [len(s) for s in FiniteDPP(K=K).sample(T, generator=5)]
    assert abs(np.mean(sizes_k) - float(q.sum())) <= 4 * se
    assert all(len(set(s.tolist())) == len(s) for s in sample_dpp(L, 20, generator=0))


def test_k_dpp_size_always_k_and_any_k_order_on_one_object():
    """Item 16: size exactly k; k1 < k2 on the same object (DPPy's cached-table bug)."""
    A = torch.randn(60, 60, generator=gen(6), dtype=F64)
    dpp = FiniteDPP(A @ A.T)
    for k in (3, 20, 7, 40, 1):
        S = dpp.sample_k(k, 8, generator=k)
        assert S.shape == (8, k) and valid(S, k, 60)
    assert sample_k_dpp(A @ A.T, 5, 2, generator=0).shape == (2, 5)


def test_k_dpp_matches_its_distribution_on_a_small_ground_set():
    """P(S = A) ∝ det L_A over all 2-subsets of 5 items (chi-square-free: 4 SE per set)."""
    A = torch.randn(5, 5, generator=gen(7), dtype=F64)
    L = A @ A.T + 0.1 * torch.eye(5, dtype=F64)
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    w = torch.tensor([float(torch.det(L[[i, j]][:, [i, j]])) for i, j in pairs])
    p = w / w.sum()
    T = 20_000
    S = FiniteDPP(L).sample_k(2, T, generator=8).sort(1).values
    counts = {pr: 0 for pr in pairs}
    for a, b in S.tolist():
        counts[(a, b)] += 1
    for pr, pi in zip(pairs, p.tolist(), strict=True):
        assert abs(counts[pr] / T - pi) <= 4 * (pi * (1 - pi) / T) ** 0.5


def test_log_esp_matches_direct_values_and_never_underflows():
    lam = torch.tensor([0.5, 2.0, 3.0, 0.0], dtype=F64)
    t = log_elementary_symmetric_polynomials(lam, 3)
    e = np.exp(t[-1])
    assert e == pytest.approx([1.0, 5.5, 0.5 * 2 + 0.5 * 3 + 6, 3.0], rel=1e-12)
    tiny = torch.logspace(-12, 0, 392, dtype=F64)
    logs = log_elementary_symmetric_polynomials(tiny, 200)[-1]
    assert np.isfinite(logs).all() and logs[200] < -1000  # e_200 ≈ 1e-590 is representable


def test_ill_conditioned_k_dpp_is_valid_in_100_of_100_runs():
    """Item 17: where DPPy fails 20 of 20 ("probabilities do not sum to 1")."""
    dpp = FiniteDPP(ill_conditioned())
    assert dpp.rank == 392
    S = dpp.sample_k(200, 100, generator=9)
    assert S.shape == (100, 200) and valid(S, 200, 784)


def test_near_duplicate_rows_give_valid_samples():
    """Item 18: 100 copies of one row plus 1e-10 noise; 100 of 100 valid."""
    g = gen(10)
    base = torch.randn(1, 8, generator=g, dtype=F64)
    A = torch.cat(
        [
            base + 1e-10 * torch.randn(100, 8, generator=g, dtype=F64),
            torch.randn(60, 8, generator=g, dtype=F64),
        ]
    )
    U = orthonormal_basis(A)
    S = projection_dpp(U, 100, generator=11)
    assert valid(S, U.shape[1], 160)
    assert all(int((s < 100).sum()) <= 2 for s in S)  # the copies repel each other


def test_hostile_inputs():
    U = random_basis(10, 3, 0)
    with pytest.raises(ValueError, match="orthonormal"):
        projection_dpp(2 * U, 1)
    with pytest.raises(ValueError, match="NaN"):
        projection_dpp(torch.full((4, 2), float("nan")), 1)
    with pytest.raises(ValueError, match="rows"):
        projection_dpp(torch.eye(3, 5, dtype=F64), 1, check=False)
    with pytest.raises(TypeError, match="floating"):
        projection_dpp(torch.ones(4, 2, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="num_samples"):
        projection_dpp(U, 0)
    with pytest.raises(TypeError, match="generator"):
        projection_dpp(U, 1, generator="seed")
    # float16 / float32 inputs are upcast and sampled
    S = projection_dpp(U.to(torch.float32), 2, generator=0, check=False)
    assert S.shape == (2, 3)
    with pytest.raises(ValueError, match="exceeds the numerical rank"):
        FiniteDPP(torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=F64))).sample_k(3)
    with pytest.raises(ValueError, match="positive semi-definite"):
        FiniteDPP(-torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="exactly one"):
        FiniteDPP()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FiniteDPP(K=2 * torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="all zeros"):
        orthonormal_basis(torch.zeros(4, 2))
    # a one-item ground set and huge / tiny scales
    assert FiniteDPP(torch.ones(1, 1, dtype=F64)).sample_k(1).tolist() == [[0]]
    A = torch.randn(12, 4, generator=gen(1), dtype=F64)
    for scale in (1e-150, 1e150):
        S = FiniteDPP(scale * A @ A.T).sample_k(4, 3, generator=0)
        assert valid(S, 4, 12)
    assert FiniteDPP(torch.zeros(3, 3, dtype=F64)).sample(2, generator=0)[0].numel() == 0
