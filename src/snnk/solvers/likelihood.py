r"""The Gaussian marginal likelihood of a linear model on features, and its gradient.

For Bayesian linear regression on a fixed feature matrix ``Z`` (``n x D``),
``y = √a Z w + ε``, ``w ~ N(0, I_D)``, ``ε ~ N(0, s I_n)``, the evidence ``log p(y)`` and its
gradient depend on the data only through the sufficient statistics ``G = ZᵀZ``,
``b = Zᵀy``, ``yᵀy`` and ``n``; everything here costs ``O(D³)`` whatever ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize

from snnk.solvers.cholesky import jittered_cholesky, symmetric_eigh
from snnk.solvers.student_t import student_t_log_marginal

__all__ = [
    "LikelihoodGradient",
    "log_marginal_likelihood_from_stats",
    "log_marginal_likelihood_with_grad",
    "minimize_bounded",
    "profile_amplitude_noise",
]

_LOG_2PI = math.log(2.0 * math.pi)
#: grid points in log(noise/amplitude) that start :func:`profile_amplitude_noise`
PROFILE_GRID = 64
_HINT = "raise noise (or its lower bound by starting higher) or lower num_features"


def log_marginal_likelihood_from_stats(
    gram: torch.Tensor,
    proj: torch.Tensor,
    yy: torch.Tensor | float,
    n: int,
    amplitude: torch.Tensor,
    noise: torch.Tensor,
    scale_prior: tuple[float, float] | None = None,
) -> torch.Tensor:
    r"""``log p(y)`` of the feature GP from its sufficient statistics (differentiable).

    With ``C = a ZZᵀ + s I_n`` (the covariance of ``y``), ``λ = s/a`` and
    ``A = ZᵀZ + λ I_D``, the Woodbury identity and the matrix determinant lemma give

    ``C⁻¹ = s⁻¹ (I_n − Z A⁻¹ Zᵀ)``,    ``log|C| = n log s + log|A| − D log λ``,

    hence, with ``b = Zᵀy`` and ``L Lᵀ = A`` (:func:`~snnk.solvers.jittered_cholesky`),

    ``log p(y) = −(yᵀy − ‖L⁻¹b‖²)/(2s) − Σ_i log L_ii + (D/2) log λ − (n/2) log s
    − (n/2) log 2π``.

    Parameters
    ----------
    gram : Tensor of shape ``(D, D)``
        ``ZᵀZ`` (float64).
    proj : Tensor of shape ``(D,)``
        ``b = Zᵀy``.
    yy : float or scalar Tensor
        ``yᵀy``.
    n : int
        Number of rows.
    amplitude, noise : scalar Tensors
        ``a`` and ``s`` (variances).
    scale_prior : (shape, rate) or None
        An inverse-gamma prior on a common scale of ``C`` (a Student-t process): the
        marginal is :func:`~snnk.solvers.student_t_log_marginal` of the same ``Q = yᵀC⁻¹y``
        and ``log|C|``.

    Returns
    -------
    Scalar Tensor (with the autograd graph of its inputs).
    """
    D = gram.shape[0]
    lam = noise / amplitude
    eye = torch.eye(D, dtype=gram.dtype, device=gram.device)
    L = jittered_cholesky(gram + lam * eye, name="ZᵀZ + (noise/amplitude) I", hint=_HINT)
    alpha = torch.linalg.solve_triangular(L, proj.reshape(D, 1), upper=False)
    quad = (yy - alpha.square().sum()) / noise
    logdet = 2.0 * torch.log(torch.diagonal(L)).sum() - D * torch.log(lam) + n * torch.log(noise)
    if scale_prior is not None:
        return student_t_log_marginal(quad, logdet, n, *scale_prior)
    return -0.5 * quad - 0.5 * logdet - 0.5 * n * _LOG_2PI


@dataclass
class LikelihoodGradient:
    r"""``log p(y)`` and its gradient in the sufficient statistics and log-variances.

    Attributes
    ----------
    value : float
    gram : Tensor of shape ``(D, D)``
        ``S = ∂/∂G + (∂/∂G)ᵀ``: with ``G = ZᵀZ``, ``∂ log p/∂Z = Z S + y bᵀ_grad``.
    proj : Tensor of shape ``(D,)``
        ``∂ log p / ∂b``.
    log_amplitude, log_noise : float
        ``∂ log p / ∂ log a`` and ``∂ log p / ∂ log s``.
    """

    value: float
    gram: torch.Tensor
    proj: torch.Tensor
    log_amplitude: float
    log_noise: float


def log_marginal_likelihood_with_grad(
    gram: torch.Tensor,
    proj: torch.Tensor,
    yy: torch.Tensor | float,
    n: int,
    log_amplitude: float | torch.Tensor,
    log_noise: float | torch.Tensor,
    scale_prior: tuple[float, float] | None = None,
) -> LikelihoodGradient:
    r""":func:`log_marginal_likelihood_from_stats` and its exact gradient (reverse mode).

    The gradient in ``G`` is returned symmetrised, ``S = ∂/∂G + (∂/∂G)ᵀ``, which is what
    the chain rule to the features needs: ``∂ log p / ∂Z = Z S + y (∂ log p/∂b)ᵀ``, to be
    pushed back to the feature map's parameters one row block at a time.

    Parameters
    ----------
    gram, proj, yy, n
        As in :func:`log_marginal_likelihood_from_stats`.
    log_amplitude, log_noise : float or scalar Tensor
        ``log a`` and ``log s``.
    scale_prior : (shape, rate) or None
        As in :func:`log_marginal_likelihood_from_stats`.
    """
    G = gram.detach().requires_grad_(True)
    b = proj.detach().requires_grad_(True)
    dd = {"dtype": torch.float64, "device": gram.device}
    la = torch.as_tensor(log_amplitude, **dd).detach().clone().requires_grad_(True)
    ln = torch.as_tensor(log_noise, **dd).detach().clone().requires_grad_(True)
    lml = log_marginal_likelihood_from_stats(
        G, b, yy, n, torch.exp(la), torch.exp(ln), scale_prior=scale_prior
    )
    gG, gb, ga, gn = torch.autograd.grad(lml, [G, b, la, ln])
    return LikelihoodGradient(float(lml.detach()), gG + gG.T, gb, float(ga), float(gn))


def minimize_bounded(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    theta0: np.ndarray,
    bounds: tuple[float, float],
    *,
    method: str = "lbfgs",
    max_iter: int = 100,
    learning_rate: float = 0.05,
    callback: Callable[[float], None] | None = None,
) -> tuple[np.ndarray, int, str | None]:
    r"""Minimise a smooth ``fun(θ) -> (value, gradient)`` over the box ``lo <= θ_i <= hi``.

    Used on negative log marginal likelihoods of log-hyper-parameters. ``method="lbfgs"``:
    SciPy's L-BFGS-B with the exact gradient (a line search may evaluate ``fun`` several
    times per iteration). ``"adam"``: ``max_iter`` Adam steps of ``learning_rate``, one
    evaluation each, each step projected onto the box.

    Parameters
    ----------
    fun : callable
        ``θ (k,) -> (float, (k,) gradient)``.
    theta0 : ndarray of shape ``(k,)``
    bounds : (float, float)
        The same ``(lo, hi)`` for every coordinate.
    method : {"lbfgs", "adam"}
    max_iter : int
    learning_rate : float
        Adam's step size.
    callback : callable, optional
        ``callback(value)`` after every iteration.

    Returns
    -------
    theta : ndarray of shape ``(k,)``, inside the box.
    n_iter : int
    stopped : str or None
        SciPy's message when L-BFGS-B hit the iteration limit (``None`` otherwise; a stop of
        the line search is at the optimum).
    """
    if method == "lbfgs":

        def report(intermediate_result) -> None:  # SciPy passes the result by this name
            if callback is not None:
                callback(float(intermediate_result.fun))

        res = minimize(
            fun,
            theta0,
            jac=True,
            method="L-BFGS-B",
            bounds=[bounds] * len(theta0),
            options={"maxiter": max_iter},
            callback=report,
        )
        stopped = str(res.message) if res.status == 1 else None
        return np.clip(res.x, *bounds), int(res.nit), stopped
    if method != "adam":
        raise ValueError(f"method must be 'lbfgs' or 'adam', got {method!r}")
    theta = torch.tensor(theta0, dtype=torch.float64, device="cpu", requires_grad=True)
    opt = torch.optim.Adam([theta], lr=learning_rate)
    for _ in range(max_iter):
        v, g = fun(theta.detach().numpy())
        opt.zero_grad()
        theta.grad = torch.from_numpy(g)
        opt.step()
        with torch.no_grad():
            theta.clamp_(*bounds)
        if callback is not None:
            callback(float(v))
    return theta.detach().numpy().copy(), max_iter, None


def profile_amplitude_noise(
    gram: torch.Tensor,
    proj: torch.Tensor,
    yy: torch.Tensor | float,
    n: int,
    log_start: tuple[float, float],
    bounds: tuple[float, float],
    scale_prior: tuple[float, float] | None = None,
    max_iter: int = 200,
) -> tuple[float, float, float]:
    r"""``max over (a, s)`` of :func:`log_marginal_likelihood_from_stats` for fixed ``G``, ``b``.

    One eigendecomposition ``G = U diag(μ) Uᵀ`` (``c = Uᵀb``) makes every evaluation ``O(D)``:
    with ``λ = s/a``,

    ``‖L⁻¹b‖² = Σ_i c_i²/(μ_i + λ)``,    ``log|A| = Σ_i log(μ_i + λ)``,

    so ``Q = (yᵀy − Σ c_i²/(μ_i + λ))/s`` and ``log|C| = Σ log(μ_i + λ) − D log λ + n log s``
    (Gaussian, or the Student-t marginal of the same ``Q``, ``log|C|`` with ``scale_prior``).
    The two log-variances are found by L-BFGS-B in the box ``bounds``, started from the best
    of ``log_start`` and a grid of :data:`PROFILE_GRID` values of ``log λ`` (each with the
    Gaussian optimum ``s = (yᵀy − Σ c_i²/(μ_i + λ))/n``), so a start in a flat region (the
    amplitude at its lower bound) does not trap it.
    This is the inner problem of the profile-likelihood fit of the lengthscale: the data
    enter only through one ``O(nD²)`` pass per lengthscale.

    Parameters
    ----------
    gram, proj, yy, n
        As in :func:`log_marginal_likelihood_from_stats` (float64).
    log_start : (float, float)
        Starting ``(log a, log s)``.
    bounds : (float, float)
        The box of both log-variances.
    scale_prior : (shape, rate) or None
    max_iter : int
        L-BFGS-B iterations.

    Returns
    -------
    (value, log_amplitude, log_noise) : the maximised ``log p(y)`` and its arguments.

    Notes
    -----
    The eigendecomposition (about ``9 D³`` flops with vectors) is the cost at large ``D``;
    it matches one ``n D²`` pass at ``D ≈ n/10``. A Householder tridiagonalisation
    ``G = Q T Qᵀ`` (``4 D³/3``, LAPACK ``sytrd``) would serve as well: ``log|T + λI|`` and
    ``(T + λI)⁻¹ Qᵀb`` are ``O(D)`` per ``λ``.
    """
    G = gram.detach().double()
    D = G.shape[0]
    mu, U = symmetric_eigh(0.5 * (G + G.T))
    # the eigendecomposition on G's device; the O(D) inner problem on the CPU (scipy drives
    # it one scalar evaluation at a time: no device round trip per evaluation)
    cpu = torch.device("cpu")
    mu = mu.clamp_min(0.0).to(cpu)
    c2 = (U.T @ proj.detach().double().reshape(D).to(U.device)).square().to(cpu)
    yy_t = torch.as_tensor(yy, dtype=torch.float64, device=cpu).detach()

    def value(theta: torch.Tensor) -> torch.Tensor:
        la, ls = theta[0], theta[1]
        lam = torch.exp(ls - la)
        den = mu + lam
        resid = (yy_t - (c2 / den).sum()).clamp_min(0.0)
        quad = resid / torch.exp(ls)
        logdet = torch.log(den).sum() - D * (ls - la) + n * ls
        if scale_prior is not None:
            return student_t_log_marginal(quad, logdet, n, *scale_prior)
        return -0.5 * quad - 0.5 * logdet - 0.5 * n * _LOG_2PI

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        th = torch.tensor(theta, dtype=torch.float64, device=cpu, requires_grad=True)
        v = value(th)
        (g,) = torch.autograd.grad(v, th)
        return -float(v.detach()) / n, -g.numpy() / n

    # Global start: on a grid of log λ, s = (yᵀy − Σ c²/(μ + λ))/n (the Gaussian optimum in
    # s at fixed λ), both clipped to the box; the best grid point or ``log_start`` is polished.
    lo, hi = bounds
    with torch.no_grad():
        log_lam = torch.linspace(lo - hi, hi - lo, PROFILE_GRID, dtype=torch.float64, device=cpu)
        resid = yy_t - (c2[None, :] / (mu[None, :] + torch.exp(log_lam)[:, None])).sum(1)
        log_s = torch.log(resid.clamp_min(1e-300) / n).clamp(lo, hi)
        grid = torch.stack([(log_s - log_lam).clamp(lo, hi), log_s], 1)
        first = torch.tensor([log_start], dtype=torch.float64, device=cpu).clamp(lo, hi)
        starts = torch.cat([grid, first])
        values = torch.stack([value(t) for t in starts])
        start = starts[int(torch.nan_to_num(values, nan=-math.inf).argmax())].numpy()
    theta, _, _ = minimize_bounded(fun, start, bounds, max_iter=max_iter)
    best = float(value(torch.from_numpy(theta)))
    return best, float(theta[0]), float(theta[1])
