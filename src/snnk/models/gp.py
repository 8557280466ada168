r"""Gaussian-process regression on random features (or Nyström features), at any scale.

Bayesian linear regression on a fixed feature map ``z(x) = φ(x/ℓ)`` of a unit-variance
shift-invariant kernel: every posterior and likelihood quantity goes through the ``D × D``
matrix ``A = ZᵀZ + (s/a) I`` (Woodbury), so a fit costs ``O(nD²)`` with ``ZᵀZ`` accumulated
over row blocks, and a prediction ``O(D²)`` per point. See :class:`RandomFeatureGP`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._utils import check_bool, check_in, iter_blocks
from snnk._utils.blocks import BLOCK_ELEMENTS, DEPRECATED, default_block_rows, resolve_block_rows
from snnk._utils.random import check_random_state
from snnk.features import SAMPLERS, FourierFeatures, NystromFeatures
from snnk.features.centers import CENTER_METHODS, select_center_indices
from snnk.io import PersistMixin
from snnk.kernels import Kernel, ShiftInvariantKernel, resolve_kernel, split_scale, with_lengthscale
from snnk.models._base import as_numpy, is_dask, refuse_path, validate_data
from snnk.models._dask import dask_inputs, dask_normal_equations
from snnk.models._device import (
    as_output,
    block_elements,
    fit_device,
    move_module,
    on_cpu,
    state_device,
    to_device,
)
from snnk.models._gp_objective import DTYPES, MarginalLikelihoodMixin
from snnk.solvers import (
    NormalEquations,
    cholesky_solve,
    jittered_cholesky,
    log_marginal_likelihood_from_stats,
    student_t_log_pdf,
    student_t_posterior_scale,
)

__all__ = ["RandomFeatureGP", "log_marginal_likelihood_from_stats"]

_FEATURES = ("fourier", "nystrom")
_OPTIMIZERS = ("profile", "lbfgs", "adam")
_HINTS = {
    "max_optimize_rows": "; pass None to use every row",
    "noise": " (a noise-free GP is ill-posed: use a small value such as 1e-6)",
}


def _normalised_column(mean: float, scale: float, y) -> np.ndarray:
    """``(y − mean)/scale`` as a float64 column: the targets of one Dask chunk."""
    return ((np.asarray(y, dtype=np.float64) - mean) / scale)[:, None]


def _unit_kernel(kernel: Kernel | str, lengthscale: float) -> tuple[Kernel, float, float]:
    """``(κ, ℓ, c)``: the kernel is ``c · κ(·/ℓ)``, ``κ`` at unit lengthscale. A name uses
    ``lengthscale``; a kernel object brings its own lengthscale (and scale)."""
    k = resolve_kernel(kernel, lengthscale)
    if not isinstance(getattr(k, "base", k), ShiftInvariantKernel):
        raise ValueError(
            f"RandomFeatureGP needs a shift-invariant kernel (gaussian, laplace, matern), got "
            f"{kernel!r}; use snnk.models.RandomFeatureRidge for other kernels"
        )
    return split_scale(k)


class RandomFeatureGP(MarginalLikelihoodMixin, PersistMixin, RegressorMixin, BaseEstimator):
    r"""Gaussian-process regression on random Fourier (or Nyström) features.

    Model: ``f(x) = √a · z(x)ᵀw``, ``w ~ N(0, I_D)``, ``y = f(x) + ε``, ``ε ~ N(0, s)``, with
    ``z(x) = φ(x/ℓ)`` a fixed random feature map of the unit-lengthscale kernel ``κ``, so
    ``Cov f(x), f(x') = a z(x)ᵀz(x') ≈ a κ((x − x')/ℓ)``. With ``Z`` the ``n × D`` features
    of the training rows and ``A = ZᵀZ + (s/a) I`` (Cholesky ``A = L Lᵀ``), the posterior
    of the latent ``f`` at a test point ``x*`` with features ``z*`` is Gaussian with

    ``mean  = z*ᵀ A⁻¹ Zᵀ y``,    ``var = s ‖L⁻¹ z*‖² (+ a (κ(0) − ‖z*‖²) for Nyström)``.

    The second variance term (the deterministic training conditional, DTC) adds back the
    prior variance the Nyström map cannot see; it makes the Nyström GP with every training
    row as a centre *the exact GP*. For Fourier features ``‖z*‖² = κ(0)`` exactly (cos/sin
    pairs) and the term vanishes. ``ZᵀZ`` and ``Zᵀy`` are accumulated over row blocks, so the
    ``n × D`` feature matrix is never held: a fit costs ``O(nD²)`` time and ``O(D² +
    block·D)`` memory, a prediction ``O(D²)`` per test point.

    Hyper-parameters ``ℓ`` (``lengthscale``), ``a`` (``amplitude``) and ``s`` (``noise``)
    are fitted (``optimize=True``) by maximising the log marginal likelihood of the feature
    model, ``log N(y; 0, a ZZᵀ + s I)``, computed exactly on the features by the Woodbury
    identity (see :func:`log_marginal_likelihood_from_stats`) with the random draw held
    fixed: the unit-lengthscale frequencies are a buffer and the inputs are divided by
    ``ℓ``. The default optimiser (``"profile"``) maximises the profile likelihood
    ``max_{a,s} log p(y | ℓ, a, s)`` over ``log ℓ``: one pass for ``G = ZᵀZ``, ``b = Zᵀy``
    and one ``D × D`` eigendecomposition per lengthscale, ``O(D)`` per step in ``(a, s)``
    (:func:`snnk.solvers.likelihood.profile_amplitude_noise`). ``"lbfgs"`` / ``"adam"`` use
    the exact blocked gradient in all three (a second pass pushes ``∂/∂Z`` back to ``ℓ``).
    Log-hyper-parameters are bounded to ``[1e-5, 1e5]``; above ``max_optimize_rows`` rows
    the likelihood is optimised on a random subset (the posterior uses every row).

    Parameters
    ----------
    kernel : str or Kernel, default "gaussian"
        ``"gaussian"`` (``"rbf"``), ``"laplace"``, ``"matern"`` (ν = 1.5), or a
        shift-invariant :mod:`snnk.kernels` object (e.g. ``Matern(nu=2.5)``), possibly scaled
        (``2.0 * Gaussian(3.0)``). For an object, its own lengthscale is the starting
        lengthscale (the ``lengthscale`` argument is then ignored) and its scale multiplies
        ``amplitude``.
    lengthscale : float, default 1.0
        ``ℓ``: starting value (``optimize=True``) or value used.
    amplitude : float, default 1.0
        ``a``, the signal variance ``Var f(x) = k(x, x)``: ``ConstantKernel``'s value in
        scikit-learn, ``outputscale`` in GPyTorch. Starting value or value used.
    noise : float, default 0.1
        ``s``, the noise variance (scikit-learn's ``WhiteKernel`` noise level, GPyTorch's
        ``likelihood.noise``). Starting value or value used. Must be positive.
    num_features : int, default 1024
        ``D``: random features (``"fourier"``; even, cos/sin pairs) or Nyström centres
        (``"nystrom"``; at most ``n``, the number of rows used is ``num_features_``).
    sampler : {"orthogonal", "iid", "structured", "qmc", "halton"}, default "orthogonal"
        Frequency sampler of the Fourier features (see :class:`~snnk.features.FourierFeatures`).
    features : {"fourier", "nystrom"}, default "fourier"
        ``"fourier"``: random Fourier features. ``"nystrom"``: ``z(x) = κ(x/ℓ, C/ℓ)
        K_CC^{-1/2}`` on ``num_features`` training rows ``C`` drawn uniformly; more accurate
        per feature, and with ``num_features = n`` it is the exact GP. During the
        optimisation its centres are the first ``min(num_features, max_optimize_rows)`` of the
        rows drawn for it (a subset of the final centres), factored by a jittered Cholesky.
    center_selection : str, default "uniform"
        How the Nyström centres are chosen among the training rows (``features="nystrom"``):
        ``"uniform"`` draws them with the optimisation subsample; any other row selector of
        :func:`snnk.features.select_center_indices` (``"kmeans++"``, ``"rls"``, ``"bless"``,
        ``"kdpp"``, ``"pivoted-cholesky"``, ``"rpcholesky"``) picks them for the kernel at
        the starting lengthscale, in draw order, the first ones serving the optimisation.
    scale_prior : (shape, rate) or None, default None
        An inverse-gamma prior ``σ² ~ InvGamma(a, b)`` on a common scale of the covariance
        ``C = a_f ZZᵀ + s I`` (a scale mixture: the Student-t process of
        :mod:`snnk.solvers.student_t`). The hyper-parameters then maximise the Student-t
        marginal, and predictive variances are multiplied by ``variance_factor_ =
        (2b + Q)/(2a + n)`` (``Q = yᵀC⁻¹y``; the predictive law is Student-t with ``df_ =
        2a + n`` degrees of freedom). ``None``: the Gaussian process.
    normalize_y : bool, default True
        Centre ``y`` and divide it by its standard deviation before fitting (scikit-learn's
        ``normalize_y``); ``amplitude``, ``noise`` and their fitted values are then in units
        of the normalised target, and predictions are mapped back.
    optimize : bool, default True
        Fit ``ℓ, a, s`` by maximising the log marginal likelihood; ``False`` keeps the given
        values.
    optimizer : {"profile", "lbfgs", "adam"}, default "profile"
        ``"profile"``: the profile likelihood in ``ℓ`` (``a`` and ``s`` maximised in closed
        spectral form at each ``ℓ``), one data pass per evaluation and no gradient pass; the
        same maximum as ``"lbfgs"`` at 3-5x less work. ``"lbfgs"``: SciPy's L-BFGS-B on the
        three log-hyper-parameters with the exact gradient (a line search may evaluate the
        likelihood several times per iteration). ``"adam"``: ``max_iter`` Adam steps of
        ``learning_rate`` on the log-parameters, one likelihood evaluation each.
    max_iter : int, default 100
        Likelihood passes (``"profile"``), iterations (L-BFGS) or steps (Adam).
    learning_rate : float, default 0.05
        Adam step size on the log-parameters.
    max_optimize_rows : int or None, default 20000
        Rows the likelihood is optimised on (drawn without replacement when ``n`` is larger);
        ``None``: all rows.
    dtype : {"float64", "float32"}, default "float64"
        Dtype of the features. ``ZᵀZ`` is accumulated, and every ``D × D`` factorisation done,
        in float64 whatever ``dtype`` is; a float32 input gives float32 predictions either way.
    block_rows : int, default 4096
        Rows per block (capped so that a block of features stays within about 128 MB).
    batch_size : int, default "deprecated"
        Deprecated alias of ``block_rows`` (``FutureWarning``).
    random_state : int, RandomState or None
        Seeds the feature draw, the Nyström centres and the optimisation subsample.
    verbose : bool, default False
        Show a tqdm progress bar over the optimisation.
    device : str or torch.device, default "cpu"
        Where the fit runs (``"cuda"``: likelihood passes and the posterior on the GPU);
        ``feature_map_`` stays there and ``predict`` computes there (a saved model loads on
        the CPU). NumPy in gives NumPy out; a tensor in, tensors on its device (docs/gp.md).

    Attributes
    ----------
    lengthscale_, amplitude_, noise_ : float
        Fitted hyper-parameters (normalised units when ``normalize_y``).
    kernel_ : Kernel
        ``amplitude_ * κ`` at ``lengthscale_`` (the prior covariance of ``f``).
    log_marginal_likelihood_ : float
        ``log p(y)`` of the fitted model on all training rows (normalised ``y`` when
        ``normalize_y``).
    n_iter_ : int
        Likelihood passes (``"profile"``) or optimiser iterations (0 when ``optimize=False``).
    coef_ : ndarray of shape ``(D,)``
        ``A⁻¹ Zᵀ y``: the posterior mean is ``z(x)ᵀ coef_`` (before un-normalising).
    cholesky_ : ndarray of shape ``(D, D)``
        Lower Cholesky factor ``L`` of ``A``.
    feature_map_ : FourierFeatures or NystromFeatures
        The unit-lengthscale map ``φ``; ``z(x) = φ(x / lengthscale_)``.
    num_features_ : int
        ``D`` actually used.
    y_mean_, y_scale_ : float
        Target normalisation (0 and 1 without ``normalize_y``).
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from snnk.models import RandomFeatureGP
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 3)); y = np.sin(X[:, 0]) + 0.1 * rng.normal(size=500)
    >>> gp = RandomFeatureGP(num_features=256, random_state=0).fit(X, y)
    >>> mean, std_f = gp.predict(X[:5], return_std=True)  # latent f: noise excluded
    >>> _, std_y = gp.predict(X[:5], return_std=True, include_noise=True)  # a new y
    >>> bool((std_y > std_f).all())
    True
    """

    _persist_private: tuple[str, ...] = ("_X_opt", "_y_opt", "_centers_opt")

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float = 1.0,
        amplitude: float = 1.0,
        noise: float = 0.1,
        num_features: int = 1024,
        sampler: str = "orthogonal",
        features: str = "fourier",
        center_selection: str = "uniform",
        scale_prior: tuple[float, float] | None = None,
        normalize_y: bool = True,
        optimize: bool = True,
        optimizer: str = "profile",
        max_iter: int = 100,
        learning_rate: float = 0.05,
        max_optimize_rows: int | None = 20000,
        dtype: str = "float64",
        block_rows: int = 4096,
        random_state=None,
        verbose: bool = False,
        batch_size: int | str | None = DEPRECATED,
        device: str | torch.device | None = "cpu",
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.amplitude = amplitude
        self.noise = noise
        self.num_features = num_features
        self.sampler = sampler
        self.features = features
        self.center_selection = center_selection
        self.scale_prior = scale_prior
        self.normalize_y = normalize_y
        self.optimize = optimize
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_optimize_rows = max_optimize_rows
        self.dtype = dtype
        self.block_rows = block_rows
        self.random_state = random_state
        self.verbose = verbose
        self.batch_size = batch_size
        self.device = device

    # -- parameters ------------------------------------------------------------------------------
    def _check_params(self) -> tuple[ShiftInvariantKernel, float, float, float]:
        """Validate the hyper-parameters; return ``(κ, ℓ₀, a₀, s₀)``."""
        ints = ["num_features", "max_iter", "block_rows"]
        if self.max_optimize_rows is not None:
            ints.append("max_optimize_rows")
        reals = ["lengthscale", "amplitude", "noise", "learning_rate"]
        for name in ints + reals:
            v, kind = getattr(self, name), numbers.Integral if name in ints else numbers.Real
            if isinstance(v, bool) or not isinstance(v, kind) or not (math.isfinite(v) and v > 0):
                raise ValueError(
                    f"{name} must be a positive "
                    + (f"integer, got {v!r}" if name in ints else f"finite number, got {v!r}")
                    + _HINTS.get(name, "")
                )
        resolve_block_rows(self.block_rows, self.batch_size, owner="RandomFeatureGP")
        check_in(self.features, "features", _FEATURES)
        prior = self.scale_prior
        if prior is not None and not (
            isinstance(prior, tuple | list)
            and len(prior) == 2
            and all(
                isinstance(v, numbers.Real)
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v > 0
                for v in prior
            )
        ):
            raise ValueError(
                f"scale_prior must be None or (shape, rate), two positive finite numbers of the "
                f"inverse-gamma prior, got {prior!r}; e.g. scale_prior=(2.0, 2.0)"
            )
        rows = tuple(k for k, spec in CENTER_METHODS.items() if not spec.returns_rows)
        check_in(self.center_selection, "center_selection", rows)
        check_in(self.optimizer, "optimizer", _OPTIMIZERS)
        check_in(self.dtype, "dtype", tuple(DTYPES))
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.features == "fourier" and self.num_features % 2:
            raise ValueError(
                f"num_features must be even for features='fourier' (cos/sin pairs), got "
                f"{self.num_features}; use {self.num_features + 1}"
            )
        unit, ls, scale = _unit_kernel(self.kernel, float(self.lengthscale))
        return unit, float(ls), float(self.amplitude) * scale, float(self.noise)

    @property
    def _step(self) -> int:
        rows = resolve_block_rows(self.block_rows, self.batch_size, warn=False)
        budget = block_elements(self._device, BLOCK_ELEMENTS)
        return max(1, min(rows, default_block_rows(self.num_features, budget)))

    @property
    def _device(self) -> torch.device:
        """Where the model computes: the fit device during a fit, then the fitted map's
        (the CPU after :func:`snnk.io.load_model`)."""
        return self.__dict__.get("_fit_dev") or state_device(getattr(self, "feature_map_", None))

    def _unit_kernel_at_one(self) -> ShiftInvariantKernel:
        return _unit_kernel(self.kernel, 1.0)[0]

    # -- feature maps ----------------------------------------------------------------------------
    def _fourier_map(self, unit: ShiftInvariantKernel, d: int, seed: int) -> FourierFeatures:
        """The map drawn on the CPU (a CPU generator: the same draw on every device)."""
        kw = {"sampler": self.sampler, "seed": seed, "dtype": DTYPES[self.dtype]}
        with on_cpu():
            fmap = FourierFeatures(unit, d, self.num_features, **kw)
        return fmap.requires_grad_(False)

    def _build_modules(self) -> None:
        """Recreate ``feature_map_``'s skeleton for :func:`snnk.io.load_model` (on the CPU:
        ``device`` is a parameter, not state)."""
        unit, d, dt = self._unit_kernel_at_one(), self.n_features_in_, DTYPES[self.dtype]
        if self.features == "fourier":
            self.feature_map_ = self._fourier_map(unit, d, 0)
        else:
            with on_cpu():
                fmap = NystromFeatures(unit, self.num_features_, seed=0)
                self.feature_map_ = fmap.allocate(d, dt)

    def _blocks(self, X: np.ndarray) -> Iterator[tuple[torch.Tensor, slice]]:
        """``(z(X[rows]), rows)`` over row blocks with the fitted map (no autograd)."""
        dt, dev = DTYPES[self.dtype], self._device
        with torch.no_grad():
            for rows in iter_blocks(X.shape[0], self._step):
                xb = to_device(X[rows], dev, dt) / self.lengthscale_
                yield self.feature_map_(xb).to(dt), rows

    # -- fit -------------------------------------------------------------------------------------
    def fit(self, X, y) -> RandomFeatureGP:
        """Fit the hyper-parameters (``optimize=True``) and the posterior on ``X`` of shape
        ``(n, d)`` and ``y`` of shape ``(n,)``; returns ``self``.

        ``X`` (and ``y``) may be Dask arrays (or a Dask data frame): the optimisation rows
        (``max_optimize_rows``, drawn as in memory) and the Nyström centres are gathered to
        the client, and the final ``ZᵀZ``, ``Zᵀy`` over all rows are a map-reduce over the
        chunks (:func:`snnk.models._dask`), so the fit equals the in-memory fit up to the
        order of floating-point sums."""
        unit, ls0, amp0, noise0 = self._check_params()
        refuse_path(X, type(self).__name__)
        self._fit_dev = fit_device(self)  # a device that cannot fit fails before any work
        try:
            return self._fit(X, y, unit, ls0, amp0, noise0)
        finally:
            del self._fit_dev

    def _fit(self, X, y, unit, ls0, amp0, noise0) -> RandomFeatureGP:
        if is_dask(X):
            return self._fit_dask(X, y, unit, ls0, amp0, noise0)
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        y = column_or_1d(y, warn=True).astype(np.float64)
        self._set_y_scale(float(y.mean()), float(y.std()))
        yn = (y - self.y_mean_) / self.y_scale_
        self._fit_rows(X.shape, lambda idx: (X[idx], yn[idx]), X, (unit, ls0, amp0, noise0))
        self._posterior(self._stats(X, yn[:, None], None))
        return self

    def _fit_dask(self, X, y, unit, ls0, amp0, noise0) -> RandomFeatureGP:
        if self.center_selection != "uniform" and self.features == "nystrom":
            raise ValueError(
                f"center_selection={self.center_selection!r} needs the rows in memory; on a "
                "Dask array use center_selection='uniform' (or compute X first)"
            )
        Xd, yd, _ = dask_inputs(X, y, None)
        Xd, yd = Xd.persist(), yd.astype(np.float64).persist()
        validate_data(self, Xd.blocks[0].compute()[:1], np.zeros(1), dtype=[np.float64, np.float32])
        self._set_y_scale(*(float(v) for v in (yd.mean().compute(), yd.std().compute())))

        def take(idx):
            order = np.argsort(idx)  # a Dask gather wants sorted indices; restore the order
            rows, vals = (a[idx[order]].compute() for a in (Xd, yd))
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            rows = check_array(rows, dtype=[np.float64, np.float32])[inv]
            return rows, _normalised_column(self.y_mean_, self.y_scale_, vals[inv])[:, 0]

        self._fit_rows(Xd.shape, take, None, (unit, ls0, amp0, noise0))
        targets = partial(_normalised_column, self.y_mean_, self.y_scale_)
        self._posterior(dask_normal_equations(self, Xd, yd, None, targets).to(self._device))
        return self

    def _set_y_scale(self, mean: float, sd: float) -> None:
        self.y_mean_, sd = (mean, sd) if self.normalize_y else (0.0, 1.0)
        self.y_scale_ = sd if sd > 0 else 1.0

    def _fit_rows(self, shape, take, X, start) -> None:
        """Draw the optimisation rows and centres with ``take(indices) -> (X rows, yn rows)``,
        optimise the hyper-parameters and set the final feature map."""
        unit, ls0, amp0, noise0 = start
        n, d = shape
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(2**31 - 1))
        perm = rng.permutation(n)
        n_opt = n if self.max_optimize_rows is None else min(n, self.max_optimize_rows)
        D = self.num_features if self.features == "fourier" else min(self.num_features, n)
        self.num_features_ = D
        dt, dev = DTYPES[self.dtype], self._device
        self._unit = unit
        X_opt, self._y_opt = take(np.sort(perm[:n_opt]))
        self._X_opt = X_opt.astype(np.float64)
        self._X_opt_t = to_device(self._X_opt, dev, dt)
        self._y_opt_t = to_device(self._y_opt, dev, torch.float64)
        if self.features == "fourier":
            self._opt_map = move_module(self._fourier_map(unit, d, seed), dev)
        else:
            if self.center_selection == "uniform":
                centers = take(perm[:D])[0].astype(np.float64)
            else:
                kernel = with_lengthscale(unit, ls0)
                idx = select_center_indices(
                    X, D, method=self.center_selection, random_state=seed, kernel=kernel
                )
                centers = X[idx.numpy()].astype(np.float64)
            self._centers_opt = to_device(centers[: min(D, n_opt)], dev, dt)
        theta = np.log([ls0, amp0, noise0])
        self.n_iter_ = 0
        if self.optimize:
            theta, self.n_iter_ = self._optimize(theta)
        ls, amp, noise = (float(v) for v in np.exp(theta))
        self.lengthscale_, self.amplitude_, self.noise_ = ls, amp, noise
        self.kernel_ = amp * with_lengthscale(unit, ls)
        # Final map over every row.
        if self.features == "fourier":
            self.feature_map_ = self._opt_map
        else:
            with on_cpu():
                fmap = NystromFeatures(unit, D, seed=seed)
            self.feature_map_ = fmap.fit(to_device(centers, dev, dt) / ls)

    def _stats(self, X, Y, w=None) -> NormalEquations:
        """``ZᵀZ``, ``ZᵀY`` of validated rows ``X`` and normalised targets ``Y`` ``(n, 1)``
        with the fitted map (one chunk of a Dask fit, or all rows)."""
        ne = NormalEquations(self.num_features_, 1, device=self._device)
        Yt = to_device(np.asarray(Y, dtype=np.float64), self._device)
        for Z, rows in self._blocks(X):
            ne.update(Z, Yt[rows])
        return ne

    def _posterior(self, ne: NormalEquations) -> None:
        """Factor ``A = ZᵀZ + (s/a) I`` from the statistics of all rows; set the fitted state."""
        self._refit_amplitude_noise(ne)
        G, b = ne.FtF, ne.FtY[:, 0]
        dd = {"dtype": torch.float64, "device": G.device}
        amp, noise = (torch.tensor(v, **dd) for v in (self.amplitude_, self.noise_))
        prior = self._prior()
        self.log_marginal_likelihood_ = float(
            log_marginal_likelihood_from_stats(G, b, ne.YtY[0], ne.n, amp, noise, prior)
        )
        eye = torch.eye(G.shape[0], **dd)
        L = jittered_cholesky(G + (self.noise_ / self.amplitude_) * eye, name="ZᵀZ + λI")
        self.coef_ = cholesky_solve(L, b[:, None])[:, 0].cpu().numpy()
        self.cholesky_ = L.cpu().numpy()
        self.variance_factor_, self.df_ = 1.0, None
        if prior is not None:  # Q = yᵀC⁻¹y = (yᵀy − ‖L⁻¹b‖²)/s (Woodbury)
            alpha = torch.linalg.solve_triangular(L, b[:, None], upper=False)
            quad = (ne.YtY[0] - alpha.square().sum()) / self.noise_
            factor, df = student_t_posterior_scale(quad, ne.n, *prior)
            self.variance_factor_, self.df_ = float(factor), float(df)

    # -- prediction ------------------------------------------------------------------------------
    def predict(
        self, X, return_std: bool = False, return_cov: bool = False, *, include_noise: bool = False
    ):
        """Posterior predictive mean (and standard deviation or covariance) at ``X``.

        The convention is scikit-learn's ``GaussianProcessRegressor`` with the noise given as
        ``alpha`` and GPyTorch's ``model(x)``: by default (``include_noise=False``) the standard
        deviation and covariance are those of the **latent function** ``f``,
        ``var f(x*) = s ‖L⁻¹z*‖² (+ DTC term)``. With ``include_noise=True`` they are those of
        a **new observation** ``y* = f(x*) + ε`` (GPyTorch's ``likelihood(model(x))``): the
        noise variance ``noise_`` is added, ``var y* = var f(x*) + s`` (``Cov = Cov f + s I``),
        which is what prediction intervals for new data and the NLPD need. Both are in the
        units of ``y`` (times ``y_scale_²``) and, with ``scale_prior``, times
        ``variance_factor_`` (then the squared scale of a Student-t with ``df_`` degrees of
        freedom, not a variance).

        Parameters
        ----------
        X : array-like of shape ``(m, d)``
        return_std : bool, default False
            Also return the standard deviation, shape ``(m,)``.
        return_cov : bool, default False
            Also return the covariance, shape ``(m, m)`` (not with ``return_std``).
        include_noise : bool, default False
            Keyword only. ``False``: of the latent ``f``; ``True``: of a new observation ``y``.

        Returns
        -------
        mean : ndarray of shape ``(m,)`` in ``X``'s floating dtype, and the std or covariance.
        """
        include_noise = check_bool(
            include_noise, "include_noise", "True adds the observation noise to the std"
        )
        if return_std and return_cov:
            raise RuntimeError(
                "at most one of return_std or return_cov can be requested; call predict twice"
            )
        check_is_fitted(self)
        like, X = X, validate_data(self, as_numpy(X), reset=False, dtype=[np.float64, np.float32])
        m, dev = X.shape[0], self._device
        w, L = to_device(self.coef_, dev), to_device(self.cholesky_, dev)
        nystrom = self.features == "nystrom"
        noise = self.noise_ if include_noise else 0.0
        mean = np.empty(m, dtype=np.float64)
        var = np.empty(m, dtype=np.float64) if return_std else None
        V = np.empty((self.num_features_, m)) if return_cov else None
        for Z, rows in self._blocks(X):
            Z = Z.double()
            mean[rows] = (Z @ w).cpu().numpy()
            if return_std or return_cov:
                Vb = torch.linalg.solve_triangular(L, Z.T, upper=False)  # L⁻¹ z*, (D, b)
                if return_cov:
                    V[:, rows] = Vb.cpu().numpy()
                else:
                    v = self.noise_ * Vb.square().sum(0)
                    if nystrom:  # DTC: prior variance the centres cannot represent
                        v += self.amplitude_ * (1.0 - Z.square().sum(1)).clamp_min(0.0)
                    v = v.clamp_min(0.0) + noise
                    var[rows] = (v * self._variance_factor()).cpu().numpy()
        out_dtype = X.dtype
        mean = (mean * self.y_scale_ + self.y_mean_).astype(out_dtype, copy=False)
        if return_std:
            std = (np.sqrt(var) * self.y_scale_).astype(out_dtype, copy=False)
            return as_output(mean, like), as_output(std, like)
        if return_cov:
            cov = self.noise_ * (V.T @ V)
            if nystrom:
                Xs = to_device(X, dev, torch.float64) / self.lengthscale_
                Zs = np.concatenate([Z.double().cpu().numpy() for Z, _ in self._blocks(X)], 0)
                Kss = self._unit_kernel_at_one()(Xs).cpu().numpy()
                cov += self.amplitude_ * (Kss - Zs @ Zs.T)
            cov[np.diag_indices(m)] += noise
            cov *= self._variance_factor() * self.y_scale_**2
            return as_output(mean, like), as_output(cov.astype(out_dtype, copy=False), like)
        return as_output(mean, like)

    def log_predictive_density(self, X, y) -> np.ndarray:
        """``log p(y_i | x_i, data)`` of each row, shape ``(m,)``, in the units of ``y``:
        Gaussian with the observation variance (``include_noise=True``), or Student-t with
        ``df_`` degrees of freedom with ``scale_prior``. The NLPD is minus its mean."""
        mean, std = self.predict(as_numpy(X), return_std=True, include_noise=True)
        y = column_or_1d(
            check_array(as_numpy(y), ensure_2d=False, dtype=np.float64, input_name="y")
        )
        if y.shape != mean.shape:
            raise ValueError(f"y must have {mean.shape[0]} values (one per row of X), got {y.size}")
        mt, yt = torch.from_numpy(mean.astype(np.float64)), torch.from_numpy(y)
        vt = torch.from_numpy(std.astype(np.float64) ** 2)
        if getattr(self, "df_", None) is None:
            return as_output(-0.5 * (torch.log(2 * math.pi * vt) + (yt - mt).square() / vt), X)
        return as_output(student_t_log_pdf(yt, mt, vt, self.df_), X)

    def _variance_factor(self) -> float:
        """``variance_factor_`` (1 for a Gaussian process and files saved before it existed)."""
        return float(getattr(self, "variance_factor_", 1.0))

    def sample_y(self, X, n_samples: int = 1, random_state=0) -> np.ndarray:
        """Draw latent functions ``f`` from the posterior at ``X``, shape ``(m, n_samples)``."""
        mean, cov = self.predict(as_numpy(X), return_cov=True)
        evals, evecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
        root = evecs * np.sqrt(np.clip(evals, 0.0, None))
        noise = check_random_state(random_state).standard_normal((mean.shape[0], n_samples))
        return as_output(mean.astype(np.float64)[:, None] + root @ noise, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
