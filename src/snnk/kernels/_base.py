"""Exact kernels: the ground truth every approximation in snnk is tested against."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from snnk._utils import (
    all_finite,
    as_float_tensor,
    check_finite,
    check_in,
    check_positive,
    check_positive_int,
    check_same_device,
    compute_dtype,
    default_block_rows,
    iter_blocks,
)
from snnk.kernels._spectral import CauchySpectrum, GaussianSpectrum, Spectrum, StudentSpectrum


class Kernel:
    """Base class of exact kernels ``k(x, y)``.

    Calling ``k(X, Y)`` returns the Gram matrix ``K[i, j] = k(X[i], Y[j])`` of shape
    ``(..., n, m)`` for ``X`` of shape ``(..., n, d)`` and ``Y`` of shape ``(..., m, d)``
    (leading batch shapes broadcast). It is computed in row blocks of ``X`` so that the
    intermediates of one block stay within a fixed memory budget. The result keeps the
    inputs' floating dtype and device; float16/bfloat16 inputs are computed in float32.

    Kernels compose: ``k1 + k2``, ``k1 * k2`` and ``c * k`` (``c > 0``) are kernels.
    """

    #: registry name used by :func:`make_kernel` and configs
    name: str = "kernel"
    #: whether ``k(x, y)`` depends on ``x - y`` only
    shift_invariant: bool = False

    # -- public API -------------------------------------------------------------------------
    @staticmethod
    def _inputs(X: Any, Y: Any | None):
        """Validated ``(Xw, Yw, batch, out_dtype)``: float tensors on one device in the working
        dtype (:func:`~snnk._utils.compute_dtype` of the promoted dtype) and the broadcast
        batch shape; ``Y`` is ``X`` when None."""
        X = as_float_tensor(X, "X")
        if Y is None:
            Y = X
        else:
            Y = as_float_tensor(Y, "Y", last_dim=X.shape[-1], check_finite_values=False)
            check_same_device(X, Y, "X", "Y")
            check_finite(Y, "Y")
        out_dtype = torch.promote_types(X.dtype, Y.dtype)
        work = compute_dtype(out_dtype)
        try:
            batch = torch.broadcast_shapes(X.shape[:-2], Y.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"the batch shapes of X {tuple(X.shape)} and Y {tuple(Y.shape)} do not broadcast "
                f"(leading dimensions before (n, d) must be equal or 1); reshape one of them"
            ) from None
        return X.to(work), Y.to(work), batch, out_dtype

    def __call__(
        self, X: Any, Y: Any | None = None, *, block_rows: int | None = None
    ) -> torch.Tensor:
        Xw, Yw, batch, out_dtype = self._inputs(X, Y)
        work = Xw.dtype
        n, m = Xw.shape[-2], Yw.shape[-2]
        if block_rows is None:
            block_rows = default_block_rows(m * max(1, Xw.shape[-1] if self._needs_dim else 1))
        block_rows = check_positive_int(block_rows, "block_rows")
        if block_rows >= n:
            out = self._gram(Xw, Yw).expand(*batch, n, m).to(out_dtype)
        else:
            full = torch.empty(*batch, n, m, dtype=work, device=Xw.device)
            for rows in iter_blocks(n, block_rows):
                full[..., rows, :] = self._gram(Xw[..., rows, :], Yw)
            out = full.to(out_dtype)
        if not self.shift_invariant:
            self._check_overflow(out)
        return out

    def _check_overflow(self, out: torch.Tensor) -> None:
        """Dot-product kernels grow without bound: say so instead of returning Inf/NaN.

        (Shift-invariant kernels are bounded by their variance and need no check.)
        """
        if out.device.type == "meta" or torch.compiler.is_compiling():
            return
        if not all_finite(out):
            raise ValueError(
                f"{self!r} overflows {out.dtype} on these inputs (kernel values beyond "
                f"{torch.finfo(out.dtype).max:.3g}); scale X and Y down (e.g. "
                f"sklearn.preprocessing.StandardScaler)"
                + ("" if out.dtype == torch.float64 else " or pass float64 inputs")
            )

    def diag(self, X: Any) -> torch.Tensor:
        """``k(x_i, x_i)`` for every row, shape ``(..., n)``, without forming the Gram matrix."""
        X = as_float_tensor(X, "X")
        return self._diag(X.to(compute_dtype(X.dtype))).to(X.dtype)

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description; ``make_kernel(**cfg)`` rebuilds the kernel."""
        return {"name": self.name, **self._params()}

    # -- composition ------------------------------------------------------------------------
    def __add__(self, other: Kernel) -> Kernel:
        if not isinstance(other, Kernel):
            return NotImplemented
        return SumKernel(self, other)

    def __mul__(self, other: Kernel | float) -> Kernel:
        if isinstance(other, Kernel):
            return ProductKernel(self, other)
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return ScaledKernel(self, float(other))
        raise TypeError(
            f"a kernel can be multiplied by a kernel or by a positive number (its scale), "
            f"got {other!r} ({type(other).__name__})"
        )

    __rmul__ = __mul__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(repr(self))

    # -- to implement -------------------------------------------------------------------------
    _needs_dim = False  # True when a block's intermediates scale with d (e.g. L1 distances)

    def _params(self) -> dict[str, Any]:
        return {}

    def _gram(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _diag(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _needs_graph(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _sq_dist(X: torch.Tensor, Y: torch.Tensor, *, refine: bool = False) -> torch.Tensor:
    """Squared Euclidean distances ``‖x - y‖²`` (clamped at 0 against round-off).

    Expanded as ``‖x‖² + ‖y‖² - 2xᵀy`` (one GEMM), so it is accurate to the rounding of the
    *distance* only when the rows sit near the origin relative to their spread: callers centre
    the data first (:meth:`ShiftInvariantKernel._standardise`). Without autograd the block is
    written once by the GEMM and updated in place (three passes over it, no temporaries):
    kernel blocks are memory-bound beyond the GEMM.

    The expansion's absolute error is ``≈ ε(‖x‖² + ‖y‖²)``: harmless for ``exp(-d²/2)``, but
    the distance itself (Matérn's ``√d²``) of near pairs loses half its digits. With
    ``refine=True`` (float32 and below) the pairs whose ``d²`` is below 1 % of ``‖x‖² + ‖y‖²``
    are recomputed directly as ``Σ (x - y)²``, so every distance is accurate to its rounding.
    """
    xx = X.square().sum(-1, keepdim=True)
    yy = Y.square().sum(-1).unsqueeze(-2)
    if (
        X.device.type != "meta"
        and not torch.compiler.is_compiling()
        and not (torch.isfinite(xx).all() and torch.isfinite(yy).all())
    ):
        big = max(float(X.detach().abs().max()), float(Y.detach().abs().max()))
        raise ValueError(
            f"the rows of X and Y are {big:.3g} lengthscales apart: squared distances overflow "
            f"{X.dtype}, and the kernel is 0 for every pair but exact duplicates; standardise "
            f"the data (e.g. sklearn.preprocessing.StandardScaler), raise the lengthscale, or "
            f"pass float64"
        )
    if _needs_graph(X, Y):
        out = (xx + yy - 2.0 * (X @ Y.transpose(-1, -2))).clamp_min(0.0)
    else:
        if X.ndim == 2 and Y.ndim == 2:
            out = torch.addmm(yy, X, Y.T, alpha=-2.0)
        else:
            out = (X @ Y.transpose(-1, -2)).mul_(-2.0).add_(yy)
        out.add_(xx).clamp_min_(0.0)
    if refine and X.device.type != "meta" and not torch.compiler.is_compiling():
        out = _refine_near_pairs(out, X, Y, xx, yy)
    return out


def _refine_near_pairs(out, X, Y, xx, yy) -> torch.Tensor:
    """Recompute ``d²`` directly where the expansion cancelled (``d² < 1 % (‖x‖² + ‖y‖²)``)."""
    near = out < (xx + yy).mul_(0.01)
    idx = near.nonzero(as_tuple=True)
    if idx[0].numel() == 0:
        return out
    *b, i, j = idx
    Xb = X.expand(*out.shape[:-2], *X.shape[-2:])
    Yb = Y.expand(*out.shape[:-2], *Y.shape[-2:])
    exact = (Xb[(*b, i)] - Yb[(*b, j)]).square().sum(-1)
    if _needs_graph(X, Y):
        return out.index_put(idx, exact)
    return out.index_put_(idx, exact)


class ShiftInvariantKernel(Kernel):
    """``k(x, y) = κ((x - y)/ℓ)`` with ``κ(0) = 1``: a probability spectrum by Bochner."""

    shift_invariant = True
    spectrum: Spectrum

    def __init__(self, lengthscale: float = 1.0):
        self.lengthscale = check_positive(lengthscale, "lengthscale")

    @property
    def variance(self) -> float:
        """``k(x, x)``."""
        return 1.0

    def _params(self):
        return {"lengthscale": self.lengthscale}

    def _diag(self, X):
        return torch.ones(X.shape[:-1], dtype=X.dtype, device=X.device)

    def _standardise(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``((X - c)/ℓ, (Y - c)/ℓ)`` with ``c`` the mean row of ``Y``.

        The kernel depends on ``x - y`` only, so the common shift changes no value (and no
        gradient: ``c`` is detached because the result does not depend on it). It keeps the
        expanded squared distance accurate when the data sit far from the origin (float32 data
        at an offset of 1e4 would otherwise lose every digit), and dividing by ``ℓ`` first keeps
        tiny data with a tiny lengthscale (or huge with huge) in range.
        """
        c = Y.detach().mean(-2, keepdim=True)
        inv = 1.0 / self.lengthscale
        if _needs_graph(X, Y):
            return (X - c) * inv, (Y - c) * inv
        return (X - c).mul_(inv), (Y - c).mul_(inv)


class Gaussian(ShiftInvariantKernel):
    r"""Gaussian (RBF) kernel ``k(x, y) = exp(-‖x - y‖² / (2ℓ²))``.

    Spectrum: ``ω ~ N(0, ℓ^{-2} I)``. Equals scikit-learn's ``rbf_kernel`` with
    ``gamma = 1/(2ℓ²)``.
    """

    name = "gaussian"
    spectrum = GaussianSpectrum()

    def _gram(self, X, Y):
        U, V = self._standardise(X, Y)
        if _needs_graph(X, Y):
            return torch.exp(_sq_dist(U, V) * -0.5)
        return _sq_dist(U, V).mul_(-0.5).exp_()


class Laplace(ShiftInvariantKernel):
    r"""Laplace kernel on the L1 distance, ``k(x, y) = exp(-‖x - y‖₁ / ℓ)``.

    A product of one-dimensional Laplace kernels; its spectrum has independent Cauchy
    coordinates of scale ``1/ℓ`` (not rotation invariant, so orthogonal and structured
    samplers do not apply). Equals scikit-learn's ``laplacian_kernel`` with ``gamma = 1/ℓ``.
    For the Euclidean ``exp(-‖x - y‖₂/ℓ)`` use ``Matern(nu=0.5)``.
    """

    name = "laplace"
    spectrum = CauchySpectrum()
    _needs_dim = True

    def _gram(self, X, Y):
        return torch.exp(torch.cdist(X, Y, p=1.0) / (-self.lengthscale))


class Matern(ShiftInvariantKernel):
    r"""Matérn kernel with smoothness ``ν ∈ {0.5, 1.5, 2.5}`` and lengthscale ``ℓ``.

    With ``r = ‖x - y‖₂ / ℓ``:

    * ``ν = 0.5``: ``exp(-r)``
    * ``ν = 1.5``: ``(1 + √3 r) exp(-√3 r)``
    * ``ν = 2.5``: ``(1 + √5 r + 5r²/3) exp(-√5 r)``

    Spectrum: multivariate Student-t with ``2ν`` degrees of freedom and scale ``1/ℓ``.
    Same parametrisation as scikit-learn's ``Matern`` kernel.
    """

    name = "matern"

    def __init__(self, nu: float = 1.5, lengthscale: float = 1.0):
        super().__init__(lengthscale)
        if isinstance(nu, bool) or not isinstance(nu, int | float):
            raise TypeError(f"nu must be one of [0.5, 1.5, 2.5], got {nu!r}")
        self.nu = float(check_in(float(nu), "nu", (0.5, 1.5, 2.5)))
        self.spectrum = StudentSpectrum(2.0 * self.nu)

    def _params(self):
        return {"nu": self.nu, "lengthscale": self.lengthscale}

    def _gram(self, X, Y):
        r = _sq_dist(*self._standardise(X, Y), refine=X.dtype != torch.float64).sqrt_()
        if self.nu == 0.5:
            return torch.exp(-r)
        if self.nu == 1.5:
            s = math.sqrt(3.0) * r
            return (1.0 + s) * torch.exp(-s)
        s = math.sqrt(5.0) * r
        return (1.0 + s + s.square() / 3.0) * torch.exp(-s)


class ArcCosine(Kernel):
    r"""Arc-cosine kernel of Cho & Saul (2009) of order ``n ∈ {0, 1, 2}``.

    ``k_n(x, y) = 2 E_{w~N(0,I)}[Θ(wᵀx) Θ(wᵀy) (wᵀx)^n (wᵀy)^n]
    = (1/π) ‖x‖^n ‖y‖^n J_n(θ)``, θ the angle between x and y, with
    ``J_0 = π - θ``, ``J_1 = sin θ + (π - θ) cos θ``,
    ``J_2 = 3 sin θ cos θ + (π - θ)(1 + 2 cos² θ)``.

    Order 1 is the kernel of an infinitely wide ReLU layer; ``E[ReLU(wᵀx) ReLU(wᵀy)]`` (the
    ReLU-SNNK of the paper) is ``k_1 / 2``.
    """

    name = "arccosine"

    def __init__(self, order: int = 1):
        if isinstance(order, bool) or not isinstance(order, int):
            raise TypeError(f"order must be one of [0, 1, 2], got {order!r}")
        self.order = check_in(order, "order", (0, 1, 2))

    def _params(self):
        return {"order": self.order}

    def _gram(self, X, Y):
        # The angle from unit rows: norms of tiny (1e-30) or huge (1e30) float32 rows would
        # under/overflow as sums of squares, so each row is first divided by its largest entry.
        U, nx = _unit_rows(X)
        V, ny = _unit_rows(Y)
        nx, ny = nx.unsqueeze(-1), ny.unsqueeze(-2)
        prod = nx * ny
        cos = (U @ V.transpose(-1, -2)).clamp_(-1.0, 1.0)
        theta = torch.arccos(cos)
        sin = torch.sqrt((1.0 - cos.square()).clamp_min(0.0))
        pt = torch.pi - theta
        if self.order == 0:
            return pt / torch.pi
        if self.order == 1:
            return prod * (sin + pt * cos) / torch.pi
        return prod.square() * (3.0 * sin * cos + pt * (1.0 + 2.0 * cos.square())) / torch.pi

    def _diag(self, X):
        sq = X.square().sum(-1)
        return (
            torch.ones_like(sq)
            if self.order == 0
            else (sq if self.order == 1 else 3.0 * sq.square())
        )


def _unit_rows(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X / ‖X‖, ‖X‖)`` row by row, without squaring the raw entries (a zero row stays 0)."""
    big = X.detach().abs().amax(-1, keepdim=True)
    big = torch.where(big > 0, big, torch.ones_like(big))
    Xs = X / big
    ns = torch.linalg.vector_norm(Xs, dim=-1, keepdim=True)
    return Xs / ns.clamp_min(torch.finfo(X.dtype).tiny), (ns * big).squeeze(-1)


class Softmax(Kernel):
    r"""Softmax (exponential dot-product) kernel ``k(x, y) = exp(xᵀy / T)``.

    The unnormalised attention kernel; estimated without bias by positive random features.
    """

    name = "softmax"

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_positive(temperature, "temperature")

    def _params(self):
        return {"temperature": self.temperature}

    def _gram(self, X, Y):
        return torch.exp((X @ Y.transpose(-1, -2)) / self.temperature)

    def _diag(self, X):
        return torch.exp(X.square().sum(-1) / self.temperature)


class Polynomial(Kernel):
    r"""Polynomial kernel ``k(x, y) = (s·xᵀy + c)^p``; scikit-learn's with ``gamma = s``."""

    name = "polynomial"

    def __init__(self, degree: int = 2, coef0: float = 1.0, scale: float = 1.0):
        self.degree = check_positive_int(degree, "degree")
        self.coef0 = check_positive(coef0, "coef0", allow_zero=True)
        self.scale = check_positive(scale, "scale")

    def _params(self):
        return {"degree": self.degree, "coef0": self.coef0, "scale": self.scale}

    def _gram(self, X, Y):
        return (self.scale * (X @ Y.transpose(-1, -2)) + self.coef0).pow(self.degree)

    def _diag(self, X):
        return (self.scale * X.square().sum(-1) + self.coef0).pow(self.degree)


class Linear(Kernel):
    """Linear kernel ``k(x, y) = xᵀy``."""

    name = "linear"

    def _gram(self, X, Y):
        return X @ Y.transpose(-1, -2)

    def _diag(self, X):
        return X.square().sum(-1)


class SumKernel(Kernel):
    """``k(x, y) = k1(x, y) + k2(x, y)``."""

    name = "sum"

    def __init__(self, k1: Kernel, k2: Kernel):
        self.k1, self.k2 = k1, k2
        self._needs_dim = k1._needs_dim or k2._needs_dim

    def get_config(self):
        return {"name": self.name, "k1": self.k1.get_config(), "k2": self.k2.get_config()}

    def __repr__(self):
        return f"({self.k1!r} + {self.k2!r})"

    def _gram(self, X, Y):
        return self.k1._gram(X, Y) + self.k2._gram(X, Y)

    def _diag(self, X):
        return self.k1._diag(X) + self.k2._diag(X)


class ProductKernel(SumKernel):
    """``k(x, y) = k1(x, y) · k2(x, y)``."""

    name = "product"

    def __repr__(self):
        return f"({self.k1!r} * {self.k2!r})"

    def _gram(self, X, Y):
        return self.k1._gram(X, Y) * self.k2._gram(X, Y)

    def _diag(self, X):
        return self.k1._diag(X) * self.k2._diag(X)


class ScaledKernel(Kernel):
    """``k(x, y) = c · base(x, y)`` with ``c > 0``.

    A scaled shift-invariant kernel is shift invariant with the same spectrum; random
    Fourier features of it carry the amplitude ``√c``.
    """

    name = "scaled"

    def __init__(self, base: Kernel, scale: float):
        self.base = base
        self.scale = check_positive(scale, "scale")
        self.shift_invariant = base.shift_invariant
        self._needs_dim = base._needs_dim

    @property
    def variance(self) -> float:
        return self.scale * getattr(self.base, "variance", 1.0)

    @property
    def lengthscale(self) -> float:
        return self.base.lengthscale  # type: ignore[attr-defined]

    @property
    def spectrum(self) -> Spectrum:
        return self.base.spectrum  # type: ignore[attr-defined]

    def get_config(self):
        return {"name": self.name, "scale": self.scale, "base": self.base.get_config()}

    def __repr__(self):
        return f"{self.scale!r} * {self.base!r}"

    def _gram(self, X, Y):
        return self.scale * self.base._gram(X, Y)

    def _diag(self, X):
        return self.scale * self.base._diag(X)
