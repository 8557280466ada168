"""KernelMatrix: blockwise products equal the dense ones; the cache changes nothing but work."""

import pytest
import torch

from snnk.kernels import Gaussian, KernelMatrix, Laplace

F64 = torch.float64


def pts(n, d=3, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


class CountingGaussian(Gaussian):
    """A Gaussian kernel that counts its evaluations."""

    calls = 0

    def __call__(self, *args, **kwargs):
        CountingGaussian.calls += 1
        return super().__call__(*args, **kwargs)


@pytest.mark.parametrize("block_rows", [1, 7, 64, 1000])
def test_products_equal_the_dense_matrix(block_rows):
    k = Laplace(1.3)
    X, Y = pts(50), pts(20, seed=1)
    K = KernelMatrix(k, X, Y, block_rows=block_rows)
    dense = k(X, Y)
    assert K.shape == (50, 20) and K.dtype == F64
    torch.testing.assert_close(K.to_dense(), dense)
    B = torch.randn(20, 4, dtype=F64)
    torch.testing.assert_close(K @ B, dense @ B)
    torch.testing.assert_close(K @ B[:, 0], dense @ B[:, 0])
    R = torch.randn(50, 3, dtype=F64)
    torch.testing.assert_close(K.T @ R, dense.T @ R)
    torch.testing.assert_close(K.rmatmul(R[:, 0]), dense.T @ R[:, 0])
    assert K.T.shape == (20, 50) and K.T.T is K
    torch.testing.assert_close(K.T.to_dense(), dense.T)
    w = torch.rand(50, dtype=F64)
    torch.testing.assert_close(K.gram_matmul(B, w), dense.T @ (w[:, None] * (dense @ B)))
    torch.testing.assert_close(K.gram_matmul(B), dense.T @ (dense @ B))


def test_square_operator_and_diag():
    k = Gaussian(0.7)
    X = pts(30)
    K = KernelMatrix(k, X, block_rows=8)
    assert K.shape == (30, 30) and K.symmetric
    torch.testing.assert_close(K.diag(), torch.diagonal(k(X)))
    with pytest.raises(ValueError, match="square"):
        KernelMatrix(k, X, pts(5)).diag()


def test_dtypes_product_in_kernel_dtype_accumulated_in_the_wider_one():
    k = Gaussian(1.0)
    X32, Y32 = pts(40, dtype=torch.float32), pts(10, seed=1, dtype=torch.float32)
    K = KernelMatrix(k, X32, Y32, block_rows=16)
    assert K.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    B = torch.randn(10, 2, dtype=F64, generator=g)
    out = K @ B
    assert out.dtype == F64  # float32 products, float64 result
    # float32 products: the blocked and the one-shot GEMM may round differently (a few ulps;
    # this test once drew a B that gave 2.4e-7 against a 1e-7 tolerance)
    torch.testing.assert_close(out, (k(X32, Y32) @ B.float()).double(), rtol=1e-6, atol=1e-6)
    R = torch.randn(40, 2, dtype=F64, generator=g)
    assert K.rmatmul(R).dtype == F64
    exact = K.rmatmul(R, dtype=F64)  # widened blocks: float64 products
    torch.testing.assert_close(exact, k(X32, Y32).double().T @ R)
    assert (K @ B.float()).dtype == torch.float32


def test_cache_keeps_blocks_and_changes_no_value():
    k = CountingGaussian(1.0)
    X, Y = pts(60), pts(12, seed=1)
    B = torch.randn(12, 2, dtype=F64)
    plain = KernelMatrix(k, X, Y, block_rows=16)
    cached = KernelMatrix(k, X, Y, block_rows=16, cache_bytes=plain.nbytes)
    assert not plain.cached and cached.cached and plain.nbytes == 60 * 12 * 8
    CountingGaussian.calls = 0
    first = cached @ B
    assert CountingGaussian.calls == 4  # ceil(60 / 16) blocks
    second = cached @ B
    cached.T @ torch.ones(60, 1, dtype=F64)
    assert CountingGaussian.calls == 4  # kept: no more kernel evaluations
    assert torch.equal(first, second)
    assert torch.equal(first, plain @ B)
    CountingGaussian.calls = 0
    plain @ B
    plain @ B
    assert CountingGaussian.calls == 8  # no cache: every pass recomputes
    small = KernelMatrix(k, X, Y, block_rows=16, cache_bytes=plain.nbytes - 1)
    assert not small.cached


def test_default_block_rows_follow_the_memory_budget():
    from snnk._utils.blocks import KERNEL_BLOCK_ELEMENTS

    K = KernelMatrix(Gaussian(), pts(10), pts(1000, seed=1))
    assert K.block_rows == KERNEL_BLOCK_ELEMENTS // 1000


def test_bad_arguments():
    k = Gaussian()
    with pytest.raises(TypeError, match="Kernel"):
        KernelMatrix("gaussian", pts(3))
    with pytest.raises(ValueError, match="same d"):
        KernelMatrix(k, pts(3), pts(3, d=2))
    with pytest.raises(ValueError, match="block_rows"):
        KernelMatrix(k, pts(3), block_rows=0)
    with pytest.raises(ValueError, match="cache_bytes"):
        KernelMatrix(k, pts(3), cache_bytes=-1)
    with pytest.raises(ValueError, match="rows"):
        KernelMatrix(k, pts(4), pts(3, seed=1)) @ torch.ones(4, 1, dtype=F64)
    assert "KernelMatrix" in repr(KernelMatrix(k, pts(3)))


def test_every_product_stays_on_the_operands_device():
    """Inside ``with torch.device("meta")`` (torch's default device elsewhere) the products
    of CPU operands are computed on the CPU and equal those made outside: no tensor of the
    operator is made on the default device (what a CUDA fit relies on)."""
    X, Y = pts(50), pts(7, seed=1)
    B, U, V = pts(7, d=2, seed=2), pts(7, d=2, seed=3), pts(50, d=2, seed=5)
    w = pts(50, d=1, seed=4)[:, 0].abs()

    def products(cache):
        K = KernelMatrix(Gaussian(), X, Y, block_rows=16, cache_bytes=cache)
        S = KernelMatrix(Gaussian(), X, block_rows=16)
        return [K @ B, K.T @ V, K.gram_matmul(U, w), K.to_dense(), S.diag()]

    for cache in (0, 1e6):
        ref = products(cache)
        with torch.device("meta"):
            got = products(cache)
        for r, g in zip(ref, got, strict=True):
            assert g.device.type == "cpu"
            torch.testing.assert_close(g, r, rtol=0, atol=0)
