r"""Kernels of infinitely wide fully connected networks: the NNGP and the NTK.

A network ``Dense → φ → Dense → φ → … → Dense`` with ``L = depth`` hidden layers in the NTK
parameterisation, each affine layer ``z = (σ_w/√n_in) W a + σ_b b`` with standard normal
``W, b``, tends as every width grows to a Gaussian process whose covariance (the NNGP
kernel ``Σ``) and whose gradient-descent tangent kernel (the NTK ``Θ``) follow the recursion
(Neal 1996; Lee et al. 2018; Jacot et al. 2018; the conventions of neural-tangents)::

    K⁰ = ⟨x, x′⟩ / d,                Σ¹ = σ_w² K⁰ + σ_b²,         Θ¹ = Σ¹
    for ℓ = 1..L:
        K̃ = E[φ(u) φ(v)],  Σ̇ = E[φ′(u) φ′(v)],   (u, v) ~ N(0, Σˡ at (x, x′))
        Σˡ⁺¹ = σ_w² K̃ + σ_b²,       Θˡ⁺¹ = Σˡ⁺¹ + σ_w² Σ̇ ⊙ Θˡ

and ``NNGP = Σᴸ⁺¹``, ``NTK = Θᴸ⁺¹`` (per output unit; the readout layer has the same
``σ_w, σ_b``). The Gaussian expectations come from :mod:`snnk.kernels._nngp_maps`: closed
forms for ReLU / leaky ReLU / abs (arc-cosine), erf and GELU, Gauss–Hermite quadrature for
any other activation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

from snnk._utils import (
    check_in,
    check_positive,
    check_positive_int,
    iter_blocks,
)
from snnk._utils.blocks import KERNEL_BLOCK_ELEMENTS, default_block_rows
from snnk.kernels._base import Kernel
from snnk.kernels._nngp_maps import (
    ACTIVATIONS,
    CLOSED_FORMS,
    affine_expectations_,
    diag_expectations,
    expectations,
)

__all__ = [
    "NNGP",
    "NTK",
    "FullyConnectedKernel",
    "activation_function",
    "fully_connected_kernels",
]

_METHODS = ("auto", "closed", "quadrature")
_CLOSED = (*CLOSED_FORMS, "leaky_relu")


def _in_place(*values: Any) -> bool:
    """No autograd graph runs through these tensors / numbers: update in place."""
    return not torch.is_grad_enabled() or not any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in values
    )


def _pin(q12: torch.Tensor, q11: torch.Tensor, offset: int | None) -> torch.Tensor:
    """``q12`` with its ``x = x′`` entries (row ``i`` of the block, column ``offset + i``) set
    to the exact variances ``q11`` (``Y is X``; ``offset=None``: nothing to pin)."""
    if offset is None:
        return q12
    nb = q12.shape[-2]
    rows = torch.arange(nb, device=q12.device)
    vals = q11[..., 0].expand(*q12.shape[:-2], nb)
    if not _in_place(q12, q11):
        q12 = q12.clone()
    q12[..., rows, rows + offset] = vals
    return q12


def activation_function(
    activation: str | Callable, negative_slope: float = 0.01
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise ``φ`` of an activation name (for finite networks and random features);
    a callable is returned as it is."""
    if callable(activation):
        return activation
    if activation == "leaky_relu":
        return lambda x: torch.nn.functional.leaky_relu(x, negative_slope)
    check_in(activation, "activation", sorted({*ACTIVATIONS, "leaky_relu"}))
    return ACTIVATIONS[activation][0]


class FullyConnectedKernel(Kernel):
    r"""Common parameters and recursion of :class:`NNGP` and :class:`NTK`.

    Parameters
    ----------
    depth : int, default 1
        ``L``, the number of hidden layers (nonlinearities); ``0`` gives the affine kernel
        ``σ_w²⟨x, x′⟩/d + σ_b²``.
    activation : str or callable, default "relu"
        ``"relu"``, ``"leaky_relu"``, ``"abs"``, ``"erf"``, ``"gelu"`` (exact ``xΦ(x)``) have
        closed forms; ``"tanh"``, ``"sigmoid"``, ``"sin"``, ``"cos"``, ``"softplus"``,
        ``"silu"``, ``"identity"`` or any elementwise torch function are integrated by
        Gauss–Hermite quadrature (a callable kernel cannot be saved in a model file).
    weight_variance : float, default 1.0
        ``σ_w²`` of every layer (``≥ 0``; 2 keeps ReLU networks at constant scale).
    bias_variance : float, default 0.0
        ``σ_b²`` of every layer (``≥ 0``).
    method : {"auto", "closed", "quadrature"}, default "auto"
        ``"auto"`` uses the closed form when there is one.
    quadrature_degree : int, default 100
        Gauss–Hermite nodes per dimension (cost ``degree²`` per entry and layer; 100 gives
        ~1e-8 for smooth activations at pre-activation variances ≲ 2, 200 at ≈ 4).
    negative_slope : float, default 0.01
        ``α`` of ``"leaky_relu"``, ``φ(x) = max(x, αx)``.

    Notes
    -----
    Evaluated in row blocks of ``X`` (a few ``rows x m`` buffers per block, the kernel memory
    budget), with any leading batch shape, in float64 when given float64 (float16/bfloat16
    in float32). Autograd flows through every closed form and quadrature rule.
    """

    def __init__(
        self,
        depth: int = 1,
        activation: str | Callable = "relu",
        weight_variance: float = 1.0,
        bias_variance: float = 0.0,
        *,
        method: str = "auto",
        quadrature_degree: int = 100,
        negative_slope: float = 0.01,
    ):
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
            raise ValueError(f"depth must be a non-negative integer (hidden layers), got {depth!r}")
        self.depth = int(depth)
        if isinstance(activation, str):
            activation = activation.lower()
            check_in(activation, "activation", sorted({*ACTIVATIONS, "leaky_relu"}))
        elif not callable(activation):
            raise TypeError(
                f"activation must be a name ({sorted({*ACTIVATIONS, 'leaky_relu'})}) or an "
                f"elementwise torch function, got {activation!r}"
            )
        self.activation = activation
        self.weight_variance = check_positive(weight_variance, "weight_variance", allow_zero=True)
        self.bias_variance = check_positive(bias_variance, "bias_variance", allow_zero=True)
        self.method = check_in(method, "method", _METHODS)
        if method == "closed" and activation not in _CLOSED:
            raise ValueError(
                f"activation {activation!r} has no closed form; use method='auto' or "
                f"'quadrature' (closed forms: {sorted(_CLOSED)})"
            )
        if (
            isinstance(quadrature_degree, bool)
            or not isinstance(quadrature_degree, numbers.Integral)
            or not 2 <= quadrature_degree <= 350
        ):
            raise ValueError(
                f"quadrature_degree must be an integer in [2, 350] (Gauss-Hermite nodes), got "
                f"{quadrature_degree!r}"
            )
        self.quadrature_degree = int(quadrature_degree)
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
            raise TypeError(f"negative_slope must be a real number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    # -- configuration ----------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "activation": self.activation,
            "weight_variance": self.weight_variance,
            "bias_variance": self.bias_variance,
            "method": self.method,
            "quadrature_degree": self.quadrature_degree,
            "negative_slope": self.negative_slope,
        }

    @property
    def uses_quadrature(self) -> bool:
        """Whether the layer maps are integrated numerically."""
        return self.method == "quadrature" or self.activation not in _CLOSED

    def _block_rows(self, m: int) -> int:
        """Rows per block: about 8 live ``rows x m`` buffers (x degree for quadrature)."""
        work = 8 * (self.quadrature_degree if self.uses_quadrature else 1)
        return default_block_rows(max(1, m) * work, KERNEL_BLOCK_ELEMENTS, minimum=1)

    def __call__(self, X: Any, Y: Any | None = None, *, block_rows: int | None = None):
        out = self._evaluate(X, Y, block_rows, ntk=isinstance(self, NTK))
        out = out[1] if isinstance(self, NTK) else out[0]
        self._check_overflow(out)
        return out

    def _evaluate(self, X, Y, block_rows: int | None, ntk: bool):
        """``(NNGP, NTK or None)`` in row blocks; with ``Y=None`` the ``x = x′`` entries are
        pinned to the diagonal recursion at every layer (no spurious angle)."""
        same = Y is None
        Xw, Yw, batch, out_dtype = self._inputs(X, Y)
        work = Xw.dtype
        n, m = Xw.shape[-2], Yw.shape[-2]
        block_rows = self._block_rows(m) if block_rows is None else block_rows
        block_rows = check_positive_int(block_rows, "block_rows")
        if block_rows >= n:
            nngp, theta = self._recursion(Xw, Yw, ntk, offset=0 if same else None)
            nngp = nngp.expand(*batch, n, m)
            theta = None if theta is None else theta.expand(*batch, n, m)
        else:
            nngp = torch.empty(*batch, n, m, dtype=work, device=Xw.device)
            theta = torch.empty_like(nngp) if ntk else None
            columns = self._columns(Yw)
            for rows in iter_blocks(n, block_rows):
                off = rows.start if same else None
                views = (nngp[..., rows, :], None if theta is None else theta[..., rows, :])
                got = self._recursion(
                    Xw[..., rows, :], Yw, ntk, offset=off, out=views, columns=columns
                )
                for view, value in zip(views, got, strict=True):
                    # the last layer writes into the output block itself when it can
                    if view is not None and value.data_ptr() != view.data_ptr():
                        view.copy_(value)
        return nngp.to(out_dtype), (None if theta is None else theta.to(out_dtype))

    # -- the recursion, one layer at a time -----------------------------------------------------
    def _map_options(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "degree": self.quadrature_degree,
            "negative_slope": self.negative_slope,
        }

    def input_layer(self, X: torch.Tensor, Y: torch.Tensor, *, columns=None):
        """``(Σ¹(x,x), Σ¹(y,y), Σ¹(x,y))`` of shapes ``(..., n, 1)``, ``(..., 1, m)``,
        ``(..., n, m)``: the first affine layer ``σ_w²⟨x, y⟩/d + σ_b²``. ``columns`` is
        :meth:`_columns` of ``Y``, computed once for all row blocks."""
        d = X.shape[-1]
        sw, sb = self.weight_variance / d, self.bias_variance
        Ya, q22 = self._columns(Y) if columns is None else columns
        if Ya is not None and X.dim() == 2 and _in_place(X):
            # one GEMM of the inputs augmented by a constant column: [√σ_w x, σ_b]·[√σ_w y, σ_b]
            # (no extra pass over the n x m output for the bias)
            Xa = torch.cat([X * math.sqrt(sw), X.new_full((X.shape[0], 1), math.sqrt(sb))], 1)
            q12 = Xa @ Ya.T
        else:
            q12 = (X @ Y.transpose(-1, -2)) * sw + sb
        q11 = X.square().sum(-1, keepdim=True) * sw + sb
        return q11, q22, q12

    def _columns(self, Y: torch.Tensor):
        """``(augmented Y or None, Σ¹(y, y))``: what :meth:`input_layer` needs of ``Y``."""
        sw, sb = self.weight_variance / Y.shape[-1], self.bias_variance
        q22 = (Y.square().sum(-1) * sw + sb).unsqueeze(-2)
        plain = isinstance(sw, numbers.Real) and isinstance(sb, numbers.Real)
        if not (plain and Y.dim() == 2 and _in_place(Y)):
            return None, q22
        Ya = torch.cat([Y * math.sqrt(sw), Y.new_full((Y.shape[0], 1), math.sqrt(sb))], 1)
        return Ya, q22

    def layer(self, q11, q22, q12, *, derivative: bool = True, out=None):
        r"""One hidden layer: ``(Σ′₁₁, Σ′₂₂, Σ′₁₂, σ_w² Σ̇)`` with ``Σ′ = σ_w² E[φφ] + σ_b²``.

        ``q11`` and ``q22`` are the variances (broadcastable to ``q12``); the diagonal
        entries go through the exact diagonal formulas. The last entry multiplies the NTK
        (``Θ′ = Σ′₁₂ + σ_w² Σ̇ ⊙ Θ``); it is ``None`` when ``derivative=False``. ``out``
        (optional, shape of ``q12``) may receive ``Σ′₁₂`` (the closed forms' fast path).
        """
        opts = self._map_options()
        sw, sb = self.weight_variance, self.bias_variance
        k11, _ = diag_expectations(self.activation, q11, derivative=False, **opts)
        k22, _ = diag_expectations(self.activation, q22, derivative=False, **opts)
        fast = (
            affine_expectations_(
                self.activation,
                q11,
                q22,
                q12,
                sw,
                sb,
                derivative=derivative,
                negative_slope=self.negative_slope,
                out=out,
            )
            if self.method != "quadrature" and _in_place(sw, sb)
            else None
        )
        if fast is not None:
            return sw * k11 + sb, sw * k22 + sb, fast[0], fast[1]
        k, kd = expectations(self.activation, q11, q22, q12, derivative=derivative, **opts)
        if _in_place(k, sw, sb):
            return (
                sw * k11 + sb,
                sw * k22 + sb,
                k.mul_(sw).add_(sb),
                (kd.mul_(sw) if derivative else None),
            )
        return (
            sw * k11 + sb,
            sw * k22 + sb,
            sw * k + sb,
            (sw * kd if derivative else None),
        )

    def _recursion(self, X, Y, ntk: bool, offset: int | None = None, out=None, columns=None):
        """``(NNGP, NTK or None)`` of the rows ``X`` against ``Y``; ``out`` (two views of the
        output, or ``None``) may receive the last layer's values directly."""
        q11, q22, q12 = self.input_layer(X, Y, columns=columns)
        q12 = _pin(q12, q11, offset)
        theta = q12 if ntk else None
        for layer in range(self.depth):
            last = out is not None and layer == self.depth - 1
            if ntk and offset is not None:
                # σ_w² Σ̇ at x = x′ from the diagonal formula: the NTK's x = x′ entries follow
                # the diagonal recursion too (the angle forms lose ~q·ε there)
                kd11 = diag_expectations(self.activation, q11, **self._map_options())[1]
            q11, q22, q12, gain = self.layer(
                q11, q22, q12, derivative=ntk, out=out[0] if last else None
            )
            q12 = _pin(q12, q11, offset)
            if ntk:
                if offset is not None:
                    gain = _pin(gain, self.weight_variance * kd11, offset)
                target = out[1] if last and out[1] is not None else theta
                theta = (
                    torch.addcmul(q12, theta, gain, out=target)
                    if _in_place(theta, gain) and theta.shape == q12.shape
                    else q12 + gain * theta
                )
        return q12, theta

    def _diag_recursion(self, X, ntk: bool):
        d = X.shape[-1]
        q = X.square().sum(-1) * (self.weight_variance / d) + self.bias_variance
        theta = q
        opts = self._map_options()
        for _ in range(self.depth):
            k, kd = diag_expectations(self.activation, q, derivative=ntk, **opts)
            q = self.weight_variance * k + self.bias_variance
            if ntk:
                theta = q + self.weight_variance * kd * theta
        return q, theta


class NNGP(FullyConnectedKernel):
    r"""NNGP kernel ``Σᴸ⁺¹(x, x′)`` of an infinitely wide fully connected network.

    See :class:`FullyConnectedKernel` for the parameters and the recursion. With
    ``depth=1``, ReLU, ``σ_w² = 1`` and ``σ_b² = 0`` it is the arc-cosine kernel of order 1
    of the inputs scaled by ``1/√d``, halved: ``k₁(x, x′)/(2d)``.

    >>> import torch
    >>> from snnk.kernels import NNGP
    >>> k = NNGP(depth=3, activation="erf", weight_variance=2.0, bias_variance=0.1)
    >>> K = k(torch.randn(5, 4, dtype=torch.float64))
    """

    name = "nngp"

    def _gram(self, X, Y):
        return self._recursion(X, Y, ntk=False)[0]

    def _diag(self, X):
        return self._diag_recursion(X, ntk=False)[0]


class NTK(FullyConnectedKernel):
    r"""Neural tangent kernel ``Θᴸ⁺¹(x, x′)`` of an infinitely wide fully connected network
    (NTK parameterisation, every weight and bias trained).

    See :class:`FullyConnectedKernel` for the parameters and the recursion.
    """

    name = "ntk"

    def _gram(self, X, Y):
        return self._recursion(X, Y, ntk=True)[1]

    def _diag(self, X):
        return self._diag_recursion(X, ntk=True)[1]


def fully_connected_kernels(
    X: Any,
    Y: Any | None = None,
    *,
    depth: int = 1,
    activation: str | Callable = "relu",
    weight_variance: float = 1.0,
    bias_variance: float = 0.0,
    block_rows: int | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(NNGP, NTK)`` Gram matrices of shape ``(..., n, m)`` in one pass of the recursion.

    The NTK recursion computes the NNGP on the way, so this costs about as much as
    ``NTK(...)(X, Y)`` alone. ``options`` are the keyword-only parameters of
    :class:`FullyConnectedKernel` (``method``, ``quadrature_degree``, ``negative_slope``).
    """
    kernel = NTK(depth, activation, weight_variance, bias_variance, **options)
    nngp, ntk = kernel._evaluate(X, Y, block_rows, ntk=True)
    kernel._check_overflow(ntk)
    return nngp, ntk
