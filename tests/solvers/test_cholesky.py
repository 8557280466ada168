"""jittered_cholesky (the one jitter policy), SPDSolver, lower_gram and add_lower_gram."""

import warnings

import numpy as np
import pytest
import torch

from snnk.kernels import Gaussian
from snnk.solvers import (
    JitterWarning,
    SPDSolver,
    add_lower_gram,
    jittered_cholesky,
    lower_gram,
)

F64 = torch.float64


def spd(n, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=dtype)
    return A @ A.T + n * torch.eye(n, dtype=dtype)


def singular_gram(n=80):
    """A Gaussian Gram matrix of clustered points: numerically singular."""
    X = torch.linspace(0, 1, n, dtype=F64)[:, None]
    return Gaussian(3.0)(X)


def test_positive_definite_is_factored_without_jitter():
    A = spd(30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L = jittered_cholesky(A, name="A")
    assert torch.equal(L, torch.linalg.cholesky(A))


def test_singular_matrix_escalates_warns_with_its_name_and_stays_close():
    g = torch.Generator().manual_seed(0)
    F = torch.randn(20, 3, generator=g, dtype=F64)
    K = F @ F.T  # rank 3, shifted below zero by 1e-9 of its mean diagonal: beyond round-off
    K -= 1e-9 * float(torch.diagonal(K).mean()) * torch.eye(20, dtype=F64)
    assert int(torch.linalg.cholesky_ex(K)[1]) != 0  # the plain factorisation fails
    with pytest.warns(JitterWarning, match="K_test"):
        L = jittered_cholesky(K, name="K_test")
    rel = float(torch.linalg.norm(L @ L.T - K) / torch.linalg.norm(K))
    assert rel < 1e-6  # the smallest rung above 1e-9 that works: 20·eps·100^k ≈ 4e-9
    assert torch.equal(torch.tril(L), L)
    with pytest.raises(np.linalg.LinAlgError, match="K_test"):
        jittered_cholesky(K, name="K_test", max_jitter=1e-12)


def test_roundoff_jitter_is_silent_and_equals_adding_n_eps():
    A = spd(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L = jittered_cholesky(A, jitter="roundoff")
    scale = float(torch.diagonal(A).mean())
    eps = 20 * torch.finfo(F64).eps
    ref = torch.linalg.cholesky(A + (eps * scale) * torch.eye(20, dtype=F64))
    assert torch.equal(L, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jittered_cholesky(singular_gram(), warn=False)  # warn=False: silent escalation


def test_indefinite_matrix_raises_naming_the_matrix():
    A = -torch.eye(5, dtype=F64)
    with pytest.raises(np.linalg.LinAlgError, match=r"could not factor M_bad \(5 x 5\).*raise x"):
        jittered_cholesky(A, name="M_bad", hint="raise x")
    with pytest.raises(ValueError, match="jitter"):
        jittered_cholesky(spd(3), jitter=-1.0)


def test_float32_is_factored_in_float64_unless_told_otherwise():
    A = spd(10, dtype=torch.float32)
    assert jittered_cholesky(A).dtype == F64
    L32 = jittered_cholesky(A, upcast=False)
    assert L32.dtype == torch.float32
    torch.testing.assert_close(L32.double(), jittered_cholesky(A), rtol=1e-5, atol=1e-5)


def test_differentiable_through_the_factor():
    A0 = spd(6)

    def f(A):
        L = jittered_cholesky(0.5 * (A + A.T))
        return torch.log(torch.diagonal(L)).sum()  # ½ log det

    assert torch.autograd.gradcheck(f, (A0.clone().requires_grad_(True),))


def test_batched_input():
    A = torch.stack([spd(5, seed=s) for s in range(3)])
    L = jittered_cholesky(A)
    torch.testing.assert_close(L @ L.mT, A)


def test_spd_solver_methods():
    A = spd(12)
    B = torch.randn(12, 3, dtype=F64)
    s = SPDSolver(A, 0.5)
    assert s.method == "cholesky"
    torch.testing.assert_close((A + 0.5 * torch.eye(12, dtype=F64)) @ s(B), B)
    # rank deficient, alpha = 0: minimum-norm pseudo-inverse solution
    F = torch.randn(12, 4, dtype=F64)
    G = F @ F.T
    p = SPDSolver(G)
    assert p.method == "pinv"
    b = G @ torch.randn(12, 1, dtype=F64)
    torch.testing.assert_close(p(b), torch.linalg.pinv(G, hermitian=True) @ b)
    # numerically singular with a tiny alpha: a silent jitter of at most 1e-10
    K = singular_gram(60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        j = SPDSolver(K, 1e-15)
    assert j.method in ("cholesky+jitter", "pinv")


def test_lower_gram_and_add_lower_gram():
    L = torch.linalg.cholesky(spd(15))
    torch.testing.assert_close(torch.tril(lower_gram(L)), torch.tril(L.T @ L))
    g = torch.Generator().manual_seed(0)
    for D in (40, 700):  # one block, then the blocked lower triangle
        F = torch.randn(50, D, generator=g, dtype=F64)
        w = torch.rand(50, 1, generator=g, dtype=F64)
        acc = torch.zeros(D, D, dtype=F64)
        add_lower_gram(acc, F * w, F)
        torch.testing.assert_close(torch.tril(acc), torch.tril((F * w).T @ F))


@pytest.mark.parametrize("D", [5, 256, 300, 700])
def test_symmetric_from_lower_mirrors_the_lower_triangle_bit_for_bit(D):
    from snnk.solvers import symmetric_from_lower

    G = torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(D))
    out = symmetric_from_lower(G)
    assert torch.equal(out, torch.tril(G) + torch.tril(G, -1).T)
    assert torch.equal(out, out.T)


def test_symmetric_eigh_equals_eigh():
    from snnk.solvers import symmetric_eigh

    A = torch.randn(60, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    A = A @ A.T
    before = torch.get_num_threads()
    lam, V = symmetric_eigh(A)
    assert torch.get_num_threads() == before
    torch.testing.assert_close(V @ torch.diag(lam) @ V.T, A, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(A), rtol=1e-12, atol=1e-10)
