"""Fast Gaussian processes and Bayesian cubature on lattice / digital-net designs.

Model: ``f ~ GP(m₀, S · C_γ)``, observed as ``y = f(X)``, with ``C_γ`` an SI/DSI product
kernel of unit scale and weights ``γ`` and a nugget ``η``: ``Cov(y) = S (C_γ + η I)``. With
``λ`` the eigenvalues of ``C_γ + η I`` (:mod:`snnk.lattice.operator`) and
``ỹ = T(y − m₀)`` (``T`` = FFTBR or FWHT):

- GLS mean: the constant vector is an eigenvector, so ``m̂₀ = 1ᵀK⁻¹y / 1ᵀK⁻¹1 = ȳ``;
- profiled scale ``Ŝ = (1/n) Σ_i |ỹ_i|² / λ_i``;
- profiled negative log likelihood
  ``NLL(γ) = (n/2) log Ŝ + ½ Σ_i log λ_i + (n/2)(1 + log 2π)``, ``O(n log n)`` per evaluation,
  differentiable in ``γ`` through the transforms (autograd);
- posterior mean ``m₀ + c(x, X)ᵀ (C + ηI)⁻¹ (y − m₀)`` and variance
  ``S [C(x, x) − c(x, X)ᵀ (C + ηI)⁻¹ c(x, X)]``; the variance does not depend on ``y``, so
  the variance after ``n' > n`` points is known before sampling them (``n=`` argument);
- cubature (``∫ C(x, z) dx = 1``): ``E[∫f | y] = m₀ + n (ȳ − m₀) / λ₀`` (``= ȳ`` for the GLS
  mean) and ``Var[∫f | y] = S (1 − n / λ₀)``, with ``λ₀ − n = Σ_i (c_i − 1) + η`` from the
  cancellation-free "K − 1" column.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch
from scipy.optimize import minimize

from snnk._utils import check_positive, compute_dtype
from snnk.lattice.kernels import DSIKernel, SIKernel, product_minus_one
from snnk.lattice.operator import check_design, eigenvalues_from_column
from snnk.lattice.points import DigitalNet, Lattice, PointSet
from snnk.lattice.transforms import bit_reverse_permutation, double, fftbr, fwht

__all__ = ["CubatureResult", "FastGP", "bayesian_cubature", "profiled_nll"]

_LOG_2PI = math.log(2.0 * math.pi)

#: :meth:`FastGP.fit` keeps every ``log γ_j`` in ``[−LOG_WEIGHT_BOUND, LOG_WEIGHT_BOUND]``
LOG_WEIGHT_BOUND = 20.0


def _transform(v: torch.Tensor, kind: str) -> torch.Tensor:
    return fwht(v) if kind == "net" else fftbr(v)


def profiled_nll(lam: torch.Tensor, ytilde: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Profiled NLL and ``Ŝ`` from eigenvalues ``λ`` (..., n) and ``ỹ = T(y − m₀)`` (..., n).

    ``Ŝ = mean(|ỹ|² / λ)``, ``NLL = (n/2) log Ŝ + ½ Σ log λ + (n/2)(1 + log 2π)``.
    """
    n = lam.shape[-1]
    # ỹ is rescaled by its largest modulus c: |ỹ|² overflowed for |y| ≳ 1e154 and underflowed
    # to Ŝ = 0 for |y| ≲ 1e-154 (NLL = −inf, NaN gradients, a NaN fit); log Ŝ = 2 log c +
    # log mean(|ỹ/c|²/λ) is finite for every finite y. Constant data (ỹ = 0) gives Ŝ = 0, and
    # log Ŝ is floored at log(tiny) there, so the NLL stays finite and depends on γ via log λ.
    mag = ytilde.abs()
    c = mag.detach().amax(-1, keepdim=True).clamp_min(torch.finfo(mag.dtype).tiny)
    unit = ((mag / c) ** 2 / lam).mean(-1)
    tiny = torch.finfo(unit.dtype).tiny
    log_s = 2.0 * torch.log(c[..., 0]) + torch.log(unit.clamp_min(tiny))
    s_hat = torch.exp(log_s)
    nll = 0.5 * n * log_s + 0.5 * torch.log(lam).sum(-1) + 0.5 * n * (1 + _LOG_2PI)
    return nll, s_hat


def dense_profiled_nll(gram: torch.Tensor, y: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The same NLL by a dense Cholesky of ``C + ηI`` (n, n): the ground truth of the tests."""
    n = y.shape[-1]
    chol = torch.linalg.cholesky(gram)
    r = y - mean
    a = torch.cholesky_solve(r[:, None], chol)[:, 0]
    s_hat = (r @ a) / n
    logdet = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return 0.5 * n * torch.log(s_hat) + 0.5 * logdet + 0.5 * n * (1 + _LOG_2PI)


class FastGP:
    """GP regression with a constant mean on the first ``n = 2^m`` points of a design.

    Parameters
    ----------
    points : PointSet
        ``design(n)`` of a :class:`Lattice` (SI kernel) or :class:`DigitalNet` (DSI kernel).
    y : Tensor, shape (n,)
        Observations ``f(x_i)``, finite; stored in the points' dtype (float32 for float16 /
        bfloat16 designs, which are computed in float32).
    alpha : int or sequence of int, default 2
        Kernel smoothness per dimension.
    weights : float or Tensor, optional
        Initial product weights ``γ`` (default ``2^{1/d} − 1``).
    nugget : float, default 1e-8
        ``η`` (relative to ``S``), fixed.
    shared_weights : bool, default False
        Fit one ``γ`` for all dimensions instead of one per dimension.

    Attributes
    ----------
    kernel : SIKernel or DSIKernel
        Unit-scale kernel with the current weights.
    scale, mean : Tensor
        ``S`` and ``m₀``; set by :meth:`fit` (profiled) and kept by :meth:`append`.
    """

    def __init__(
        self,
        points: PointSet,
        y: torch.Tensor,
        *,
        alpha=2,
        weights=None,
        nugget: float = 1e-8,
        shared_weights: bool = False,
    ):
        if not isinstance(points, PointSet):
            check_design(None, points)  # raises the explanatory ValueError
        cls = SIKernel if isinstance(points.design, Lattice) else DSIKernel
        kw = {} if cls is SIKernel else {"t": points.design.t}
        dev = points.x.device
        dt = compute_dtype(points.x.dtype)  # float16 / bfloat16 designs compute in float32
        self.kernel = cls(points.d, alpha, weights, 1.0, dtype=dt, device=dev, **kw)
        check_design(self.kernel, points)
        y = _check_y(y, points.n, dt, dev, "y")
        nugget = check_positive(nugget, "nugget", allow_zero=True)
        self.points, self.y, self.nugget = points, y, nugget
        self.kind, self.shared_weights = points.design.kind, shared_weights
        self._factors = self.kernel.factors(points, _first(points))  # (n, d)
        self.mean = y.mean()
        self._refresh(fit_scale=True)

    @property
    def n(self) -> int:
        return self.points.n

    def _eigen(self, weights: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        column = 1.0 + product_minus_one(weights * factors)
        return eigenvalues_from_column(column, self.kind) + self.nugget

    def _refresh(self, fit_scale: bool) -> None:
        """Recompute ``λ``, ``ỹ``, the weights ``(C + ηI)⁻¹(y − m₀)`` and (optionally) ``Ŝ``."""
        with torch.no_grad():
            self.eigenvalues = self._eigen(self.kernel.weights, self._factors)
            self.ytilde = _transform(self.y - self.mean, self.kind)
            _, s_hat = profiled_nll(self.eigenvalues, self.ytilde)
            if fit_scale:
                if not bool(torch.isfinite(s_hat)):
                    raise ValueError(
                        "the profiled scale S ~ |y - mean|² overflows float64 (|y| above "
                        "~1e150); divide y by a constant and multiply predictions back"
                    )
                self.scale = s_hat
            self.coef = self._inverse(self.ytilde, self.eigenvalues).real

    def _inverse(self, transformed: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``T⁻¹(t / λ)`` for already-transformed ``t``."""
        f = transformed / lam
        if self.kind == "net":
            return fwht(f)
        perm = bit_reverse_permutation(f.shape[-1], f.device)
        return torch.fft.ifft(f, dim=-1, norm="ortho").index_select(-1, perm)

    def nll(self, log_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Profiled NLL at ``γ = exp(log_weights)`` (differentiable), default the current ``γ``.

        ``log_weights`` may carry leading batch dimensions (..., d) or (..., 1).
        """
        if log_weights is None:
            log_weights = torch.log(self.kernel.weights)
        w = torch.exp(log_weights)[..., None, :]  # (..., 1, d) against factors (n, d)
        lam = self._eigen(w, self._factors)
        ytilde = _transform(self.y - self.y.mean(), self.kind)
        return profiled_nll(lam, ytilde)[0]

    def fit(self, *, optimizer: str = "lbfgs", max_iter: int = 100) -> FastGP:
        """Maximise the profiled likelihood over ``log γ``; then ``m₀ = ȳ`` and ``S = Ŝ``.

        Parameters
        ----------
        optimizer : {"lbfgs", "scipy"}
            ``torch.optim.LBFGS`` (strong Wolfe line search) or SciPy's L-BFGS-B, both with
            autograd gradients. ``log γ`` is kept in ``[−B, B]``, ``B =``
            :data:`LOG_WEIGHT_BOUND`: L-BFGS-B takes the box as bounds, LBFGS optimises ``u``
            with ``log γ = B tanh(u / B)`` (the identity near 0). Without the box a weight whose
            dimension the data ignore (or the only one they use) runs off to ``e^{±50}``
            and beyond.
        max_iter : int
            Iteration limit.
        """
        if optimizer not in ("lbfgs", "scipy"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'scipy', got {optimizer!r}")
        raw = torch.log(self.kernel.weights).detach()
        if self.shared_weights:
            raw = raw.mean().reshape(1)
        raw = raw.clamp(-LOG_WEIGHT_BOUND, LOG_WEIGHT_BOUND)
        if optimizer == "lbfgs":
            raw = _fit_lbfgs(self.nll, raw, max_iter)
        else:
            raw = _fit_scipy(self.nll, raw, max_iter)
        self.kernel.weights = torch.exp(raw.detach()).expand(self.kernel.d).clone()
        self.mean = self.y.mean()
        self._refresh(fit_scale=True)
        return self

    def _cross(self, x) -> torch.Tensor:
        """Unit-scale ``c(x, X)`` of shape (q, n), in row blocks of about 2^22 elements."""
        pts = self.points
        data = pts.bits if self.kind == "net" else pts.x
        if isinstance(x, PointSet):
            x = x.bits if self.kind == "net" else x.x
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != pts.d:
            raise ValueError(f"x must have shape (q, {pts.d}), got {tuple(x.shape)}")
        step = max(1, (1 << 22) // (self.n * pts.d))
        blocks = []
        for i in range(0, x.shape[0], step):
            f = self.kernel.factors(x[i : i + step, None, :], data[None, :, :])
            blocks.append(self.kernel.combine(f, scale=1.0))
        return torch.cat(blocks, 0)

    def predict(self, x) -> torch.Tensor:
        """Posterior mean at ``x`` (q, d) (floats in [0, 1), bits for nets, or a PointSet)."""
        return self.mean + self._cross(x) @ self.coef

    def posterior_variance(self, x, n: int | None = None) -> torch.Tensor:
        """Posterior variance ``S [C(x, x) − c(x, X)ᵀ (C + ηI)⁻¹ c(x, X)]`` at ``x`` (q, d).

        With ``n`` larger than the current size: the variance after observing the first ``n``
        points of the same design (it does not depend on the unseen values), at the current
        hyper-parameters.
        """
        gp = self
        if n is not None and n != self.n:
            pts = self.points.design(n)
            gp = FastGP.__new__(FastGP)
            gp.points, gp.kind, gp.kernel, gp.nugget = pts, self.kind, self.kernel, self.nugget
            gp._factors = self.kernel.factors(pts, _first(pts))
            gp.eigenvalues = self._eigen(self.kernel.weights, gp._factors)
        c = gp._cross(x)
        reduced = (c * gp._inverse(_transform(c, self.kind), gp.eigenvalues).real).sum(-1)
        prior = self.kernel.combine(self.kernel.zero_factors(), scale=1.0)
        # at the design points the difference is round-off (about eps · C(x, x) · cond), and
        # in float32 it came out negative: a variance is clamped at 0
        return self.scale * (prior - reduced).clamp(min=0.0)

    def append(self, new_points: PointSet, y_new: torch.Tensor, *, refit: bool = False):
        """Add the next block ``design(n, n_start=n)`` with values ``y_new`` (doubles ``n``).

        Without ``refit`` the hyper-parameters (``γ``, ``S``, ``m₀``) stay; the eigenvalues and
        ``ỹ`` are updated with the doubling identity (``O(n)`` combining work plus one kernel
        column and one transform of the new half).
        """
        pts = self.points
        if new_points.design is not pts.design or new_points.n_start != pts.n:
            raise ValueError(f"new_points must be design(n={pts.n}, n_start={pts.n})")
        if new_points.n != pts.n:
            raise ValueError(f"new_points must have n={pts.n} points, got {new_points.n}")
        y_new = _check_y(y_new, pts.n, self.y.dtype, self.y.device, "y_new")
        f2 = self.kernel.factors(new_points, _first(pts))
        c2 = 1.0 + product_minus_one(self.kernel.weights * f2)
        lam1 = (self.eigenvalues - self.nugget) / math.sqrt(pts.n)
        lam1 = lam1 if self.kind == "net" else lam1 + 0j
        lam = math.sqrt(2 * pts.n) * double(lam1, _transform(c2, self.kind), self.kind)
        yt = double(self.ytilde, _transform(y_new - self.mean, self.kind), self.kind)
        bits = None if pts.bits is None else torch.cat([pts.bits, new_points.bits])
        self.points = PointSet(torch.cat([pts.x, new_points.x]), bits, pts.design, 0)
        self.y = torch.cat([self.y, y_new])
        self._factors = torch.cat([self._factors, f2])
        self.eigenvalues = (lam if self.kind == "net" else lam.real) + self.nugget
        self.ytilde = yt
        self.coef = self._inverse(yt, self.eigenvalues).real
        return self.fit() if refit else self

    def integral(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of ``∫_{[0,1)^d} f`` (see module doc)."""
        n = self.n
        excess = product_minus_one(self.kernel.weights * self._factors).sum() + self.nugget
        lam0 = self.eigenvalues[0].real
        mean = self.mean + n * (self.y.mean() - self.mean) / lam0
        return mean, self.scale * (excess / lam0).clamp(min=0.0)


def _check_y(y, n: int, dtype: torch.dtype, device, name: str) -> torch.Tensor:
    """``y`` as a finite float vector of length ``n`` (ValueError / TypeError otherwise)."""
    y = torch.as_tensor(y)
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must be real numbers, got dtype {y.dtype}")
    y = y.to(dtype=dtype, device=device)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} contains NaN or Inf (after conversion to {dtype})")
    return y


def _first(points: PointSet) -> PointSet:
    bits = None if points.bits is None else points.bits[:1]
    return PointSet(points.x[:1], bits, points.design, 0)


def _fit_lbfgs(loss_fn, start: torch.Tensor, max_iter: int) -> torch.Tensor:
    bound = LOG_WEIGHT_BOUND
    inner = start.detach() / bound
    inner = inner.clamp(-1 + 1e-12, 1 - 1e-12)
    raw = (bound * torch.atanh(inner)).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [raw], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure():
        opt.zero_grad()
        loss = loss_fn(bound * torch.tanh(raw / bound))
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return bound * torch.tanh(raw / bound)


def _fit_scipy(loss_fn, raw: torch.Tensor, max_iter: int) -> torch.Tensor:
    def fun(v):
        r = torch.tensor(v, dtype=raw.dtype, requires_grad=True)
        loss = loss_fn(r)
        (g,) = torch.autograd.grad(loss, r)
        return float(loss.detach()), g.numpy().astype(np.float64)

    box = [(-LOG_WEIGHT_BOUND, LOG_WEIGHT_BOUND)] * raw.numel()
    res = minimize(
        fun, raw.numpy(), jac=True, method="L-BFGS-B", bounds=box, options={"maxiter": max_iter}
    )
    return torch.tensor(res.x, dtype=raw.dtype)


@dataclass
class CubatureResult:
    """Outcome of :func:`bayesian_cubature`.

    Attributes
    ----------
    estimate : float
        Posterior mean of the integral.
    half_width : float
        ``z_{(1+confidence)/2} √Var``; the credible interval is ``estimate ± half_width``.
    n : int
        Points used.
    weights : Tensor
        Fitted product weights at the last step.
    history : list of (n, estimate, half_width)
    """

    estimate: float
    half_width: float
    n: int
    weights: torch.Tensor
    history: list = field(default_factory=list)

    @property
    def interval(self) -> tuple[float, float]:
        return (self.estimate - self.half_width, self.estimate + self.half_width)


def bayesian_cubature(
    integrand,
    dimension: int,
    *,
    abs_tol: float = 1e-3,
    design: str = "net",
    alpha: int = 2,
    n_init: int = 256,
    n_max: int = 2**20,
    confidence: float = 0.99,
    nugget: float = 1e-10,
    seed: int | torch.Generator | None = None,
) -> CubatureResult:
    """Fast automatic Bayesian cubature of ``∫_{[0,1)^d} f`` (Jagadeeswaran–Hickernell).

    Doubles ``n`` (from ``n_init``, powers of two) on one randomized design until the
    credible half-width ``z √(Ŝ (1 − n/λ₀))`` is at most ``abs_tol`` or ``n = n_max``. At each
    step the shared weight ``γ`` is fitted by a batched grid search of the profiled NLL in
    ``log γ ∈ [−10, 4]`` (a coarse grid, then two zooms), and the mean is the GLS mean, so
    the estimate is the sample mean.

    Parameters
    ----------
    integrand : callable
        ``f(x)`` for ``x`` of shape (n, d) in ``[0, 1)^d`` -> (n,).
    dimension : int
    abs_tol : float
        Target half-width.
    design : {"net", "lattice"}
        Sobol' LMS+DS with the DSI kernel, or a shifted lattice with the SI kernel (the
        latter assumes a periodic integrand).
    alpha, n_init, n_max, confidence, nugget, seed
        Kernel smoothness, first and largest ``n``, level of the interval, nugget, seed.
    """
    if design not in ("net", "lattice"):
        raise ValueError(f"design must be 'net' or 'lattice', got {design!r}")
    for name, v in (("n_init", n_init), ("n_max", n_max)):
        if not isinstance(v, int) or v < 2 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 2, got {v}")
    if n_max < n_init:
        raise ValueError(f"n_max = {n_max} must be >= n_init = {n_init}")
    abs_tol = check_positive(abs_tol, "abs_tol", allow_zero=True)
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise TypeError(f"confidence must be a number in (0, 1), got {confidence!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1) (e.g. 0.99), got {confidence!r}")
    gen = (DigitalNet if design == "net" else Lattice)(dimension, seed=seed)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    pts = gen(n_init)
    gp = FastGP(pts, integrand(pts.x), alpha=alpha, nugget=nugget, shared_weights=True)
    history, log_weight = [], None
    while True:
        log_weight = _grid_fit(gp, start=log_weight)
        mean, var = gp.integral()
        half = z * float(var.sqrt())
        history.append((gp.n, float(mean), half))
        if half <= abs_tol or gp.n >= n_max:
            break
        new = gen(gp.n, gp.n)
        gp.append(new, integrand(new.x))
    return CubatureResult(float(mean), half, gp.n, gp.kernel.weights.clone(), history)


def _grid_fit(gp: FastGP, lo: float = -10.0, hi: float = 4.0, start: float | None = None) -> float:
    """Shared ``log γ`` by a batched grid search; sets ``γ``, ``m₀ = ȳ``, ``S = Ŝ``.

    Without ``start``: 29 points on ``[lo, hi]`` and two zooms of 9 points. With ``start`` (the
    previous step's optimum): a local grid of 9 points ``±1`` around it, widened while the
    optimum sits on its edge, then two zooms. Returns the chosen ``log γ``.
    """
    dt = gp.y.dtype
    with torch.no_grad():
        if start is None:
            grid = torch.linspace(lo, hi, 29, dtype=dt)
        else:
            grid = torch.linspace(start - 1.0, start + 1.0, 9, dtype=dt)
            for _ in range(6):
                i = int(torch.argmin(gp.nll(grid[:, None])))
                if 0 < i < 8 or not lo < float(grid[i]) < hi:
                    break
                grid = grid + (grid[-1] - grid[0]) * (1 if i == 8 else -1)
        for _ in range(3 if start is None else 2):
            best = grid[int(torch.argmin(gp.nll(grid[:, None])))]
            step = float(grid[1] - grid[0])
            grid = torch.linspace(best - step, best + step, 9, dtype=dt)
    gp.kernel.weights = torch.exp(best).expand(gp.kernel.d).clone()
    gp.mean = gp.y.mean()
    gp._refresh(fit_scale=True)
    return float(best)
