"""Fast orthonormal transforms that diagonalise lattice and digital-net Gram matrices.

All functions act on the last dimension (size ``n = 2^m``), accept any leading batch shape,
keep the input's device, and are built from differentiable torch ops (autograd works).

``FFTBR(x) = F · P x`` and ``IFFTBR(y) = P · F^{-1} y``, where ``F`` is the orthonormal DFT
(``F_{kj} = e^{-2πi kj/n}/√n``) and ``P`` the bit-reversal permutation (an involution), so
``IFFTBR(FFTBR(x)) = x``. ``FWHT(x) = H x / √n`` with the Sylvester–Hadamard matrix ``H``
(natural order, ``H_{kj} = (-1)^{popcount(k & j)}``); it is symmetric and orthogonal, hence its
own inverse.

Doubling: with ``y = [y₁; y₂]`` (two halves of length ``n``),
``T(y) = [T(y₁) + ω ⊙ T(y₂), T(y₁) − ω ⊙ T(y₂)] / √2``, ``ω_k = e^{-πik/n}`` for FFTBR and
``ω ≡ 1`` for FWHT (:func:`omega`, :func:`double`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = [
    "bit_reverse_permutation",
    "double",
    "fftbr",
    "fwht",
    "ifftbr",
    "log2_exact",
    "omega",
]


def log2_exact(n: int, name: str = "n") -> int:
    """``m`` with ``n = 2^m``, or a ValueError naming ``name``."""
    if not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"{name} must be a power of two (1, 2, 4, ...), got {n}")
    return n.bit_length() - 1


@lru_cache(maxsize=64)
def _bitrev_cpu(n: int) -> torch.Tensor:
    m = log2_exact(n, "the last dimension")
    i = torch.arange(n, dtype=torch.int64)
    out = torch.zeros_like(i)
    for b in range(m):
        out |= ((i >> b) & 1) << (m - 1 - b)
    return out


def bit_reverse_permutation(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Indices ``P`` with ``P[i]`` = ``i`` with its ``log₂ n`` bits reversed (int64, cached)."""
    p = _bitrev_cpu(n)
    return p if device is None or torch.device(device).type == "cpu" else p.to(device)


def _permute_last(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    if n <= 2:
        return x
    return x.index_select(-1, bit_reverse_permutation(n, x.device))


def _fft_ready(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a dtype torch.fft accepts: float16/bfloat16 (and complex32) computed in float32,
    integers and bools in float64."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if x.dtype == torch.complex32:
        return x.to(torch.complex64)
    if not x.is_floating_point() and not x.is_complex():
        return x.double()
    return x


def fftbr(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal FFT of the bit-reversed input along the last dimension.

    Parameters
    ----------
    x : Tensor, shape (..., n), real or complex, ``n = 2^m``; float16 / bfloat16 are computed
        in float32, integers in float64 (``torch.fft`` has no half-precision CPU kernels).

    Returns
    -------
    Tensor, shape (..., n), complex: ``fft(x[..., P], norm="ortho")``.
    """
    n = x.shape[-1]
    log2_exact(n, "the last dimension of x")
    x = _fft_ready(x)
    if x.is_complex():
        return torch.fft.fft(_permute_last(x), dim=-1, norm="ortho")
    # Real input: half the work with rfft, then Hermitian symmetry y[n-k] = conj(y[k]).
    half = torch.fft.rfft(_permute_last(x), dim=-1, norm="ortho")
    return torch.cat((half, half[..., 1 : n - n // 2].flip(-1).conj()), dim=-1)


def ifftbr(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fftbr`: ``ifft(y, norm="ortho")`` in bit-reversed order.

    Parameters
    ----------
    y : Tensor, shape (..., n), ``n = 2^m``

    Returns
    -------
    Tensor, shape (..., n), complex.
    """
    log2_exact(y.shape[-1], "the last dimension of y")
    y = _fft_ready(y)
    return _permute_last(torch.fft.ifft(y, dim=-1, norm="ortho"))


@lru_cache(maxsize=32)
def _hadamard(h: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Unnormalised Sylvester–Hadamard matrix ``H_{kj} = (−1)^{popcount(k & j)}``, (h, h)."""
    i = torch.arange(h)
    a = i[:, None] & i[None, :]
    par = torch.zeros_like(a)
    for s in range(max(h.bit_length() - 1, 0)):
        par ^= (a >> s) & 1
    return (1 - 2 * par).to(dtype=dtype, device=device)


#: bits handled by one dense Hadamard factor (a 32 × 32 GEMM)
_GROUP_BITS = 5


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh–Hadamard transform along the last dimension (an involution).

    ``H_n = H_{2^{b_1}} ⊗ … ⊗ H_{2^{b_r}}`` (Sylvester order). Each step multiplies the
    leading ``b`` index bits by a small dense Hadamard matrix and rotates those bits to the
    end: a transpose copy, then one GEMM ``(B·n/2^b, 2^b) @ H`` (``H`` is symmetric). After
    all ``m`` bits the order is back to natural: ``O(n 2^b m / b)`` flops, ``O(n)`` memory.

    Parameters
    ----------
    x : Tensor, shape (..., n), real or complex, ``n = 2^m``

    Returns
    -------
    Tensor, shape (..., n), same dtype (float64 for integer input): ``H_n x / √n``.
    """
    n = x.shape[-1]
    m = log2_exact(n, "the last dimension of x")
    if x.is_complex():
        return torch.complex(fwht(x.real), fwht(x.imag))
    if not x.is_floating_point():  # integers / bools: float64 (the default float32 loses bits)
        x = x.double()
    lead = x.shape[:-1]
    y = x.reshape(-1, n)
    batch, done = y.shape[0], 0
    while done < m:
        h = 1 << min(_GROUP_BITS, m - done)
        hmat = _hadamard(h, y.dtype, y.device)
        # (B, h, c) -> (B, c, h) @ H: one GEMM with B·c rows; the result is already rotated.
        y = (y.view(batch, h, n // h).transpose(1, 2).reshape(-1, h) @ hmat).view(batch, n)
        done += h.bit_length() - 1
    return (y / math.sqrt(n)).reshape(*lead, n)


def omega(n: int, kind: str, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Twiddle factors of the doubling identity for halves of length ``n``.

    ``kind="lattice"`` (FFTBR): ``ω_k = e^{-πik/n}`` (complex); ``kind="net"`` (FWHT): ones.
    """
    if kind not in ("lattice", "net"):
        raise ValueError(f"kind must be 'lattice' or 'net', got {kind!r}")
    if kind == "net":
        return torch.ones(n, dtype=dtype, device=device)
    k = torch.arange(n, dtype=dtype, device=device)
    return torch.polar(torch.ones_like(k), -math.pi * k / n)


def double(t1: torch.Tensor, t2: torch.Tensor, kind: str) -> torch.Tensor:
    """Transform of ``[y₁; y₂]`` from the transforms ``t1 = T(y₁)``, ``t2 = T(y₂)`` in O(n).

    Parameters
    ----------
    t1, t2 : Tensor, shape (..., n)
        ``T = fftbr`` (``kind="lattice"``) or ``T = fwht`` (``kind="net"``) of the two halves.

    Returns
    -------
    Tensor, shape (..., 2n): ``[t1 + ω ⊙ t2, t1 − ω ⊙ t2] / √2``.
    """
    n = t1.shape[-1]
    if t2.shape[-1] != n:
        raise ValueError(
            f"t1 and t2 must be transforms of halves of one length, got {n} and {t2.shape[-1]}"
        )
    real = t1.real.dtype if t1.is_complex() else t1.dtype
    w = omega(n, kind, dtype=real, device=t1.device)
    wt2 = w * t2
    return torch.cat((t1 + wt2, t1 - wt2), dim=-1) / math.sqrt(2.0)
