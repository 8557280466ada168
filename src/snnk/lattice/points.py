"""Extensible low-discrepancy designs whose Gram matrices have fast structure.

Rank-1 lattice (radical-inverse order, random shift)
    ``x_i = (φ₂(i) g + Δ) mod 1``, with ``φ₂`` the van der Corput radical inverse, ``g`` an
    integer generating vector and ``Δ ~ U[0, 1)^d``. Every prefix of ``n = 2^m`` points is the
    lattice ``{(j g / n + Δ) mod 1}``: a cyclic group up to the shift, so a shift-invariant
    kernel gives a Gram matrix that the FFT in bit-reversed order diagonalises.

Base-2 digital net (Sobol', radical-inverse order, LMS and/or digital shift)
    The ``t``-bit integer of coordinate ``j`` of point ``i`` is ``C_j · bits(i)`` over ``F₂``
    (an XOR of the columns of ``C_j`` selected by the bits of ``i``). Linear matrix scrambling
    ``C_j → S_j C_j`` (``S_j`` random ``t × t_C`` lower triangular with unit diagonal) and a
    digital shift ``z ↦ z ⊕ σ_j`` keep the net linear, so ``z_i ⊕ z_k = z_{i⊕k} ⊕ σ ⊕ σ``:
    a digitally-shift-invariant kernel gives a Gram matrix that the Walsh–Hadamard transform
    diagonalises. All bit arithmetic is on int64 with ``t ≤ 63`` (float64 holds only 53 bits).

A call ``design(n, n_start)`` returns a :class:`PointSet` that remembers where it came from;
:class:`~snnk.lattice.operator.StructuredGram` accepts only such point sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from snnk._utils import check_in, check_positive_int, make_generator
from snnk.lattice._data import JOE_KUO_INIT, JOE_KUO_POLY, KUO_LATTICE, KUO_LATTICE_M_MAX

__all__ = ["DigitalNet", "Lattice", "PointSet", "bit_reverse", "parity"]


def bit_reverse(i: torch.Tensor, m: int) -> torch.Tensor:
    """Reverse the lowest ``m`` bits of non-negative int64 integers ``i`` (any shape)."""
    out = torch.zeros_like(i)
    for b in range(m):
        out |= ((i >> b) & 1) << (m - 1 - b)
    return out


def parity(v: torch.Tensor) -> torch.Tensor:
    """Parity (popcount mod 2) of int64 integers, elementwise, by folding the bits."""
    for s in (32, 16, 8, 4, 2, 1):
        v = v ^ (v >> s)
    return v & 1


def _is_pow2_or_zero(n: int) -> bool:
    return n == 0 or (n & (n - 1)) == 0


def _check_range(n: int, n_start: int, n_limit: int, name: str) -> None:
    n = check_positive_int(n, "n")
    if n_start < 0 or not _is_pow2_or_zero(n_start) or not _is_pow2_or_zero(n_start + n):
        raise ValueError(
            f"{name} in radical-inverse order gives a lattice/net only for blocks whose ends "
            f"are 0 or powers of two: got n_start={n_start}, n={n} (end {n_start + n}); "
            f"use n = 2^m with n_start = 0, or n_start = n to append the next block"
        )
    if n_start + n > n_limit:
        raise ValueError(
            f"{name} supports at most n_limit = {n_limit} points, asked for {n_start + n}"
        )


@dataclass(frozen=True, eq=False)
class PointSet:
    """Points ``x_{n_start} … x_{n_start+n-1}`` of a :class:`Lattice` or :class:`DigitalNet`.

    Attributes
    ----------
    x : Tensor, shape (n, d)
        The points in ``[0, 1)^d`` (float).
    bits : Tensor or None, shape (n, d)
        For nets: the exact ``t``-bit int64 integers, ``x = bits · 2^{-t}`` (rounded).
    design : Lattice or DigitalNet
        The generator; it defines the kernel structure the points have.
    n_start : int
        Index of the first point in the sequence.
    """

    x: torch.Tensor
    bits: torch.Tensor | None
    design: Lattice | DigitalNet
    n_start: int

    @property
    def n(self) -> int:
        """Number of points."""
        return self.x.shape[0]

    @property
    def d(self) -> int:
        """Dimension."""
        return self.x.shape[1]

    def __len__(self) -> int:
        return self.n


def _float_dtype(dtype) -> torch.dtype:
    """A floating torch dtype for the points (integers would truncate them all to 0)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (torch.float64), got {dtype!r}")
    return dtype


def _draw_bits(shape: tuple[int, ...], t: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform random ``t``-bit int64 integers (``t ≤ 63``) from two 32-bit halves."""
    hi = torch.randint(0, 2**31, shape, generator=generator, dtype=torch.int64)
    lo = torch.randint(0, 2**32, shape, generator=generator, dtype=torch.int64)
    return ((hi << 32) | lo) >> (63 - t)


class Lattice:
    """Rank-1 lattice sequence in radical-inverse order with an optional random shift.

    Parameters
    ----------
    dimension : int
        ``d``. Without ``generating_vector``, ``d ≤ 128`` (Kuo's vector, ``n ≤ 2^20``).
    randomize : {"shift", "none"}, default "shift"
        ``"shift"``: ``x ↦ (x + Δ) mod 1`` with ``Δ ~ U[0,1)^d`` drawn from ``seed``.
    generating_vector : sequence of int, optional
        ``g ∈ ℕ^d`` (odd components below ``2^{m_max}``); default Kuo's
        ``lattice-33002-1024-1048576.9125``.
    m_max : int, optional
        ``log₂`` of the largest supported ``n`` (default 20 for the shipped vector; required
        with a custom vector).
    shift : Tensor, optional, shape (d,)
        An explicit shift in ``[0, 1)^d`` (overrides the random one).
    seed : int, torch.Generator or None
        Source of the random shift.
    dtype, device
        Of the returned points (float64, CPU by default).
    """

    kind = "lattice"

    def __init__(
        self,
        dimension: int,
        *,
        randomize: str = "shift",
        generating_vector=None,
        m_max: int | None = None,
        shift: torch.Tensor | None = None,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        d = self.d = check_positive_int(dimension, "dimension")
        self.randomize = check_in(str(randomize).lower(), "randomize", ("shift", "none"))
        if generating_vector is None:
            if d > len(KUO_LATTICE):
                raise ValueError(
                    f"dimension must be at most {len(KUO_LATTICE)} with the shipped "
                    f"generating vector, got {d}; pass generating_vector= and m_max="
                )
            g, m_max = KUO_LATTICE[:d], KUO_LATTICE_M_MAX
        else:
            g = [int(v) for v in generating_vector]
            if len(g) != d or m_max is None:
                raise ValueError(
                    f"generating_vector needs {d} integers and m_max=, got {len(g)} and "
                    f"m_max={m_max}"
                )
        if not 1 <= int(m_max) <= 31:
            raise ValueError(f"m_max must be in 1..31, got {m_max}")
        self.m_max, self.n_limit = int(m_max), 2 ** int(m_max)
        self.generating_vector = torch.tensor(g, dtype=torch.int64)
        self.dtype, self.device = _float_dtype(dtype), torch.device(device or "cpu")
        self.generator, self.seed = make_generator(seed)
        if shift is not None:
            shift = torch.as_tensor(shift, dtype=torch.float64)
            if shift.numel() != d or not bool(torch.isfinite(shift).all()):
                raise ValueError(f"shift must hold {d} finite numbers, got {shift!r}")
            self.shift = shift.reshape(d) % 1.0
        elif self.randomize == "shift":
            self.shift = torch.rand(d, generator=self.generator, dtype=torch.float64)
        else:
            self.shift = torch.zeros(d, dtype=torch.float64)

    def integers(self, n: int, n_start: int = 0) -> torch.Tensor:
        """Unshifted points as integers ``(φ₂(i) 2^{m_max} · g) mod 2^{m_max}``, shape (n, d)."""
        return self.integers_at(torch.arange(n_start, n_start + n, dtype=torch.int64))

    def integers_at(self, i: torch.Tensor) -> torch.Tensor:
        """Unshifted integer points at the indices ``i`` (int64, shape (k,)), shape (k, d)."""
        v = bit_reverse(i, self.m_max)
        return (v[:, None] * self.generating_vector[None, :]) & (self.n_limit - 1)

    def floats_at(self, i: torch.Tensor) -> torch.Tensor:
        """Shifted float64 points at the indices ``i``, shape (k, d)."""
        return (self.integers_at(i).to(torch.float64) / self.n_limit + self.shift) % 1.0

    def __call__(self, n: int, n_start: int = 0) -> PointSet:
        """Points ``n_start … n_start + n - 1``; both ends must be 0 or powers of two."""
        _check_range(n, n_start, self.n_limit, "Lattice")
        x = self.floats_at(torch.arange(n_start, n_start + n, dtype=torch.int64))
        return PointSet(x.to(device=self.device, dtype=self.dtype), None, self, n_start)

    def __repr__(self) -> str:
        return f"Lattice(dimension={self.d}, randomize={self.randomize!r}, m_max={self.m_max})"


def joe_kuo_matrices(d: int, m_max: int = 32) -> torch.Tensor:
    """Sobol' generating matrices from the Joe–Kuo direction numbers, shape (d, m_max).

    Column ``k`` of ``C_j`` is the integer ``m_k 2^{m_max-1-k}`` (most significant bit = row 0),
    with ``m_k = 2^s m_{k-s} ⊕ m_{k-s} ⊕ ⊕_{i<s} a_i 2^i m_{k-i}`` beyond the ``s`` initial
    numbers (Bratley–Fox recurrence for the primitive polynomial of degree ``s``).
    """
    if d > len(JOE_KUO_POLY):
        raise ValueError(
            f"dimension must be at most {len(JOE_KUO_POLY)} with the shipped Sobol' table, got "
            f"{d}; pass generating_matrices="
        )
    out = []
    for j in range(d):
        p = JOE_KUO_POLY[j]
        if j == 0:
            m = [1] * m_max
        else:
            s = p.bit_length() - 1
            a = [(p >> (s - i)) & 1 for i in range(1, s)]
            m = [int(v) for v in JOE_KUO_INIT[j].split()][:s]
            for k in range(s, m_max):
                v = m[k - s] ^ (m[k - s] << s)
                for i in range(1, s):
                    if a[i - 1]:
                        v ^= m[k - i] << i
                m.append(v)
        out.append([m[k] << (m_max - 1 - k) for k in range(m_max)])
    return torch.tensor(out, dtype=torch.int64)


def linear_matrix_scramble(
    mats: torch.Tensor, t_in: int, t: int, generator: torch.Generator
) -> torch.Tensor:
    """Matoušek's linear matrix scramble ``C_j → S_j C_j`` over ``F₂``.

    ``mats`` holds ``t_in``-bit columns, shape (d, m); ``S_j`` is a random ``t × t_in`` lower
    triangular matrix with unit diagonal. Row ``r`` of the new column is the parity of
    ``S_j[r] & c``. Returns ``t``-bit columns, shape (d, m).
    """
    d = mats.shape[0]
    r = torch.arange(t, dtype=torch.int64)
    # Row r of S as a t_in-bit mask (bit t_in-1-k is entry (r, k)): random entries for k < r,
    # a one at k = r (if r < t_in), zeros above the diagonal.
    rand = _draw_bits((d, t), t_in, generator)
    k = r.clamp(max=t_in)  # number of free entries left of the diagonal
    below = ((1 << k) - 1) << (t_in - k)
    diag = torch.where(r < t_in, 1 << (t_in - 1 - r).clamp(min=0), torch.zeros_like(r))
    rows = (rand & below) | diag  # (d, t)
    bits = parity(rows[:, None, :] & mats[:, :, None])  # (d, m, t)
    weights = 1 << (t - 1 - r)
    return (bits * weights).sum(-1)


class DigitalNet:
    """Base-2 digital sequence (Sobol' by default) in radical-inverse order.

    Parameters
    ----------
    dimension : int
        ``d``; ``d ≤ 128`` with the shipped Joe–Kuo table.
    randomize : {"lms ds", "lms", "ds", "none"}, default "lms ds"
        Linear matrix scrambling and/or a digital shift (both keep the fast structure).
    generating_matrices : Tensor, optional, shape (d, m_max)
        int64 columns, most significant bit first, with ``t_in ≤ 63`` bits each.
    t : int, default 63
        Bits of the output integers (``t ≥`` the bits of the generating matrices).
    shift : Tensor, optional, shape (d,)
        An explicit ``t``-bit digital shift (overrides the random one).
    seed : int, torch.Generator or None
        Source of the scrambling matrices and of the shift.
    dtype, device
        Of the returned float points (float64, CPU by default).
    """

    kind = "net"

    def __init__(
        self,
        dimension: int,
        *,
        randomize: str = "lms ds",
        generating_matrices: torch.Tensor | None = None,
        t: int = 63,
        shift: torch.Tensor | None = None,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        d = self.d = check_positive_int(dimension, "dimension")
        randomize = " ".join(str(randomize).lower().replace("_", " ").split())
        self.randomize = check_in(randomize, "randomize", ("lms ds", "lms", "ds", "none"))
        if generating_matrices is None:
            mats = joe_kuo_matrices(d)
        else:
            mats = torch.as_tensor(generating_matrices, dtype=torch.int64)
            if mats.ndim != 2 or mats.shape[0] != d or int(mats.min()) < 0:
                raise ValueError(
                    f"generating_matrices must be non-negative int64 of shape ({d}, m_max), "
                    f"got shape {tuple(mats.shape)}"
                )
        t_in = max(int(mats.max()).bit_length(), 1)
        if not t_in <= int(t) <= 63:
            raise ValueError(f"t must be in {t_in}..63 (bits of the matrices..int64), got {t}")
        self.t, self.m_max, self.n_limit = int(t), mats.shape[1], 2 ** mats.shape[1]
        self.dtype, self.device = _float_dtype(dtype), torch.device(device or "cpu")
        self.generator, self.seed = make_generator(seed)
        if "lms" in self.randomize:
            mats = linear_matrix_scramble(mats, t_in, self.t, self.generator)
        else:
            mats = mats << (self.t - t_in)
        self.generating_matrices = mats
        if shift is not None:
            shift = torch.as_tensor(shift)
            if shift.is_floating_point() or shift.numel() != d:
                raise ValueError(f"shift must hold {d} integers (t-bit digital shifts)")
            shift = shift.to(torch.int64).reshape(d)
            if int(shift.min()) < 0 or (self.t < 63 and int(shift.max()) >> self.t):
                raise ValueError(f"shift must hold t-bit integers in [0, 2^{self.t}), got {shift}")
            self.shift = shift
        elif "ds" in self.randomize:
            self.shift = _draw_bits((d,), self.t, self.generator)
        else:
            self.shift = torch.zeros(d, dtype=torch.int64)

    def integers(self, n: int, n_start: int = 0) -> torch.Tensor:
        """The ``t``-bit integers of points ``n_start … n_start+n-1``, shape (n, d).

        Built by doubling, ``Z_{2^{k+1}} = [Z_{2^k}; Z_{2^k} ⊕ c_k]`` (O(n d) XORs); a block
        that starts at a multiple ``a`` of ``n`` is ``Z_n ⊕ (C · bits(a))``.
        """
        mats = self.generating_matrices
        z = torch.zeros(1, self.d, dtype=torch.int64)
        for k in range(max(n - 1, 0).bit_length()):
            z = torch.cat([z, z ^ mats[:, k]], 0)
        offset = torch.zeros(self.d, dtype=torch.int64)
        for k in range(self.m_max):
            if (n_start >> k) & 1:
                offset ^= mats[:, k]
        return z[:n] ^ offset ^ self.shift

    def integers_at(self, i: torch.Tensor) -> torch.Tensor:
        """The ``t``-bit integers of the points with indices ``i`` (int64, (k,)), shape (k, d)."""
        z = torch.zeros(i.shape[0], self.d, dtype=torch.int64)
        for k in range(int(i.max()).bit_length() if i.numel() else 0):
            z ^= ((i >> k) & 1)[:, None] * self.generating_matrices[:, k]
        return z ^ self.shift

    def __call__(self, n: int, n_start: int = 0) -> PointSet:
        """Points ``n_start … n_start + n - 1``; both ends must be 0 or powers of two."""
        _check_range(n, n_start, self.n_limit, "DigitalNet")
        bits = self.integers(n, n_start)
        x = to_float(bits, self.t).to(device=self.device, dtype=self.dtype)
        return PointSet(x, bits.to(self.device), self, n_start)

    def __repr__(self) -> str:
        return f"DigitalNet(dimension={self.d}, randomize={self.randomize!r}, t={self.t})"


def to_float(bits: torch.Tensor, t: int) -> torch.Tensor:
    """``t``-bit integers to float64 in ``[0, 1)``: ``bits · 2^{-t}`` from the top 53 bits.

    Dropping the low bits first keeps ``2^t - 1`` below 1 (plain rounding would give 1.0).
    """
    drop = max(t - 53, 0)
    return (bits >> drop).to(torch.float64) * math.ldexp(1.0, -(t - drop))


def to_bits(x: torch.Tensor, t: int) -> torch.Tensor:
    """Floats in ``[0, 1)`` to ``t``-bit integers, ``⌊x 2^t⌋`` (exact for ``t ≤ 53``)."""
    drop = max(t - 53, 0)
    xb = torch.floor((x.to(torch.float64) % 1.0) * math.ldexp(1.0, t - drop)).to(torch.int64)
    return xb << drop
