"""Shift-invariant (SI) and digitally-shift-invariant (DSI) product kernels on ``[0, 1)^d``.

Both are ``K(x, z) = S ∏_j (1 + γ_j K̃_{α_j}(δ_j))`` with scale ``S > 0``, product weights
``γ_j > 0`` and per-dimension smoothness ``α_j``. Each factor ``K̃`` has mean zero over
``[0, 1)``, so ``∫ K(x, z) dx = S``.

SI (Korobov type, lattices): ``δ_j = (x_j − z_j) mod 1`` and
``K̃_α(δ) = (−1)^{α+1} (2π)^{2α} / (2α)! · B_{2α}(δ) = Σ_{k≠0} e^{2πikδ} / |k|^{2α}``
(``B_n`` the Bernoulli polynomial), for ``α ∈ {1, …, 5}``; ``K̃_α(0) = 2ζ(2α)``.

DSI (base 2, digital nets): ``δ_j = x_j ⊕ z_j`` on ``t``-bit integers. With
``β(x) = −⌊log₂ x⌋`` and ``t_ν(x) = 2^{−νβ(x)}`` (``β(0) = t_ν(0) = 0``):

- ``K̃₁(x) = 1 − 3 · 2^{⌊log₂ x⌋}``, ``K̃₁(0) = 1``;
- ``K̃₂(x) = −βx + (5/2)(1 − t₁) − 1``;
- ``K̃₃(x) = βx² − 5(1 − t₁)x + (43/18)(1 − t₂) − 1``;
- ``K̃₄(x) = −(2/3)βx³ + 5(1 − t₁)x² − (43/9)(1 − t₂)x + (701/294)(1 − t₃)
  + β[(1/48) Σ_{a≥0} wal_{2^a}(x) 2^{−3a} − 1/42] − 1``;

for ``α ≥ 2``, ``K̃_α(x) = Σ_{k≥1} wal_k(x) 2^{−μ_α(k)}`` with Dick's weight ``μ_α`` (the sum of
the ``α`` largest 1-bit positions of ``k``). The Walsh sum in ``K̃₄`` is taken over every bit
that float64 resolves (QMCPy stops at ``2^{−3a} < 10^{-8}``, a ~1e-9 difference).

Products are formed as ``1 + (∏(1 + p_j) − 1)`` with the bracket accumulated as
``v ← v + p_j + v p_j``, which keeps ``K − S`` (the "K − 1" form) free of cancellation.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from fractions import Fraction
from functools import cache

import torch

from snnk._utils import check_positive_int
from snnk.lattice.points import PointSet, to_bits, to_float

__all__ = ["DSIKernel", "SIKernel", "bernoulli_polynomial", "dsi_factor", "si_factor"]


@cache
def _bernoulli_coefficients(n: int) -> tuple[float, ...]:
    """Coefficients of ``B_n(x) = Σ_k C(n, k) B_k x^{n-k}``, highest power first."""
    b = [Fraction(1)]
    for m in range(1, n + 1):  # B_m = -1/(m+1) Σ_{k<m} C(m+1, k) B_k  (so B_1 = -1/2)
        b.append(-sum(math.comb(m + 1, k) * b[k] for k in range(m)) / (m + 1))
    return tuple(float(math.comb(n, k) * b[k]) for k in range(n + 1))


def bernoulli_polynomial(n: int, x: torch.Tensor) -> torch.Tensor:
    """``B_n(x)`` by Horner's rule (exact rational coefficients rounded once)."""
    c = _bernoulli_coefficients(n)
    if torch.is_grad_enabled() and x.requires_grad:
        out = torch.zeros_like(x)
        for v in c:
            out = out * x + v
        return out
    out = torch.full_like(x, c[0])  # = 0 · x + c₀; then the same roundings, in place
    for v in c[1:]:
        out.mul_(x).add_(v)
    return out


def si_factor(delta: torch.Tensor, alpha: int) -> torch.Tensor:
    """``K̃_α((δ) mod 1)`` of the SI kernel, elementwise, ``α ∈ {1, …, 5}``."""
    if alpha not in (1, 2, 3, 4, 5):
        raise ValueError(f"alpha must be in 1..5 for the SI kernel, got {alpha}")
    coef = (-1) ** (alpha + 1) * (2 * math.pi) ** (2 * alpha) / math.factorial(2 * alpha)
    out = bernoulli_polynomial(2 * alpha, delta % 1.0)
    return out.mul_(coef) if not out.requires_grad else coef * out


def _bit_length(v: torch.Tensor) -> torch.Tensor:
    """Exact bit length of non-negative int64 integers (0 for 0).

    ``frexp`` of the float64 value gives it, except when rounding to 53 bits carried ``v`` up
    to the next power of two (``v ≥ 2^53``); one shift detects and undoes that.
    """
    e = torch.frexp(v.to(torch.float64)).exponent.to(torch.int64)
    over = (v >> (e - 1).clamp(min=0)) == 0
    return torch.where(over & (e > 0), e - 1, e)


_DSI_ZERO = (1.0, 1.5, 25.0 / 18.0, 407.0 / 294.0)


def _beta(xb: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, β, zero)`` for ``x = xb · 2^{-t}``: ``β = −⌊log₂ x⌋`` where ``xb > 0``.

    ``β`` comes from the exponent of ``x`` itself (``x = m 2^e``, ``m ∈ [1/2, 1)``, so
    ``β = 1 − e``): one ``frexp`` of the float that is needed anyway, instead of a bit length
    of the int64. Where ``t > 53`` drops low bits that are all the set bits of ``xb``
    (``0 < xb < 2^{t−53}``, ``x`` rounds to 0) the exact integer bit length is used.
    """
    x = to_float(xb, t)
    beta = torch.frexp(x).exponent.to(torch.float64).neg_().add_(1.0)
    zero = x == 0
    if t > 53 and bool(zero.any()):
        lost = zero & (xb != 0)
        if bool(lost.any()):
            exact = (t + 1 - _bit_length(xb)).to(torch.float64)
            beta = torch.where(lost, exact, beta)
            zero = xb == 0
    return x, beta, zero


def dsi_factor(xb: torch.Tensor, alpha: int, t: int) -> torch.Tensor:
    """``K̃_α(x)`` of the DSI kernel at ``x = xb · 2^{-t}``, ``xb`` int64 (``t ≤ 63``).

    Returns float64 of the same shape; ``α ∈ {1, 2, 3, 4}``.
    """
    if alpha not in (1, 2, 3, 4):
        raise ValueError(f"alpha must be in 1..4 for the DSI kernel, got {alpha}")
    x, beta, zero = _beta(xb, t)
    t1 = torch.exp2(-beta)  # t_1(x) for x > 0
    if alpha == 1:
        out = t1.mul_(-3.0).add_(1.0)  # 1 − 3 t₁
    elif alpha == 2:  # −βx + (5/2)(1 − t₁) − 1, the same roundings in place
        out = beta.mul_(x).neg_().add_(t1.neg_().add_(1.0).mul_(2.5)).sub_(1.0)
    elif alpha == 3:
        out = beta * x**2 - 5.0 * (1.0 - t1) * x + 43.0 / 18.0 * (1.0 - t1 * t1) - 1.0
    else:
        out = _dsi4(xb, x, beta, t1, t)
    return out.masked_fill_(zero, _DSI_ZERO[alpha - 1])


def _dsi4(xb, x, beta, t1, t):
    """``K̃₄`` for ``x > 0`` (the Walsh sum over every bit float64 resolves)."""
    walsh = torch.zeros_like(x)
    for a in range(min(t, 18)):  # 2^{-3a} below float64 resolution beyond a = 18
        bit = (xb >> (t - 1 - a)) & 1
        walsh = walsh + (1.0 - 2.0 * bit.to(torch.float64)) * 2.0 ** (-3 * a)
    walsh = walsh + sum(2.0 ** (-3 * a) for a in range(t, 18))  # zero bits past t
    t2 = t1 * t1
    return (
        -2.0 / 3.0 * beta * x**3
        + 5.0 * (1.0 - t1) * x**2
        - 43.0 / 9.0 * (1.0 - t2) * x
        + 701.0 / 294.0 * (1.0 - t2 * t1)
        + beta * (walsh / 48.0 - 1.0 / 42.0)
        - 1.0
    )


def product_minus_one(p: torch.Tensor) -> torch.Tensor:
    """``∏_j (1 + p_j) − 1`` over the last dimension without cancellation."""
    v = p[..., 0]
    for j in range(1, p.shape[-1]):
        v = v + p[..., j] + v * p[..., j]
    return v


class _ProductKernel(ABC):
    """Shared parts: parameters, the product form and broadcasting."""

    kind = ""
    max_alpha = 0

    def __init__(
        self, dimension: int, alpha=2, weights=None, scale=1.0, *, dtype=None, device=None
    ):
        d = self.d = check_positive_int(dimension, "dimension")
        raw = [alpha] * d if isinstance(alpha, numbers.Real) else list(alpha)
        if not all(isinstance(v, numbers.Real) and float(v) == int(v) for v in raw):
            raise ValueError(f"alpha must be an int or {d} ints, got {alpha!r} (not integers)")
        a = [int(v) for v in raw]
        if len(a) != d or not all(1 <= v <= self.max_alpha for v in a):
            raise ValueError(
                f"alpha must be an int or {d} ints in 1..{self.max_alpha}, got {alpha!r}"
            )
        self.alpha = tuple(a)
        dtype = dtype or torch.float64
        if weights is None:  # γ_j = 2^{1/d} − 1, so that ∏(1 + γ_j) = 2
            weights = torch.full((d,), 2.0 ** (1.0 / d) - 1.0, dtype=dtype)
        weights = torch.as_tensor(weights, dtype=dtype, device=device)
        self.weights = weights.expand(d) if weights.ndim == 0 else weights
        self.scale = torch.as_tensor(scale, dtype=dtype, device=device)
        w_ok = bool(torch.isfinite(self.weights).all()) and not bool((self.weights <= 0).any())
        if self.weights.shape[-1] != d or not w_ok:
            raise ValueError(f"weights must be {d} finite positive numbers, got {weights!r}")
        if not bool(torch.isfinite(self.scale).all()) or bool((self.scale <= 0).any()):
            raise ValueError(f"scale must be finite and positive, got {scale!r}")

    @abstractmethod
    def factors(self, x, z) -> torch.Tensor:
        """``K̃_{α_j}(δ_j)`` for broadcast inputs, shape (..., d) (each kernel has its own δ)."""

    @staticmethod
    @abstractmethod
    def factor_at_zero(alpha: int) -> torch.Tensor:
        """``K̃_α(0)`` (float64 scalar)."""

    def zero_factors(self) -> torch.Tensor:
        """``(K̃_{α_j}(0))_j``, shape (d,), in the weights' dtype."""
        zeros = torch.stack([self.factor_at_zero(a) for a in self.alpha])
        return zeros.to(device=self.weights.device, dtype=self.weights.dtype)

    def _by_alpha(self, delta: torch.Tensor, factor) -> torch.Tensor:
        """Apply ``factor(δ, α)`` to all columns sharing one ``α`` at once, shape (..., d)."""
        kinds = sorted(set(self.alpha))
        if len(kinds) == 1:
            return factor(delta, kinds[0])
        out = None
        for a in kinds:
            cols = [j for j, v in enumerate(self.alpha) if v == a]
            part = factor(delta[..., cols], a)
            if out is None:
                out = part.new_empty((*part.shape[:-1], self.d))
            out[..., cols] = part
        return out

    def combine(self, factors: torch.Tensor, weights=None, scale=None) -> torch.Tensor:
        """``S ∏_j (1 + γ_j K̃_j)`` from factors (..., d): differentiable in γ and S."""
        weights = self.weights if weights is None else weights
        scale = self.scale if scale is None else scale
        return scale * (1.0 + product_minus_one(weights * factors))

    def __call__(self, x, z) -> torch.Tensor:
        """``K(x, z)`` for inputs broadcasting to (..., d); returns (...).

        Without autograd through the weights or the scale (and with one weight vector), the
        product is accumulated one dimension at a time, in place: no ``(..., d)`` float
        tensors, the same roundings as :meth:`combine` of :meth:`factors`.
        """
        w, s = self.weights, self.scale
        tracked = torch.is_grad_enabled() and (w.requires_grad or s.requires_grad)
        if tracked or w.ndim != 1 or s.ndim != 0:
            return self.combine(self.factors(x, z))
        a, b = self._operands(x, z)
        if a.shape[-1] != self.d or b.shape[-1] != self.d:
            raise ValueError(f"inputs must have last dimension d={self.d}")
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            return self.combine(self.factors(x, z))
        v = buf = None
        for j, alpha in enumerate(self.alpha):
            p = self._column(a[..., j], b[..., j], alpha).to(w.dtype).mul_(w[j])
            if v is None:
                v = p
                continue
            buf = torch.mul(v, p) if buf is None else torch.mul(v, p, out=buf)
            v.add_(p).add_(buf)  # v ← (v + p) + v p, as in product_minus_one
        return v.add_(1.0).mul_(s)

    @abstractmethod
    def _operands(self, x, z) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw tensors the kernel compares (floats for SI, int64 bits for DSI)."""

    @abstractmethod
    def _column(self, a: torch.Tensor, b: torch.Tensor, alpha: int) -> torch.Tensor:
        """``K̃_α(δ(a, b))`` of one dimension's broadcast inputs (a new tensor)."""

    def diag(self) -> torch.Tensor:
        """``K(x, x) = S ∏_j (1 + γ_j K̃_{α_j}(0))`` (the same for every point)."""
        return self.combine(self.zero_factors())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dimension={self.d}, alpha={self.alpha})"


class SIKernel(_ProductKernel):
    """Shift-invariant product kernel of smoothness ``α`` for lattices (see module doc).

    Parameters
    ----------
    dimension : int
    alpha : int or sequence of int, default 2
        Smoothness per dimension, in 1..5.
    weights : float, Tensor or None
        Product weights ``γ`` (default ``2^{1/d} − 1``).
    scale : float or Tensor, default 1.0
        ``S``.
    dtype, device
        Of the weights and the scale (float64, CPU by default).
    """

    kind = "lattice"
    max_alpha = 5

    @staticmethod
    def factor_at_zero(alpha: int) -> torch.Tensor:
        """``K̃_α(0) = 2ζ(2α)``."""
        return torch.tensor(2.0 * _zeta(2 * alpha), dtype=torch.float64)

    def _operands(self, x, z) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for name, v in (("x", x), ("z", z)):
            v = torch.as_tensor(v.x if isinstance(v, PointSet) else v)
            if not v.is_floating_point():
                raise TypeError(
                    f"{name} must hold floating points in [0, 1)^d for the SI kernel, got dtype "
                    f"{v.dtype}; convert it with {name}.double()"
                )
            # δ = (x − z) mod 1 of two float16 / bfloat16 values rounds to 3 digits: float32
            out.append(v.float() if v.dtype in (torch.float16, torch.bfloat16) else v)
        return out[0], out[1]

    def _column(self, a, b, alpha) -> torch.Tensor:
        return si_factor((a - b).remainder_(1.0), alpha)  # two reductions, as in factors

    def factors(self, x, z) -> torch.Tensor:
        """SI factors of ``δ = (x − z) mod 1``; ``x``, ``z``: Tensors or PointSets (..., d)."""
        x, z = self._operands(x, z)
        return self._by_alpha((x - z) % 1.0, si_factor)


def _zeta(s: int) -> float:
    """``ζ(s)`` for even ``s`` from ``B_s``: ``(−1)^{s/2+1} B_s (2π)^s / (2 s!)``."""
    b = _bernoulli_coefficients(s)[-1]
    return (-1) ** (s // 2 + 1) * b * (2 * math.pi) ** s / (2 * math.factorial(s))


class DSIKernel(_ProductKernel):
    """Digitally-shift-invariant base-2 product kernel for digital nets (see module doc).

    Parameters
    ----------
    dimension : int
    alpha : int or sequence of int, default 2
        Smoothness per dimension, in 1..4.
    weights, scale
        As for :class:`SIKernel`.
    t : int, default 63
        Bits of the integer representation; float inputs are mapped to ``⌊x 2^t⌋``.
    dtype, device
        Of the weights and the scale (float64, CPU by default).
    """

    kind = "net"
    max_alpha = 4

    def __init__(
        self, dimension: int, alpha=2, weights=None, scale=1.0, *, t=63, dtype=None, device=None
    ):
        super().__init__(dimension, alpha, weights, scale, dtype=dtype, device=device)
        if not 1 <= int(t) <= 63:
            raise ValueError(f"t must be in 1..63 (int64 bits), got {t}")
        self.t = int(t)

    @staticmethod
    def factor_at_zero(alpha: int) -> torch.Tensor:
        """``K̃_α(0)``: 1, 3/2, 25/18, 407/294."""
        return torch.tensor((1.0, 1.5, 25.0 / 18.0, 407.0 / 294.0)[alpha - 1], dtype=torch.float64)

    def _bits(self, x) -> torch.Tensor:
        if isinstance(x, PointSet):
            if x.bits is None:
                raise ValueError("DSIKernel needs digital-net points (a DigitalNet PointSet)")
            if x.design.t != self.t:
                raise ValueError(f"the net has t={x.design.t} bits but the kernel t={self.t}")
            return x.bits
        x = torch.as_tensor(x)
        if x.is_floating_point():
            if x.numel() and not bool(torch.isfinite(x).all()):
                raise ValueError("the DSI kernel's float inputs contain NaN or Inf")
            return to_bits(x, self.t)
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"DSI kernel inputs must be floats or int64 bits, got {x.dtype}")
        x = x.to(torch.int64)
        if x.numel() and (int(x.min()) < 0 or (self.t < 63 and int(x.max()) >> self.t)):
            raise ValueError(
                f"integer DSI kernel inputs must be t-bit digits in [0, 2^{self.t}), got values "
                f"in [{int(x.min())}, {int(x.max())}]"
            )
        return x

    def _operands(self, x, z) -> tuple[torch.Tensor, torch.Tensor]:
        return self._bits(x), self._bits(z)

    def _column(self, a, b, alpha) -> torch.Tensor:
        return dsi_factor(a ^ b, alpha, self.t)

    def factors(self, x, z) -> torch.Tensor:
        """DSI factors of ``δ = x ⊕ z`` (int64 bits, floats floored to ``t`` bits, PointSets)."""
        delta = self._bits(x) ^ self._bits(z)
        return self._by_alpha(delta, lambda v, a: dsi_factor(v, a, self.t)).to(self.weights.dtype)
