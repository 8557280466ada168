"""FFTBR / IFFTBR / FWHT (reference qmc-dpp.md, Part F items 1-3)."""

import math

import pytest
import scipy.linalg
import torch

from snnk.lattice import double, fftbr, fwht, ifftbr, omega
from snnk.lattice.transforms import bit_reverse_permutation


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("m", range(17))
def test_fftbr_is_fft_of_bit_reversed_input_and_ifftbr_inverts_it(m):
    n = 2**m
    x = torch.complex(_randn(3, n, seed=m), _randn(3, n, seed=m + 100))
    ref = torch.fft.fft(x[..., bit_reverse_permutation(n)], norm="ortho")
    y = fftbr(x)
    assert torch.linalg.vector_norm(y - ref) <= 1e-12 * torch.linalg.vector_norm(x)
    assert torch.linalg.vector_norm(ifftbr(y) - x) <= 1e-12 * torch.linalg.vector_norm(x)
    # the real-input path (rfft + Hermitian symmetry) agrees with the complex one
    r = x.real
    assert torch.linalg.vector_norm(fftbr(r) - fftbr(r + 0j)) <= 1e-12 * r.norm()


def test_bit_reversal_permutation_small():
    assert bit_reverse_permutation(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]


@pytest.mark.parametrize("shape", [(1024,), (2, 3, 256), (5, 1)])
def test_transforms_are_batched(shape):
    x = _randn(*shape, seed=1)
    for t in (fftbr, fwht):
        y = t(x)
        assert y.shape == x.shape
        flat = t(x.reshape(-1, shape[-1])).reshape(shape)
        assert torch.allclose(y, flat, atol=1e-14)


@pytest.mark.parametrize("m", range(17))
def test_fwht_is_an_orthonormal_involution(m):
    x = _randn(2, 2**m, seed=m)
    y = fwht(x)
    assert torch.linalg.vector_norm(fwht(y) - x) <= 1e-12 * x.norm()
    assert abs(float(y.norm() - x.norm())) <= 1e-12 * float(x.norm())


@pytest.mark.parametrize("m", range(11))
def test_fwht_matches_scipy_hadamard(m):
    n = 2**m
    h = torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float64) / math.sqrt(n)
    x = _randn(4, n, seed=m)
    assert torch.allclose(fwht(x), x @ h.T, atol=1e-12, rtol=0)


def test_fwht_complex_input():
    x = torch.complex(_randn(64), _randn(64, seed=1))
    assert torch.allclose(fwht(x), torch.complex(fwht(x.real), fwht(x.imag)))


@pytest.mark.parametrize("kind,transform", [("lattice", fftbr), ("net", fwht)])
@pytest.mark.parametrize("m", [0, 1, 5, 12])
def test_doubling_identity(kind, transform, m):
    n = 2**m
    y1, y2 = _randn(3, n, seed=1), _randn(3, n, seed=2)
    full = transform(torch.cat([y1, y2], -1))
    fast = double(transform(y1), transform(y2), kind)
    assert torch.allclose(fast, full, atol=1e-12 * float(full.abs().max()), rtol=0)
    if kind == "lattice":
        k = torch.arange(n, dtype=torch.float64)
        expected = torch.exp(-1j * math.pi * k / n)
        assert torch.allclose(omega(n, kind), expected, atol=1e-15)
    else:
        assert torch.equal(omega(n, kind), torch.ones(n, dtype=torch.float64))


def test_transforms_support_autograd():
    x = _randn(64).requires_grad_(True)
    (fftbr(x).abs() ** 2).sum().backward()  # Parseval: gradient 2x
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-12)
    x.grad = None
    (fwht(x) ** 2).sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: fwht(v), (_randn(16).requires_grad_(True),))


def test_float32_and_power_of_two_check():
    x = _randn(32, dtype=torch.float32)
    assert fwht(x).dtype == torch.float32
    assert fftbr(x).dtype == torch.complex64
    with pytest.raises(ValueError, match="power of two"):
        fwht(_randn(12))
    with pytest.raises(ValueError, match="power of two"):
        fftbr(_randn(12))
