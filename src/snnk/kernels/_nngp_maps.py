r"""Gaussian expectations of activations: the layer maps of infinitely wide networks.

For a pre-activation pair ``(u, v) ~ N(0, [[q₁₁, q₁₂], [q₁₂, q₂₂]])`` every function here
returns the pair

* ``K̃ = E[φ(u) φ(v)]`` (the NNGP map) and
* ``Σ̇ = E[φ′(u) φ′(v)]`` (the derivative map of the NTK; by Price's theorem
  ``∂K̃/∂q₁₂ = Σ̇``),

elementwise over broadcastable tensors ``q11`` (e.g. ``(..., n, 1)``), ``q22`` (``(..., 1, m)``)
and ``q12`` (``(..., n, m)``), and the same pair on the diagonal ``x = x′`` (``q₁₁ = q₂₂ = q₁₂ =
q``) from the exact diagonal formulas, which never take an angle.

Closed forms (as in neural-tangents 0.6.5): ``ABReLU(a, b)`` (ReLU, leaky ReLU, abs) through
the arc-cosine kernel of Cho & Saul, ``a·erf(b·x) + c`` (Williams 1997) and the exact GELU
``x·Φ(x)`` (Tsuchida et al. 2020). Any other activation goes through tensor-product
Gauss–Hermite quadrature of the 2-D Gaussian integral. Angles are ``atan2(s, q₁₂)`` with
``s = √max(q₁₁q₂₂ − q₁₂², ε)`` (never an unclamped ``arccos``), so the maps are finite and
differentiable by autograd everywhere (the tiny ``ε`` keeps ``√`` off its infinite slope).
Where a non-zero variance is outside ``[√ε/eps, √max/4]`` (``eps`` the machine epsilon:
below ``7e-139`` or above ``3e153`` in float64, ``9e-13`` / ``5e18`` in float32) ``q₁₁q₂₂``
would under- or overflow, or ``√ε`` would swamp ``s``: the ABReLU maps then scale every entry
by exact powers of two to ``q₁₁, q₂₂ ∈ [½, 2)`` first (``K̃`` is homogeneous of degree 1,
``Σ̇`` of degree 0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "ACTIVATIONS",
    "CLOSED_FORMS",
    "activation_function",
    "affine_expectations_",
    "diag_expectations",
    "expectations",
]

_TWO_PI = 2.0 * math.pi


def _tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


# -- closed forms ----------------------------------------------------------------------------
def _no_graph(*ts: torch.Tensor) -> bool:
    """No autograd graph to keep: the maps may work in place (fewer passes over memory)."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def _extreme(*qs: torch.Tensor) -> bool:
    """Whether a non-zero variance lies outside ``[√tiny/ε, √max/4]``, where ``q₁₁q₂₂``
    under- or overflows or the ``√tiny`` floor of the angle forms is no longer negligible
    against ``s = √(q₁₁q₂₂ − q₁₂²)`` (float64: ``[7e-139, 3e153]``, float32: ``[9e-13,
    5e18]``). Zero variances (blank patches without bias) are fine: ``q₁₂ = 0`` there and the
    floor adds ``c√tiny`` (``2e-155`` in float64) to ``K̃ = 0``. Not read on the meta device
    or while ``torch.compile`` traces (a host read)."""
    if torch.compiler.is_compiling():
        return False
    for q in qs:
        if q.device.type == "meta" or q.numel() == 0:
            continue
        fi = torch.finfo(q.dtype)
        lo, hi = math.sqrt(fi.tiny) / fi.eps, math.sqrt(fi.max) / 4.0
        q = q.detach()
        low, high = (float(v) for v in torch.aminmax(q))
        if high > hi or (low < lo and bool(((q < lo) & (q != 0)).any())):
            return True
    return False


def _pow2_root(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(2^-h, 2^h)`` with ``h = ⌊e/2⌋`` for ``q = m·2^e`` (``frexp``; ``h = 0`` at ``q = 0``):
    ``q·2^-2h`` lies in ``[½, 2)`` and power-of-two scalings round nothing."""
    _, e = torch.frexp(q.detach())
    h = torch.div(e, 2, rounding_mode="floor")
    one = torch.ones_like(q.detach())
    return torch.ldexp(one, -h), torch.ldexp(one, h)


def _abrelu(q11, q22, q12, a: float, b: float):
    """ABReLU maps; at extreme scales through the exact power-of-two normalisation
    ``q′ᵢⱼ = qᵢⱼ/(σᵢσⱼ)`` (``K̃`` is homogeneous of degree 1 in ``q``, ``Σ̇`` of degree 0), so
    tiny or huge variances neither underflow ``q₁₁q₂₂`` nor meet the ``√tiny`` floor."""
    if not _extreme(q11, q22):
        return _abrelu_unit(q11, q22, q12, a, b)
    i1, s1 = _pow2_root(q11)
    i2, s2 = _pow2_root(q22)
    # pinned x = x′ entries (q₁₁ = q₂₂ = q₁₂) stay exactly equal after the scaling
    k, kdot = _abrelu_unit(q11 * i1 * i1, q22 * i2 * i2, q12 * i1 * i2, a, b)
    return k * s1 * s2, kdot


def _abrelu_unit(q11, q22, q12, a: float, b: float):
    c = (a - b) ** 2 / _TWO_PI
    half = (a * a + b * b) / 2.0
    if _no_graph(q11, q22, q12) and q12.dim() >= 1:
        s = torch.mul(q11, q22)
        if s.shape != q12.shape:
            s = s.expand(q12.shape).clone()
        # not fused (no FMA): pinned x = x′ entries (q₁₂ = q₁₁ = q₂₂) give exactly θ = 0
        s.sub_(torch.square(q12)).clamp_(min=_tiny(s)).sqrt_()
        kdot = torch.atan2(s, q12).mul_(-c).add_(half)
        return s.mul_(c).addcmul_(kdot, q12), kdot
    det = q11 * q22 - q12 * q12
    s = torch.sqrt(det.clamp_min(_tiny(det)))
    theta = torch.atan2(s, q12)
    kdot = half - c * theta
    k = c * s + kdot * q12
    return k, kdot


def _abrelu_diag(q, a: float, b: float):
    half = (a * a + b * b) / 2.0
    return half * q, torch.full_like(q, half)


def _erf(q11, q22, q12, scale: float = 1.0):
    # φ(x) = erf(x) after q ← b²q (b = scale); D = (1 + 2q₁₁)(1 + 2q₂₂)
    b2 = scale * scale
    if b2 != 1.0:
        q11, q22, q12 = b2 * q11, b2 * q22, b2 * q12
    if _no_graph(q11, q22, q12) and q12.dim() >= 1 and q11.shape != q12.shape:
        # h = √(D − 4q₁₂²)/2: K̃ = (2/π) atan2(q₁₂, h), Σ̇ = (2b²/π)/h
        h = torch.mul(2.0 * q11 + 1.0, 2.0 * q22 + 1.0)
        h.addcmul_(q12, q12, value=-4.0).clamp_(min=1.0).sqrt_().mul_(0.5)
        k = torch.atan2(q12, h).mul_(2.0 / math.pi)
        return k, h.reciprocal_().mul_(2.0 * b2 / math.pi)
    den = torch.sqrt(((1.0 + 2.0 * q11) * (1.0 + 2.0 * q22) - 4.0 * q12 * q12).clamp_min(1.0))
    k = (2.0 / math.pi) * torch.atan2(2.0 * q12, den)
    kdot = (4.0 / math.pi) * b2 / den
    return k, kdot


def _erf_diag(q, scale: float = 1.0):
    b2 = scale * scale
    q = b2 * q
    root = torch.sqrt(1.0 + 4.0 * q)  # √((1 + 2q)² − 4q²), without the cancellation
    # asin(2q/(1 + 2q)) = atan2(2q, √(1 + 4q)): the rounded quotient near 1 would cost
    # ~ε√q in asin (1e-8 at q = 1e16), atan2 of the two exact-to-ε legs costs ~ε
    k = (2.0 / math.pi) * torch.atan2(2.0 * q, root)
    kdot = (4.0 / math.pi) * b2 / root
    return k, kdot


def _gelu(q11, q22, q12):
    p = (1.0 + q11) * (1.0 + q22)
    prod = q11 * q22
    # δ² = p − q₁₂² = 1 + q₁₁ + q₂₂ + (q₁₁q₂₂ − q₁₂²) ≥ 1 + q₁₁ + q₂₂ > 0: the first form
    # cancels to ≤ 0 once p·ε ≳ q (q ≳ 1e16 in float64), the second cannot
    delta2 = 1.0 + q11 + q22 + (prod - q12 * q12).clamp_min(0.0)
    delta = torch.sqrt(delta2)
    beta = torch.atan2(q12, delta)
    # (q₁₂² + q₁₁q₂₂δ²)/(pδ) term by term: q₁₁q₂₂δ² overflows where q ≳ 1e77, this at 1e154
    pr = (q11 / (1.0 + q11)) * (q22 / (1.0 + q22))
    k = q12 / 4.0 + (q12 * beta + (q12 / p) * (q12 / delta) + pr * delta) / _TWO_PI
    # (1 − q₁₁q₂₂)/p + 1 = (2 + q₁₁ + q₂₂)/p exactly, without the cancellation
    kdot = (
        0.25 + beta / _TWO_PI + (q12 / (_TWO_PI * delta)) * (1.0 / delta2 + (2.0 + q11 + q22) / p)
    )
    return k, kdot


def _gelu_diag(q):
    r = torch.sqrt(1.0 + 2.0 * q)
    k = q * (0.25 + (q / ((1.0 + q) * r) + 0.5 * torch.atan2(q, r)) / math.pi)
    # Σ̇(x, x) from the off-diagonal formula at q₁₁ = q₂₂ = q₁₂ = q (no angle is involved)
    delta2 = 1.0 + 2.0 * q  # (1 + q)² − q², without the cancellation
    delta = torch.sqrt(delta2)
    beta = torch.atan2(q, delta)
    kdot = 0.25 + beta / _TWO_PI + (q / (_TWO_PI * delta)) * (1.0 / delta2 + 2.0 / (1.0 + q))
    return k, kdot


#: activation name -> (map, diagonal map) with a closed form
CLOSED_FORMS: dict[str, tuple[Callable, Callable]] = {
    "relu": (
        functools.partial(_abrelu, a=0.0, b=1.0),
        functools.partial(_abrelu_diag, a=0.0, b=1.0),
    ),
    "abs": (
        functools.partial(_abrelu, a=-1.0, b=1.0),
        functools.partial(_abrelu_diag, a=-1.0, b=1.0),
    ),
    "erf": (_erf, _erf_diag),
    "gelu": (_gelu, _gelu_diag),
}


# -- activations and their derivatives (quadrature) ---------------------------------------------
def _sigmoid_d(x):
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _silu_d(x):
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _gelu_fn(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_d(x):
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))) + x * torch.exp(-0.5 * x * x) / math.sqrt(
        2.0 * math.pi
    )


#: activation name -> (φ, φ′); every one of them can be evaluated by quadrature
ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "relu": (torch.relu, lambda x: (x > 0).to(x.dtype)),
    "abs": (torch.abs, torch.sign),
    "erf": (torch.erf, lambda x: (2.0 / math.sqrt(math.pi)) * torch.exp(-x * x)),
    "gelu": (_gelu_fn, _gelu_d),
    "tanh": (torch.tanh, lambda x: 1.0 - torch.tanh(x).square()),
    "sigmoid": (torch.sigmoid, _sigmoid_d),
    "sin": (torch.sin, torch.cos),
    "cos": (torch.cos, lambda x: -torch.sin(x)),
    "softplus": (torch.nn.functional.softplus, torch.sigmoid),
    "silu": (torch.nn.functional.silu, _silu_d),
    "identity": (lambda x: x, torch.ones_like),
}


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation ``φ`` of a name in :data:`ACTIVATIONS` (for finite networks)."""
    return ACTIVATIONS[name][0]


@functools.lru_cache(maxsize=16)
def _hermite(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Physicists' Gauss–Hermite nodes and weights (float64)."""
    return np.polynomial.hermite.hermgauss(degree)


def _derivative(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xr).sum(), xr)
    return g


def _quadrature(fn, dfn, q11, q22, q12, degree: int, derivative: bool):
    r"""``(1/π) Σᵢⱼ wᵢwⱼ f(√(2q₁₁) xᵢ) f(√2 q₁₂/√q₁₁ · xᵢ + √(2(q₂₂ − q₁₂²/q₁₁)) xⱼ)``.

    Evaluated on ``(..., chunk, degree)`` node grids, ``chunk`` outer nodes at a time (at
    most ``2²²`` integrand values live at once).
    """
    nodes, weights = _hermite(degree)
    x = torch.as_tensor(nodes, dtype=q12.dtype, device=q12.device)
    w = torch.as_tensor(weights, dtype=q12.dtype, device=q12.device)
    tiny = _tiny(q12)
    q11 = q11.clamp_min(tiny)
    r11 = torch.sqrt(q11)
    shape = torch.broadcast_shapes(q11.shape, q22.shape, q12.shape)
    a = (math.sqrt(2.0) * r11).expand(shape).unsqueeze(-1)  # (..., n, m, 1)
    b = (math.sqrt(2.0) * q12 / r11).expand(shape).unsqueeze(-1)
    # √ floored at the smallest normal number: finite gradients where ρ = ±1 (x = x′)
    c = torch.sqrt((2.0 * (q22 - q12 * q12 / q11)).clamp_min(tiny)).expand(shape)
    cx = (c.unsqueeze(-1) * x).unsqueeze(-2)  # (..., n, m, 1, deg)
    numel = max(1, math.prod(shape))
    chunk = max(1, min(degree, (1 << 22) // (numel * degree)))
    k = q12.new_zeros(shape)
    kd = q12.new_zeros(shape) if derivative else None
    for start in range(0, degree, chunk):
        xi, wi = x[start : start + chunk], w[start : start + chunk]
        u = a * xi  # (..., n, m, chunk)
        v = (b * xi).unsqueeze(-1) + cx  # (..., n, m, chunk, deg)
        k = k + (fn(u) * (fn(v) @ w)) @ wi
        if derivative:
            du = dfn(u) if dfn is not None else _derivative(fn, u)
            dv = dfn(v) if dfn is not None else _derivative(fn, v)
            kd = kd + (du * (dv @ w)) @ wi
    return k / math.pi, (kd / math.pi if derivative else None)


def _quadrature_diag(fn, dfn, q, degree: int, derivative: bool):
    nodes, weights = _hermite(degree)
    x = torch.as_tensor(nodes, dtype=q.dtype, device=q.device)
    w = torch.as_tensor(weights, dtype=q.dtype, device=q.device)
    u = torch.sqrt(2.0 * q.clamp_min(0.0)).unsqueeze(-1) * x
    k = fn(u).square() @ w / math.sqrt(math.pi)
    if not derivative:
        return k, None
    du = dfn(u) if dfn is not None else _derivative(fn, u)
    return k, du.square() @ w / math.sqrt(math.pi)


def _resolve(activation: str | Callable, negative_slope: float) -> tuple[Callable, Callable | None]:
    if callable(activation):
        return activation, None
    if activation == "leaky_relu":
        a = negative_slope
        return (
            lambda x: torch.where(x > 0, x, a * x),
            lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, a)),
        )
    return ACTIVATIONS[activation]


def _closed(name: str | None, negative_slope: float) -> tuple[Callable, Callable] | None:
    if name == "leaky_relu":
        return (
            functools.partial(_abrelu, a=negative_slope, b=1.0),
            functools.partial(_abrelu_diag, a=negative_slope, b=1.0),
        )
    return CLOSED_FORMS.get(name) if name is not None else None


def expectations(
    activation: str | Callable,
    q11: torch.Tensor,
    q22: torch.Tensor,
    q12: torch.Tensor,
    *,
    method: str = "auto",
    degree: int = 100,
    derivative: bool = True,
    negative_slope: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""``(E[φ(u)φ(v)], E[φ′(u)φ′(v)])`` for ``(u, v) ~ N(0, [[q₁₁, q₁₂], [q₁₂, q₂₂]])``.

    Parameters
    ----------
    activation : str or callable
        A name of :data:`ACTIVATIONS` or an elementwise torch function (quadrature; its
        derivative by autograd).
    q11, q22, q12 : torch.Tensor
        Broadcastable variances and covariance (e.g. ``(n, 1)``, ``(1, m)``, ``(n, m)``).
    method : {"auto", "closed", "quadrature"}
        ``"auto"``: the closed form when :data:`CLOSED_FORMS` has one, quadrature otherwise.
    degree : int
        Gauss–Hermite nodes per dimension (cost ``degree²`` per entry).
    derivative : bool
        Also return ``Σ̇`` (else ``None``).
    negative_slope : float
        ``α`` of ``"leaky_relu"`` (``φ(x) = max(x, αx)``; ABReLU(α, 1) in closed form).
    """
    name = activation if isinstance(activation, str) else None
    closed = _closed(name, negative_slope)
    if method != "quadrature" and closed is not None:
        k, kd = closed[0](q11, q22, q12)
        return k, (kd if derivative else None)
    if method == "closed":
        raise ValueError(
            f"activation {activation!r} has no closed form; use method='quadrature' or 'auto' "
            f"(closed forms: {sorted(CLOSED_FORMS)})"
        )
    fn, dfn = _resolve(activation, negative_slope)
    return _quadrature(fn, dfn, q11, q22, q12, degree, derivative)


def diag_expectations(
    activation: str | Callable,
    q: torch.Tensor,
    *,
    method: str = "auto",
    degree: int = 100,
    derivative: bool = True,
    negative_slope: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`expectations` at ``q₁₁ = q₂₂ = q₁₂ = q`` (the diagonal ``x = x′``)."""
    name = activation if isinstance(activation, str) else None
    closed = _closed(name, negative_slope)
    if method != "quadrature" and closed is not None:
        k, kd = closed[1](q)
        return k, (kd if derivative else None)
    if method == "closed":
        raise ValueError(f"activation {activation!r} has no closed form; use method='quadrature'")
    fn, dfn = _resolve(activation, negative_slope)
    return _quadrature_diag(fn, dfn, q, degree, derivative)


def affine_expectations_(
    activation: str | Callable,
    q11: torch.Tensor,
    q22: torch.Tensor,
    q12: torch.Tensor,
    weight_variance: float,
    bias_variance: float,
    *,
    derivative: bool = True,
    negative_slope: float = 0.01,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(σ_w² K̃ + σ_b², σ_w² Σ̇)`` for the closed forms, with the affine map folded into the
    elementwise passes and every buffer reused (no autograd graph; ``q12`` is not modified).
    ``out`` (shape of ``q12``, not overlapping it) receives the first result, so a caller's
    output block is written once, without a copy. ``None`` when there is no such fast path
    (quadrature, a graph, broadcast shapes)."""
    sw, sb = float(weight_variance), float(bias_variance)
    if not (_no_graph(q11, q22, q12) and q12.dim() >= 2 and q11.shape != q12.shape):
        return None
    if activation in ("relu", "abs", "leaky_relu"):
        if _extreme(q11, q22):  # the normalised closed form (:func:`_abrelu`) instead
            return None
        a, b = {"relu": (0.0, 1.0), "abs": (-1.0, 1.0)}.get(activation, (negative_slope, 1.0))
        c = (a - b) ** 2 / _TWO_PI
        half = (a * a + b * b) / 2.0
        s = torch.mul(q11, q22)
        if s.shape != q12.shape:
            return None
        t = torch.square(q12)
        # not fused (no FMA): pinned x = x′ entries (q₁₂ = q₁₁ = q₂₂) give s = √tiny and θ = 0
        # to rounding (the recursion pins their outputs to the diagonal formulas)
        s.sub_(t).clamp_(min=_tiny(s)).sqrt_()
        # θ = atan2(s, q₁₂) = π/2 − atan(q₁₂/s) as s > 0 (q₁₂/s = ±inf gives θ = 0 or π):
        # a division and atan cost 3/4 of atan2, and the π/2 folds into the affine map of
        # σ_w² Σ̇ = σ_w² (half − cθ) = σ_w² (half − cπ/2) + c σ_w² atan(q₁₂/s)
        slope = torch.div(q12, s, out=t).atan_()
        gain = torch.add(q12.new_tensor((half - c * math.pi / 2) * sw), slope, alpha=c * sw, out=t)
        k = torch.add(q12.new_tensor(sb), s, alpha=c * sw, out=s if out is None else out)
        return k.addcmul_(gain, q12), (gain if derivative else None)
    if activation == "erf":
        # ρ = q₁₂ R with R = 1/√((q₁₁ + ½)(q₂₂ + ½)): K̃ = (2/π) asin ρ and Σ̇ = (2/π) R/√(1 − ρ²)
        # (h = √((q₁₁ + ½)(q₂₂ + ½) − q₁₂²) of the atan2 form is √(1 − ρ²)/R). asin costs a
        # third of atan2 and R is an outer product of two vectors: 8 passes over the block.
        # Exactly |ρ| ≤ 1 − 1/(1 + 2 max(q₁₁, q₂₂)), so the clamp to 1 − ε only acts where
        # q ≳ 1/(2ε) (2e15 in float64, 4e6 in float32; there it keeps 1 − ρ² ≥ ε > 0: Σ̇
        # finite). Near |ρ| = 1 both maps lose ~q·ε: the recursions pin x = x′ entries to the
        # diagonal formulas.
        c = 2.0 * sw / math.pi
        R = torch.mul((q11 + 0.5).rsqrt_(), (q22 + 0.5).rsqrt_())
        if R.shape != q12.shape:
            return None
        edge = 1.0 - torch.finfo(q12.dtype).eps
        rho = torch.mul(q12, R).clamp_(-edge, edge)
        k = torch.asin(rho, out=out)
        k = torch.add(q12.new_tensor(sb), k, alpha=c, out=k)
        if not derivative:
            return k, None
        if not 1e-100 < c < 1e100:  # 1/c² would not be a normal number
            t = torch.addcmul(q12.new_tensor(1.0), rho, rho, value=-1.0, out=rho).sqrt_()
            return k, R.div_(t).mul_(c)
        # √((1 − ρ²)/c²) = √(1 − ρ²)/c: one division gives σ_w² Σ̇ = c R/√(1 − ρ²)
        inv = 1.0 / (c * c)
        t = torch.addcmul(q12.new_tensor(inv), rho, rho, value=-inv, out=rho).sqrt_()
        return k, R.div_(t)
    return None
