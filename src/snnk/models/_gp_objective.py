"""The marginal-likelihood side of :class:`~snnk.models.RandomFeatureGP`: the objective on the
optimisation rows, its exact blocked gradient (Fourier and Nyström features) and the bounded
optimiser loop. A mixin, so the estimator file holds the model and this one the fitting
objective; the linear algebra itself is :mod:`snnk.solvers`'.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from snnk._utils import iter_blocks
from snnk.kernels import with_lengthscale
from snnk.models._device import to_device
from snnk.solvers import (
    NormalEquations,
    NystromFactor,
    log_marginal_likelihood_from_stats,
    log_marginal_likelihood_with_grad,
    minimize_bounded,
)
from snnk.solvers.likelihood import profile_amplitude_noise

__all__ = ["BOUNDS", "DTYPES", "MarginalLikelihoodMixin"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: bounds of every hyper-parameter during the optimisation (scikit-learn's default bounds)
BOUNDS = (1e-5, 1e5)
#: profile search: first step and growth of the downhill bracket in log ℓ, final tolerance
PROFILE_STEP, PROFILE_GROWTH, PROFILE_XTOL = 0.5, 1.6, 0.01


class MarginalLikelihoodMixin:
    """``_objective`` / ``_optimize`` of the random-feature GP (see its docstring for the math).

    Expects the estimator's ``features``, ``dtype``, ``optimizer``, ``max_iter``,
    ``learning_rate``, ``verbose``, ``_step``, ``_device``, ``_unit_kernel_at_one()`` and the
    fit-time ``_unit``, ``_opt_map``, ``_centers_opt``, ``_X_opt_t``, ``_y_opt_t`` (on
    ``_device``).
    """

    def _prior(self) -> tuple[float, float] | None:
        """``scale_prior`` as ``(shape, rate)`` floats, or None (a Gaussian process)."""
        prior = getattr(self, "scale_prior", None)
        return None if prior is None else (float(prior[0]), float(prior[1]))

    # -- the likelihood as a function ------------------------------------------------------------
    def log_marginal_likelihood(
        self, theta=None, eval_gradient: bool = False
    ) -> float | tuple[float, np.ndarray]:
        """Log marginal likelihood of log-hyper-parameters ``θ = log(ℓ, a, s)``.

        ``theta=None`` returns ``log_marginal_likelihood_`` (all training rows, fitted
        values). Otherwise the objective of the optimisation is evaluated: the likelihood of
        the (normalised) targets on the optimisation rows (all rows when ``n <=
        max_optimize_rows``) with the optimisation's feature map, and with
        ``eval_gradient=True`` also its gradient with respect to ``θ`` (shape ``(3,)``), as
        in scikit-learn's ``GaussianProcessRegressor``.
        """
        check_is_fitted(self)
        if theta is None:
            if eval_gradient:
                raise ValueError("eval_gradient=True needs theta (log of ℓ, a, s)")
            return self.log_marginal_likelihood_
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        if theta.shape != (3,) or not np.isfinite(theta).all():
            raise ValueError(
                f"theta must hold 3 finite numbers, log(lengthscale), log(amplitude), "
                f"log(noise); got {theta!r}"
            )
        lo, hi = math.log(BOUNDS[0]), math.log(BOUNDS[1])
        if (theta < lo).any() or (theta > hi).any():
            raise ValueError(
                f"theta must lie in [{lo:.4g}, {hi:.4g}] (the log of the bounds {BOUNDS} the fit "
                f"searches; beyond them the likelihood over- or underflows); got {theta!r}"
            )
        self._restore_objective()
        value, grad = self._objective(theta, want_grad=eval_gradient)
        return (value, grad) if eval_gradient else value

    def _restore_objective(self) -> None:
        """Rebuild the optimisation's tensors (after :func:`snnk.io.load_model`)."""
        dt, dev = DTYPES[self.dtype], self._device
        self._X_opt_t = to_device(np.asarray(self._X_opt), dev, dt)
        self._y_opt_t = to_device(np.asarray(self._y_opt, dtype=np.float64), dev)
        self._unit = self._unit_kernel_at_one()
        if self.features == "fourier":
            self._opt_map = self.feature_map_
        else:
            self._centers_opt = to_device(self._centers_opt, dev, dt)

    # -- likelihood and its gradient on the optimisation rows ------------------------------------
    def _objective_map(
        self, log_ls: torch.Tensor, factor: tuple[torch.Tensor, ...] | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The feature map of the optimisation at ``ℓ = exp(log_ls)``: ``x_block -> z``.

        Fourier: differentiable in ``log_ls``. Nyström: ``factor`` is
        :meth:`_nystrom_factor`'s ``(C/ℓ, L, L⁻ᵀ)``; its gradients go through
        :meth:`_nystrom_length_gradient`.
        """
        if self.features == "fourier":
            fmap = self._opt_map
            return lambda xb: fmap(xb / torch.exp(log_ls))
        ls = torch.exp(log_ls)
        C, _, norm = factor
        return lambda xb: self._unit(xb / ls, C) @ norm

    def _nystrom_factor(self, log_ls: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(C/ℓ, L, L⁻ᵀ)`` with ``L Lᵀ = κ(C/ℓ, C/ℓ)`` (jittered): ``Z = κ(X/ℓ, C/ℓ) L⁻ᵀ``."""
        C = self._centers_opt / torch.exp(log_ls)
        Kcc = self._unit(C, C)
        # plain factor first (differentiable), the one jitter ladder only when needed: the
        # optimiser may visit lengthscales at which the centres' kernel matrix is singular
        factor = NystromFactor(Kcc, name="κ(C/ℓ, C/ℓ)", jitter=0.0, symmetrize=True, upcast=False)
        return C, factor.L, factor.inv_T

    def _opt_stats(
        self, log_ls: torch.Tensor, factor: tuple[torch.Tensor, ...] | None = None
    ) -> NormalEquations:
        """One pass over the optimisation rows at ``ℓ = exp(log_ls)``: ``ZᵀZ``, ``Zᵀy``, ``yᵀy``
        (no graph). Nyström: ``factor`` as in :meth:`_objective_map` (computed when None)."""
        X, y = self._X_opt_t, self._y_opt_t
        with torch.no_grad():
            if self.features == "nystrom" and factor is None:
                factor = self._nystrom_factor(log_ls)
            zfun = self._objective_map(
                log_ls, None if factor is None else tuple(t.detach() for t in factor)
            )
            ne = None
            for rows in iter_blocks(X.shape[0], self._step):
                Zb = zfun(X[rows])
                ne = NormalEquations(Zb.shape[1], 1, device=Zb.device) if ne is None else ne
                ne.update(Zb, y[rows, None])
        return ne

    def _objective(self, theta: np.ndarray, want_grad: bool = True) -> tuple[float, np.ndarray]:
        """``(log p(y), ∂ log p(y)/∂θ)`` on the optimisation rows, ``θ = log(ℓ, a, s)``."""
        th = to_device(np.asarray(theta, dtype=np.float64), self._X_opt_t.device)
        log_ls = th[0].clone().requires_grad_(want_grad)
        X, y = self._X_opt_t, self._y_opt_t
        step = self._step
        # The Nyström factor once per evaluation (with its graph to log ℓ when want_grad):
        # pass 1 uses its values, the gradient its graph.
        factor = self._nystrom_factor(log_ls) if self.features == "nystrom" else None
        # Pass 1: sufficient statistics G = ZᵀZ, b = Zᵀy (no graph).
        ne = self._opt_stats(log_ls.detach(), factor)
        G, b = ne.FtF, ne.FtY[:, 0]
        if not want_grad:
            lml = log_marginal_likelihood_from_stats(
                G, b, ne.YtY[0], ne.n, torch.exp(th[1]), torch.exp(th[2]), self._prior()
            )
            return float(lml), np.zeros(3)
        grad = log_marginal_likelihood_with_grad(
            G, b, ne.YtY[0], ne.n, th[1], th[2], scale_prior=self._prior()
        )
        S, gb = grad.gram, grad.proj
        if self.features == "nystrom":
            g_ls = self._nystrom_length_gradient(log_ls, factor, S, gb, G, b)
        else:
            # Pass 2: ∂/∂Z = Z S + y g_bᵀ of each block, pushed back to log ℓ by autograd.
            zfun = self._objective_map(log_ls)
            dt = DTYPES[self.dtype]
            g_ls = torch.zeros((), dtype=torch.float64, device=X.device)
            for rows in iter_blocks(X.shape[0], step):
                Zb = zfun(X[rows])
                gZ = Zb.detach().double() @ S + y[rows, None] * gb[None, :]
                (g,) = torch.autograd.grad(Zb, log_ls, grad_outputs=gZ.to(dt))
                g_ls = g_ls + g
        return grad.value, np.array([float(g_ls), grad.log_amplitude, grad.log_noise])

    def _nystrom_length_gradient(
        self,
        log_ls: torch.Tensor,
        factor: tuple[torch.Tensor, ...],
        S: torch.Tensor,
        gb: torch.Tensor,
        G: torch.Tensor,
        b: torch.Tensor,
    ) -> torch.Tensor:
        r"""``∂ log p(y)/∂ log ℓ`` for Nyström features, one ``n M²`` pass instead of three.

        With ``Z = K N`` (``K = κ(X/ℓ, C/ℓ)``, ``N = L⁻ᵀ``, ``L Lᵀ = K_CC``) and the gradients
        ``S = ∂/∂G + (∂/∂G)ᵀ``, ``g_b = ∂/∂b`` of the likelihood in ``G = ZᵀZ``, ``b = Zᵀy``:
        ``∂/∂Z = Z S + y g_bᵀ``, hence ``∂/∂K = K (N S Nᵀ) + y (N g_b)ᵀ`` (one product with
        ``K``, never forming ``Z``) and ``∂/∂N = Kᵀ ∂/∂Z = L (G S + b g_bᵀ)``, because
        ``KᵀK N = L G`` and ``Kᵀy = L b``: no pass over the rows at all. Both are pushed back
        to ``log ℓ`` by autograd (through the kernel blocks and through ``factor``, the
        :meth:`_nystrom_factor` of ``log_ls`` with its graph).
        """
        dt = DTYPES[self.dtype]
        X, y = self._X_opt_t, self._y_opt_t
        _, Lc, norm = factor  # norm = N = L⁻ᵀ
        N, L = norm.detach().double(), Lc.detach().double()
        S_k = N @ S @ N.T
        g_k = N @ gb
        g_norm = L @ (G @ S + b[:, None] * gb[None, :])
        (g_ls,) = torch.autograd.grad(norm, log_ls, grad_outputs=g_norm.to(norm.dtype))
        for rows in iter_blocks(X.shape[0], self._step):
            ls = torch.exp(log_ls)
            Kb = self._unit(X[rows] / ls, self._centers_opt / ls)
            gK = Kb.detach().double() @ S_k + y[rows, None] * g_k[None, :]
            (g,) = torch.autograd.grad(Kb, log_ls, grad_outputs=gK.to(dt))
            g_ls = g_ls + g
        return g_ls

    def _optimize(self, theta0: np.ndarray) -> tuple[np.ndarray, int]:
        n = self._X_opt_t.shape[0]
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_iter, desc="RandomFeatureGP: marginal likelihood")
        if self.optimizer == "profile":
            try:
                return self._optimize_profile(theta0, bar)
            finally:
                if bar is not None:
                    bar.close()

        def fun(theta):
            v, g = self._objective(theta)
            return -v / n, -g / n

        def callback(value: float) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(nlml=f"{value:.4f}")

        try:
            theta, n_iter, stopped = minimize_bounded(
                fun,
                theta0,
                (math.log(BOUNDS[0]), math.log(BOUNDS[1])),
                method=self.optimizer,
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                callback=callback,
            )
        finally:
            if bar is not None:
                bar.close()
        if stopped is not None:
            warnings.warn(
                f"RandomFeatureGP: L-BFGS-B stopped after {n_iter} iterations without "
                f"converging ({stopped}); raise max_iter or try optimizer='adam'",
                ConvergenceWarning,
                stacklevel=3,
            )
        return theta, n_iter

    def _refit_amplitude_noise(self, ne) -> None:
        r"""Re-maximise the amplitude and the noise at the fitted lengthscale on the
        statistics ``G``, ``b``, ``yᵀy`` of every row (``ne``), when the search saw only
        ``max_optimize_rows`` of them.

        The final pass forms those statistics anyway, and at fixed ``ℓ`` the maximum over
        ``(a, s)`` costs one ``D × D`` eigendecomposition (:func:`profile_amplitude_noise`)
        and no pass over the data, so the noise level (which sets the predictive variance,
        hence the NLPD and the interval coverage) comes from all ``n`` rows instead of a
        subset. Without optimisation (``optimize=False``) the given values stay.
        """
        if not self.optimize or ne.n <= len(self._X_opt):
            return
        lo, hi = math.log(BOUNDS[0]), math.log(BOUNDS[1])
        start = (math.log(self.amplitude_), math.log(self.noise_))
        _, la, ln = profile_amplitude_noise(
            ne.FtF, ne.FtY[:, 0], ne.YtY[0], ne.n, start, (lo, hi), self._prior()
        )
        self.amplitude_, self.noise_ = math.exp(la), math.exp(ln)
        self.kernel_ = self.amplitude_ * with_lengthscale(self._unit, self.lengthscale_)

    def _optimize_profile(self, theta0: np.ndarray, bar) -> tuple[np.ndarray, int]:
        r"""Maximise the profile likelihood ``p(ℓ) = max_{a,s} log p(y | ℓ, a, s)`` over ``log ℓ``.

        Each evaluation is one pass over the optimisation rows for ``G(ℓ) = ZᵀZ``, ``b = Zᵀy``
        (``n D²`` flops, no gradient pass) and :func:`profile_amplitude_noise` (one
        ``D × D`` eigendecomposition, then ``O(D)`` per inner step). The outer search is a
        downhill bracket from ``log ℓ₀`` (steps ×1.6) and a bounded Brent search inside it to
        ``|Δ log ℓ| <= PROFILE_XTOL``; ``max_iter`` caps the passes. The optimum is the
        joint maximum of ``log p(y)`` (exactly, not a bound), found from far fewer passes
        than a joint L-BFGS, which needs a value-and-gradient pass per line-search step.
        """
        from scipy.optimize import minimize_scalar

        n = self._X_opt_t.shape[0]
        lo, hi = math.log(BOUNDS[0]), math.log(BOUNDS[1])
        warm = [float(theta0[1]), float(theta0[2])]
        seen: dict[float, tuple[float, float, float]] = {}

        def f(x: float) -> float:
            x = float(min(max(x, lo), hi))
            if x in seen:
                return seen[x][0]
            if len(seen) >= self.max_iter:
                raise _Budget
            ne = self._opt_stats(torch.tensor(x, dtype=torch.float64, device=self._X_opt_t.device))
            value, la, ln = profile_amplitude_noise(
                ne.FtF, ne.FtY[:, 0], ne.YtY[0], ne.n, tuple(warm), (lo, hi), self._prior()
            )
            warm[:] = [la, ln]
            seen[x] = (-value / n, la, ln)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(nlml=f"{-value / n:.4f}", lengthscale=f"{math.exp(x):.3g}")
            return -value / n

        stopped = False
        try:
            x0 = float(np.clip(theta0[0], lo, hi))
            x1 = min(x0 + PROFILE_STEP, hi)
            f0, f1 = f(x0), f(x1)
            # walk downhill from the start (up if f falls there) until f rises or a bound
            prev, a, fa, sign = (x0, x1, f1, 1.0) if f1 < f0 else (x1, x0, f0, -1.0)
            step, bracket = PROFILE_STEP, None
            while True:
                nxt = float(np.clip(a + sign * step, lo, hi))
                if nxt == a:  # the optimum is at a bound
                    break
                fn = f(nxt)
                if fn >= fa:
                    bracket = (min(prev, nxt), max(prev, nxt))
                    break
                prev, a, fa = a, nxt, fn
                step *= PROFILE_GROWTH
            if bracket is not None and bracket[1] - bracket[0] > PROFILE_XTOL:
                minimize_scalar(
                    f,
                    bounds=bracket,
                    method="bounded",
                    options={"xatol": PROFILE_XTOL, "maxiter": self.max_iter},
                )
        except _Budget:
            stopped = True
        x = min(seen, key=lambda k: seen[k][0])
        _, la, ln = seen[x]
        if stopped:
            warnings.warn(
                f"RandomFeatureGP: the profile-likelihood search used its max_iter={self.max_iter}"
                " likelihood passes without converging; raise max_iter",
                ConvergenceWarning,
                stacklevel=4,
            )
        return np.array([x, la, ln]), len(seen)


class _Budget(Exception):
    """Raised inside the profile search when ``max_iter`` passes are used."""
