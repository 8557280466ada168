r"""Deep kernel machines (DKMs): the Bayesian representation-learning limit of deep GPs.

A deep Gaussian process with ``L`` hidden layers of widths ``N_ℓ = N ν_ℓ``, taken to the limit
``N → ∞`` with the likelihood kept at the same order (Yang, Robeyns, Milsom, Anson, Schoots &
Aitchison, ICML 2023), has Gaussian posteriors whose Gram matrices ``G_ℓ`` maximise

.. math:: \mathcal L(G_1, …, G_L) = \log P(Y | G_L)
          − \sum_ℓ ν_ℓ\, \mathrm{KL}\big(N(0, G_ℓ) \,\|\, N(0, K(G_{ℓ-1}))\big),

with ``K(·)`` the NNGP layer map (:class:`snnk.kernels.NNGP`) and ``G_0`` the first affine
layer. ``ν → ∞`` pins ``G_ℓ = K(G_{ℓ-1})``: the NNGP Gaussian process of the same depth;
finite ``ν`` lets the data reshape every layer's kernel (representation learning).

:class:`DeepKernelMachineRegressor` learns ``G_ℓ`` on ``m`` inducing points (``G = LLᵀ``,
initialised at the prior, so every KL starts at 0), propagates them to the data points by
the Gaussian conditional (see :mod:`snnk.models._dkm_core`), and scores the output layer
with the collapsed (Titsias) bound; with every training row an inducing point
(``num_inducing ≥ n``) it is the full DKM with the exact Gaussian log-likelihood. The
hyper-parameters ``σ_w², σ_b²`` and the noise are first fitted to the NNGP-GP (``ν = ∞``), the
Gram matrices start at its prior, and then everything is learned jointly by L-BFGS
(float64), as the authors initialise and train.
An inverse-gamma prior on the output variance (``scale_prior=(a, b)``) turns the output
GP into a Student-t process (Lee et al., ICLR 2022; :mod:`snnk.solvers.student_t`).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

import snnk.models._dkm_core as core
from snnk._persist import ArraySpec, PersistMixin, ValueSpec
from snnk._utils import check_bool
from snnk.features import select_centers
from snnk.kernels import NNGP
from snnk.models._base import POSITIVE, POSITIVE_INT, as_numpy, progress, refuse_path
from snnk.models._device import as_output, fit_device, on_cpu, state_device, to_device
from snnk.solvers.student_t import student_t_log_pdf, student_t_posterior_scale

__all__ = ["DeepKernelMachineClassifier", "DeepKernelMachineRegressor"]


def _lbfgs(params: list[torch.Tensor], objective, scale: float, max_iter: int) -> int:
    """Minimise ``scale * objective()[0]`` over ``params`` by L-BFGS (strong Wolfe); returns
    the iterations run."""
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
    )

    last = [None]

    def closure():
        opt.zero_grad()
        try:
            value = scale * objective()[0]
        except torch.linalg.LinAlgError:  # a line-search trial too far: not factorable
            value = None
        if value is None or not torch.isfinite(value):
            # a large finite value (zero slope) makes the line search step back
            bad = 1e6 + 10.0 * abs(last[0] if last[0] is not None else 0.0)
            return torch.tensor(bad, dtype=torch.float64, device=params[0].device)
        value.backward()
        last[0] = float(value.detach())
        return value

    opt.step(closure)
    return int(opt.state[params[0]].get("n_iter", 0))


_ACTIVATIONS = {"relu", "leaky_relu", "abs", "erf", "gelu"}


def _kernel(est: Any, sw: Any, sb: Any) -> NNGP:
    """The NNGP layer map, with (possibly differentiable tensor) variances ``sw, sb``."""
    k = NNGP(est.depth + 1, est.activation, 1.0, 0.0)
    k.weight_variance, k.bias_variance = sw, sb
    return k


class DeepKernelMachineRegressor(PersistMixin, RegressorMixin, BaseEstimator):
    r"""Deep kernel machine regression with NNGP kernels between layers.

    Parameters
    ----------
    depth : int, default 2
        ``L``, the hidden layers of the deep GP (learned Gram matrices). The NNGP it reduces
        to at ``nu = inf`` has ``L + 1`` hidden layers (``L + 1`` kernel maps).
    activation : {"relu", "leaky_relu", "abs", "erf", "gelu"}, default "relu"
        Activation of the NNGP layer map (closed forms only).
    nu : float, default 1.0
        ``ν``, the weight of every KL term; ``float("inf")`` is the NNGP Gaussian process
        (no Gram matrix is learned; hyper-parameters still are).
    num_inducing : int, default 256
        ``m``; ``m ≥ n`` uses every training row (the full DKM).
    inducing : {"kmeans", "uniform"}, default "kmeans"
        How the inducing points are chosen (:func:`snnk.features.select_centers`).
    weight_variance, bias_variance : float, default 2.0, 0.1
        Starting (or, with ``optimize_hyperparameters=False``, fixed) ``σ_w², σ_b²``.
    noise : float, default 0.1
        Starting (or fixed) noise variance, in units of the standardised target.
    scale_prior : tuple (a, b) or None, default None
        ``InvGamma(a, b)`` prior on the output variance: a Student-t process output with
        ``2a + n`` predictive degrees of freedom. ``None``: Gaussian.
    optimize_hyperparameters : bool or {"joint", "nngp", "fixed"}, default True
        How ``σ_w², σ_b²`` and the noise are chosen. Every mode but ``"fixed"`` first fits
        them by the NNGP-GP's (``ν = ∞``) marginal likelihood bound on the same inducing
        points; the Gram matrices then start at that NNGP-GP's prior (every KL 0).
        ``"joint"`` (``True``) goes on learning them with the Gram matrices; ``"nngp"`` keeps
        the NNGP-GP's values; ``"fixed"`` (``False``) keeps the constructor's values
        throughout.
    max_iter : int, default 100
        L-BFGS iterations of each stage (the NNGP-GP fit, then the DKM).
    random_state : int or None
        Seeds the choice of the inducing points.
    verbose : bool, default False
        Progress bar over the optimisation.
    device : str, torch.device or None, default "cpu"
        Where the fit computes (``"cuda"`` for a GPU; ``None`` is the CPU); prediction
        computes on the fit device (a loaded model: the CPU). NumPy in gives NumPy out, a
        tensor in gives a tensor out on the input's device.

    Attributes
    ----------
    inducing_points_ : ndarray (m, d)
        In standardised input units.
    grams_ : torch.Tensor (L, m, m)
        Learned ``G_ii`` of every layer (the priors when ``nu = inf``).
    weight_variance_, bias_variance_, noise_ : float
    objective_ : float
        The final objective per training row (bound − Σ ν KL)/n.
    kl_ : list of float
        ``KL_ℓ`` of every layer at the optimum.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "depth": [Interval(Integral, 0, None, closed="left")],
        "activation": [StrOptions(_ACTIVATIONS)],
        "nu": [Interval(Real, 0, math.inf, closed="right")],
        "num_inducing": [POSITIVE_INT],
        "inducing": [StrOptions({"kmeans", "uniform"})],
        "weight_variance": [POSITIVE],
        "bias_variance": [Interval(Real, 0, None, closed="left")],
        "noise": [POSITIVE],
        "scale_prior": [tuple, list, None],
        "optimize_hyperparameters": ["boolean", StrOptions({"joint", "nngp", "fixed"})],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "device": [str, torch.device, None],
    }

    def __init__(
        self,
        depth: int = 2,
        activation: str = "relu",
        nu: float = 1.0,
        num_inducing: int = 256,
        inducing: str = "kmeans",
        weight_variance: float = 2.0,
        bias_variance: float = 0.1,
        noise: float = 0.1,
        scale_prior: tuple[float, float] | None = None,
        optimize_hyperparameters: bool | str = True,
        max_iter: int = 100,
        random_state: int | None = None,
        verbose: bool = False,
        device: str | torch.device | None = "cpu",
    ):
        self.depth = depth
        self.activation = activation
        self.nu = nu
        self.num_inducing = num_inducing
        self.inducing = inducing
        self.weight_variance = weight_variance
        self.bias_variance = bias_variance
        self.noise = noise
        self.scale_prior = scale_prior
        self.optimize_hyperparameters = optimize_hyperparameters
        self.max_iter = max_iter
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    # -- checks ---------------------------------------------------------------------------------
    def _prior(self) -> tuple[float, float] | None:
        if self.scale_prior is None:
            return None
        p = tuple(self.scale_prior)
        if len(p) != 2 or not all(
            isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in p
        ):
            raise ValueError(
                f"scale_prior must be None or a pair (a, b) of positive numbers (the "
                f"inverse-gamma shape and rate, e.g. (2.0, 2.0)), got {self.scale_prior!r}"
            )
        return float(p[0]), float(p[1])

    _numeric_targets: ClassVar[bool] = True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = self._numeric_targets
        return tags

    def _targets(self, y: np.ndarray) -> np.ndarray:
        return y.astype(np.float64)

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, X, y):
        """Learn the Gram matrices and hyper-parameters on ``X`` (``(n, d)``) and ``y``
        (``(n,)`` or ``(n, k)``); returns ``self``."""
        self._validate_params()
        prior = self._prior()
        dev = fit_device(self)  # a device that cannot fit fails before any work
        refuse_path(X, type(self).__name__)
        X, y = validate_data(
            self,
            as_numpy(X),
            as_numpy(y),
            dtype=[np.float64, np.float32],
            y_numeric=self._numeric_targets,
            multi_output=self._numeric_targets,
        )
        Y = self._targets(np.asarray(y))
        self._single = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        self.X_mean_ = X.mean(0).astype(np.float64)
        sd = X.std(0).astype(np.float64)
        self.X_scale_ = np.where(sd > 0, sd, 1.0)
        self.y_mean_ = Y.mean(0)
        ysd = Y.std(0)
        self.y_scale_ = np.where(ysd > 0, ysd, 1.0)
        Xn = (X - self.X_mean_) / self.X_scale_
        n = Xn.shape[0]
        if self.num_inducing >= n:
            Zn = Xn.astype(np.float64)
        else:
            seed = int(np.random.RandomState(self.random_state).randint(2**31 - 1))
            with on_cpu():  # the centre selection draws on the CPU whatever the default device
                Zn = select_centers(
                    torch.from_numpy(Xn), self.num_inducing, method=self.inducing, random_state=seed
                ).double()
            Zn = Zn.numpy()
        self.inducing_points_ = np.array(Zn, dtype=np.float64)
        self._fit_dev = dev
        Xs, Z = to_device(Xn, dev, torch.float64), to_device(self.inducing_points_, dev)
        Ys = to_device((Y - self.y_mean_) / self.y_scale_, dev, torch.float64)
        with core.small_matrix_threads(Z.shape[0]):
            self._optimize(Xs, Ys, Z, prior)
        return self

    @property
    def _device(self) -> torch.device:
        """Where prediction computes: the fit device (a loaded model: the CPU)."""
        return self.__dict__.get("_fit_dev") or state_device(getattr(self, "grams_", None))

    def _hyper_mode(self) -> str:
        """``"joint"``, ``"nngp"`` or ``"fixed"`` (from ``optimize_hyperparameters``)."""
        opt = self.optimize_hyperparameters
        if isinstance(opt, str):
            return opt
        return "joint" if opt else "fixed"

    def _optimize(self, Xs, Ys, Z, prior) -> None:
        mode = self._hyper_mode()
        dev = Xs.device
        logs = torch.tensor(
            [
                math.log(self.weight_variance),
                math.log(max(self.bias_variance, 1e-8)),
                math.log(self.noise),
            ],
            dtype=torch.float64,
            device=dev,
        )
        finite = math.isfinite(self.nu)
        n = Xs.shape[0]
        stages = (["nngp"] if mode != "fixed" else []) + (["dkm"] if finite else [])
        self.n_iter_ = 0
        Vs: list[torch.Tensor] = []
        for stage in progress(stages, self.verbose, desc="DKM (L-BFGS)"):
            if stage == "dkm":
                # the Gram matrices start at the NNGP prior of the current hyper-parameters
                # (every KL 0): the DKM is initialised at the NNGP-GP
                with torch.no_grad():
                    sw, sb, _ = self._unpack(logs)
                    _, priors, _ = core.propagate(_kernel(self, sw, sb), Z, Xs[:1], None)
                Vs = [core.param_from_gram(core._jittered(P)).requires_grad_(True) for P in priors]
            learn = mode == "joint" or (mode == "nngp" and stage == "nngp")
            logs = logs.detach().requires_grad_(learn)
            params = ([logs] if learn else []) + Vs
            if params and self.max_iter > 0:
                loss = self._loss(logs, Vs if stage == "dkm" else None, Z, Xs, Ys, prior)
                self.n_iter_ += _lbfgs(params, loss, -1.0 / n, self.max_iter)
        with torch.no_grad():
            total, terms, kls, used, noise = self._loss(logs, Vs or None, Z, Xs, Ys, prior)()
            W, M = core.posterior(terms, noise)
            sw, sb, noise = self._unpack(logs)
        self.weight_variance_, self.bias_variance_ = float(sw), float(sb)
        self.noise_ = float(noise)
        self.objective_ = float(total) / n
        self.kl_ = [float(k) for k in kls]
        m = Z.shape[0]
        self.grams_ = (
            torch.stack([G.detach() for G in used]).cpu()
            if used
            else torch.zeros(0, m, m, dtype=torch.float64, device="cpu")
        )
        self.posterior_weights_ = W.cpu()
        self.posterior_correction_ = M.cpu()
        if prior is not None:
            factor, df = student_t_posterior_scale(terms.quad, n, *prior)
            self.variance_factor_ = factor.cpu().numpy().copy()
            self.df_ = float(df)
        else:
            self.variance_factor_ = np.ones(Ys.shape[1])
            self.df_ = None

    def _loss(self, logs, Vs, Z, Xs, Ys, prior):
        """The objective as a closure: ``(L, terms, kls, grams used, noise)``."""

        def run():
            sw, sb, noise = self._unpack(logs)
            grams = [core.gram_from_param(V) for V in Vs] if Vs is not None else None
            out = core.objective(_kernel(self, sw, sb), Z, Xs, Ys, grams, noise, self.nu, prior)
            return (*out, noise)

        return run

    def _unpack(self, logs):
        # the noise is floored at 1e-8 of the (standardised) target variance: with constant
        # targets the likelihood would drive it to 0
        sw, sb = torch.exp(logs[0]), torch.exp(logs[1])
        noise = torch.exp(logs[2]) + 1e-8
        if self.bias_variance == 0:
            sb = sb * 0.0
        return sw, sb, noise

    # -- predict --------------------------------------------------------------------------------
    def _latent(self, X):
        check_is_fitted(self)
        refuse_path(X, type(self).__name__)
        X = validate_data(self, as_numpy(X), reset=False, dtype=[np.float64, np.float32])
        dev = self._device
        Xs = to_device((X - self.X_mean_) / self.X_scale_, dev, torch.float64)
        Z = to_device(np.asarray(self.inducing_points_, dtype=np.float64), dev)
        kernel = _kernel(self, self.weight_variance_, self.bias_variance_)
        grams = None if not math.isfinite(self.nu) else list(to_device(self.grams_, dev).double())
        W = to_device(self.posterior_weights_, dev, torch.float64)
        M = to_device(self.posterior_correction_, dev, torch.float64)
        with torch.no_grad():
            K, _, _ = core.propagate(kernel, Z, Xs, grams)
            mean = K.ti @ W
            var = K.t - ((K.ti @ M) * K.ti).sum(-1)
        return mean.cpu().numpy(), var.clamp_min(0.0).cpu().numpy()

    def predict(self, X, return_std: bool = False, *, include_noise: bool = False):
        """Posterior mean at ``X``; with ``return_std`` also the predictive standard deviation
        (Student-t scale with ``scale_prior``).

        The convention is :class:`RandomFeatureGP`'s (and scikit-learn's): by default the
        standard deviation of the latent function ``f``; ``include_noise=True`` adds the
        fitted noise variance ``noise_``, giving that of a new observation ``y``.
        """
        include_noise = check_bool(
            include_noise, "include_noise", "True adds the observation noise to the std"
        )
        mean, var = self._latent(X)
        out = mean * self.y_scale_ + self.y_mean_
        noise = self.noise_ if include_noise else 0.0
        std = np.sqrt(np.outer(var + noise, self.variance_factor_)) * self.y_scale_
        if self._single_output():
            out, std = out[:, 0], std[:, 0]
        if return_std:
            return as_output(out, X), as_output(std, X)
        return as_output(out, X)

    def _single_output(self) -> bool:
        return bool(getattr(self, "_single", np.size(self.y_mean_) == 1))

    def log_predictive_density(self, X, y) -> np.ndarray:
        """``log p(y_i | x_i, data)`` per row (Gaussian, or Student-t with ``scale_prior``),
        in the units of ``y``; the NLPD is minus its mean."""
        like = X
        mean, std = self.predict(as_numpy(X), return_std=True, include_noise=True)
        y = np.asarray(as_numpy(y), dtype=np.float64).reshape(mean.shape)
        yt, mt, vt = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (y, mean, std**2))
        if self.df_ is None:
            lp = -0.5 * (torch.log(2 * math.pi * vt) + (yt - mt).square() / vt)
        else:
            lp = student_t_log_pdf(yt, mt, vt, self.df_)
        lp = lp.numpy()
        return as_output(lp if lp.ndim == 1 else lp.sum(-1), like)

    _persist_private: ClassVar[tuple[str, ...]] = ("_single",)
    #: the fitted state a model file must hold, checked before anything is built
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {
        "attr.X_mean_": ArraySpec(ndim=1, dims=("n_features_in_",), required=True),
        "attr.X_scale_": ArraySpec(
            ndim=1, dims=("n_features_in_",), required=True, low=0.0, low_open=True
        ),
        "attr.y_mean_": ArraySpec(ndim=1, dims=("n_outputs",), required=True),
        "attr.y_scale_": ArraySpec(
            ndim=1, dims=("n_outputs",), required=True, low=0.0, low_open=True
        ),
        "attr.inducing_points_": ArraySpec(
            ndim=2, dims=("n_inducing", "n_features_in_"), required=True
        ),
        "attr.grams_": ArraySpec(ndim=3, dims=("depth", "n_inducing", "n_inducing"), required=True),
        "attr.posterior_weights_": ArraySpec(
            ndim=2, dims=("n_inducing", "n_outputs"), required=True
        ),
        "attr.posterior_correction_": ArraySpec(
            ndim=2, dims=("n_inducing", "n_inducing"), required=True
        ),
        "attr.variance_factor_": ArraySpec(
            ndim=1, dims=("n_outputs",), required=True, low=0.0, low_open=True
        ),
        # a regressor holds no class labels (a classifier's file relabelled is refused here)
        "attr.classes_": ArraySpec(kinds="iufbUSO", ndim=1, dims=(0,)),
    }
    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "n_features_in_": ValueSpec(("int",), required=True, low=1),
        "n_iter_": ValueSpec(("int",), low=0),
        "weight_variance_": ValueSpec(("real",), required=True, low=0.0, low_open=True),
        "bias_variance_": ValueSpec(("real",), required=True, low=0.0),
        "noise_": ValueSpec(("real",), required=True, low=0.0, low_open=True),
        "df_": ValueSpec(("real", "none"), low=0.0, low_open=True),
        "_single": ValueSpec(("bool",), required=True, when_true=(("n_outputs", 1),)),
    }


class DeepKernelMachineClassifier(ClassifierMixin, DeepKernelMachineRegressor):
    """Deep kernel machine classification by least-squares regression on one-hot labels
    (centred ``±`` codes per class; predicted class = largest posterior mean).

    Same parameters as :class:`DeepKernelMachineRegressor`; ``predict_proba`` is the
    softmax of the posterior means divided by their predictive standard deviations (a
    ranking score, not a calibrated probability).
    """

    _numeric_targets: ClassVar[bool] = False
    #: one output (one-hot column) per class; labels as ``np.unique`` returns them
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {
        "attr.classes_": ArraySpec(
            kinds="iufbUSO", ndim=1, dims=("n_outputs",), required=True, labels=True
        ),
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = False
        return tags

    def _targets(self, y: np.ndarray) -> np.ndarray:
        from sklearn.utils.multiclass import check_classification_targets
        from sklearn.utils.validation import column_or_1d

        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.classes_, idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y needs at least two classes, got 1 class ({self.classes_.tolist()})"
            )
        Y = -np.ones((len(y), len(self.classes_)))
        Y[np.arange(len(y)), idx] = 1.0
        return Y

    def _scores(self, X) -> np.ndarray:
        mean, _ = self._latent(X)
        return mean * self.y_scale_ + self.y_mean_

    def decision_function(self, X) -> np.ndarray:
        """Posterior mean of each class code, ``(n, k)``; ``(n,)`` (class 1 minus class 0)
        for two classes (scikit-learn's convention)."""
        scores = self._scores(X)
        return as_output(scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores, X)

    def predict(self, X):
        scores = self._scores(X)
        return as_output(self.classes_[np.argmax(scores, axis=1)], X)

    def predict_proba(self, X) -> np.ndarray:
        scores = self._scores(X)
        e = np.exp(scores - scores.max(1, keepdims=True))
        return as_output(e / e.sum(1, keepdims=True), X)
