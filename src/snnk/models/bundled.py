"""Fully bundled networks fitted in closed form (no backpropagation).

Members of the feature-model family (:mod:`snnk.models._feature_model`): the fixed feature
map is a random SNNK input tower on standardised inputs, so the bundled models fit from
arrays, chunks, files, ``partial_fit`` and Dask, choose ``alpha`` by GCV or leave-one-out,
and keep float32 in float32, like the random-feature models.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from snnk._persist import ArraySpec
from snnk.features import SAMPLERS
from snnk.models._base import (
    DEPRECATED,
    DEPRECATED_OPTION,
    POSITIVE_INT,
    Moments,
    StrOptions,
    seed_from_random_state,
)
from snnk.models._classifier import FeatureClassifierMixin
from snnk.models._device import on_cpu, to_device
from snnk.models._feature_model import FeatureModel, FeatureRegressorMixin
from snnk.nn import BundledNetwork

try:
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

#: activations of the tower
ACTIVATIONS = ("relu", "exp", "cos", "sin", "gaussian")


class BundledModel(FeatureModel):
    """Shared machinery: standardise, random input tower ``network_``, ridge on top."""

    _parameter_constraints: ClassVar[dict[str, list]] = {
        **FeatureModel._parameter_constraints,
        "depth": [POSITIVE_INT],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "standardize": ["boolean"],
        "sampler": [StrOptions(set(SAMPLERS))],
        "orthogonal": ["boolean", DEPRECATED_OPTION],
    }
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {
        **FeatureModel._persist_arrays,
        "attr.mean_": ArraySpec(ndim=1, dims=("n_features_in_",), required=True),
        "attr.scale_": ArraySpec(
            ndim=1, dims=("n_features_in_",), required=True, low=0.0, low_open=True
        ),
    }

    def __init__(
        self,
        num_features: int = 1024,
        depth: int = 1,
        activation: str = "relu",
        alpha: float | str = "gcv",
        fit_intercept: bool = True,
        standardize: bool = True,
        sampler: str = "orthogonal",
        dtype: str | None = "float64",
        block_rows: int = 4096,
        random_state=None,
        verbose: bool = False,
        orthogonal: bool | str = DEPRECATED,
        batch_size: int | str = DEPRECATED,
        device: str | torch.device | None = "cpu",
    ):
        self.standardize = standardize
        self.num_features = num_features
        self.depth = depth
        self.activation = activation
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.sampler = sampler
        self.dtype = dtype
        self.block_rows = block_rows
        self.random_state = random_state
        self.verbose = verbose
        self.orthogonal = orthogonal
        self.batch_size = batch_size
        self.device = device

    # -- parameters ------------------------------------------------------------------------------
    def _check_params(self) -> None:
        super()._check_params()
        if self.orthogonal != DEPRECATED:
            warnings.warn(
                f"{type(self).__name__}(orthogonal=...) is deprecated: use "
                f"sampler='orthogonal' or sampler='iid'",
                FutureWarning,
                stacklevel=3,
            )

    @classmethod
    def _upgrade_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Files written before ``sampler`` hold ``orthogonal`` (a bool)."""
        params = super()._upgrade_params(params)
        if isinstance(params.get("orthogonal"), bool):
            params["sampler"] = "orthogonal" if params.pop("orthogonal") else "iid"
        return params

    def _sampler(self) -> str:
        if self.orthogonal != DEPRECATED:
            return "orthogonal" if self.orthogonal else "iid"
        return self.sampler

    # -- the fixed random tower ------------------------------------------------------------------
    def _needs_moments(self) -> bool:
        return True

    def _network(self, in_features: int, out_features: int, seed: int) -> BundledNetwork:
        net = BundledNetwork(
            in_features,
            [self.num_features] * self.depth,
            self.activation,
            out_features,
            sampler=self._sampler(),
            seed=seed,
            dtype=self._torch_dtype(),
        )
        return net.requires_grad_(False)

    def _init_features(self, X: np.ndarray, sw, moments: Moments | None) -> None:
        """Weighted moments (a weight acts exactly like repeating the row), the scale, and
        the tower (its output layer is sized when the solution is set)."""
        d = X.shape[1]
        if moments is None:
            w = np.ones(X.shape[0]) if sw is None else sw
            wn = w / w.sum()
            self.mean_ = wn @ X
            var = np.maximum(wn @ np.square(X - self.mean_), 0.0)
        else:
            self.mean_, var = moments.mean, np.maximum(moments.var, 0.0)
        if self.standardize:  # every feature to unit variance, rows to norm ≈ 1
            self.scale_ = np.where(var > 0, np.sqrt(var), 1.0) * math.sqrt(d)
        else:  # one global scale: keeps the features' relative scales (e.g. pixels)
            total = math.sqrt(float(var.sum()))
            self.scale_ = np.full(d, total if total > 0 else 1.0)
        self.network_ = self._network(d, 1, seed_from_random_state(self.random_state))

    def _build_modules(self) -> None:
        """Recreate the tower skeleton for :func:`snnk.io.load_model` (buffers follow), on
        the CPU whatever the fit device."""
        with on_cpu():
            self.network_ = self._network(self.n_features_in_, self.coef_.shape[0], 0)

    def _feature_module(self) -> torch.nn.Module | None:
        return getattr(self, "network_", None)

    def _features_block(self, X: np.ndarray) -> torch.Tensor:
        xb = ((X - self.mean_) / self.scale_).astype(np.float64)
        return self.network_.input_features(
            to_device(xb, self._compute_device, self._torch_dtype())
        )

    def _after_solution(self) -> None:
        """Copy ``coef_`` / ``intercept_`` into ``network_`` (sizing its output layer)."""
        net, dt = self.network_, self._torch_dtype()
        dd = {"dtype": dt, "device": self._compute_device}
        o, D = self.coef_.shape
        if net.out_features != o:
            net.weight = torch.nn.Parameter(torch.zeros(o, D, **dd), requires_grad=False)
            net.bias = torch.nn.Parameter(torch.zeros(o, **dd), requires_grad=False)
            net.out_features = o
        with torch.no_grad():
            net.weight.copy_(torch.from_numpy(self.coef_))
            net.bias.copy_(torch.from_numpy(self.intercept_))

    @property
    def num_parameters_(self) -> int:
        """Trained numbers: ``coef_`` and ``intercept_``."""
        check_is_fitted(self)
        return int(self.coef_.size + self.intercept_.size)


class BundledRegressor(FeatureRegressorMixin, BundledModel):
    r"""Fully bundled network ``y = U Φ̃(x) + c`` fitted in closed form (no backprop).

    ``Φ̃ = Φ_L ∘ … ∘ Φ_1`` is a fixed random SNNK input tower (``depth`` stages of
    ``num_features`` features, ``activation`` relu/exp/cos/sin/gaussian) applied to
    standardised inputs scaled to unit norm; ``U`` minimises the (sample-weighted) ridge loss
    ``Σ_i w_i ‖y_i − U Φ̃(x_i) − c‖² + α‖U‖²`` exactly, from normal equations accumulated over
    row blocks (``FᵀWF``, ``FᵀWY``; Cholesky with jitter, pseudo-inverse when rank
    deficient). ``alpha="gcv"`` picks ``α`` by generalised cross-validation from one
    eigendecomposition, ``alpha="loo"`` by exact leave-one-out; ``alpha=0`` is least squares.

    ``fit`` takes arrays, a Dask array or data frame, an iterable of ``(X, y[, w])`` chunks or a
    CSV/Parquet file (see :class:`~snnk.models.RandomFeatureRidge`); ``partial_fit`` adds
    chunks. The standardisation uses the moments of all rows for arrays, files, lists of
    chunks and Dask, and those of the first chunk for a one-shot iterator and
    ``partial_fit``.

    Parameters
    ----------
    num_features : int, default 1024
        Width ``D`` of every tower stage (the model has ``D·o + o`` trained numbers).
    depth : int, default 1
        Number of tower stages.
    activation : str, default "relu"
    alpha : float, "gcv" or "loo", default "gcv"
    fit_intercept : bool, default True
    standardize : bool, default True
        Scale every input feature to unit variance (then rows to norm ≈ 1). With False, the
        centred inputs are divided by one global scale, which keeps the features' relative
        sizes (better for pixels).
    sampler : {"orthogonal", "iid", "structured", "qmc", "halton"}, default "orthogonal"
        How the tower's random projections are drawn (see :class:`snnk.nn.BundledNetwork`).
    dtype : {"float32", "float64", None}, default "float64"
        Precision of the tower and of the fitted arrays (None: float32 for float32 input,
        else float64); the normal equations are always accumulated in float64. Predictions
        have the input's dtype.
    block_rows : int, default 4096
        Rows per block.
    random_state : int, RandomState or None
    verbose : bool, default False
        Progress bar.
    orthogonal : bool
        Deprecated alias of ``sampler`` (True: "orthogonal", False: "iid"; FutureWarning).
    batch_size : int
        Deprecated alias of ``block_rows`` (FutureWarning).
    device : str or torch.device, default "cpu"
        Where the fit runs (``"cuda"``: tower, accumulation, solves on the GPU); ``network_``
        stays there and predictions are computed there (a saved model loads on the CPU).
        NumPy in gives NumPy out; a tensor in gives a tensor on its own device.

    Attributes
    ----------
    coef_ : ndarray of shape (n_outputs, num_features)
    intercept_ : ndarray of shape (n_outputs,)
    alpha_ : float
        The ridge strength used.
    network_ : snnk.nn.BundledNetwork
        The fitted model as a torch module (expects standardised inputs).
    mean_, scale_ : ndarray of shape (n_features_in_,)
        The standardisation ``(x − mean_) / scale_``.
    n_features_in_, n_samples_seen_, compute_dtype_
    """


class BundledClassifier(FeatureClassifierMixin, BundledModel):
    r"""Fully bundled network classifier: ``softmax(U Φ̃(x) + c)`` without backpropagation.

    Same fixed random tower as :class:`BundledRegressor`. ``loss="squared"`` fits one-hot
    targets by ridge in closed form (GCV for ``alpha="gcv"``); ``loss="log"`` minimises the
    L2-penalised multinomial logistic loss by truncated Newton (conjugate gradients with exact
    Hessian-vector products, preconditioned by Böhning's Hessian bound), with
    ``alpha="gcv"`` taking the ridge strength that GCV picks for the squared loss.

    ``predict_proba`` is the softmax for ``loss="log"``; for ``loss="squared"`` it is the
    one-hot regression clipped at 0 and renormalised (uniform where all scores are <= 0).

    Parameters not listed below are those of :class:`BundledRegressor`.

    Parameters
    ----------
    loss : {"log", "squared"}, default "log"
    max_iter : int, default 100
        Newton iterations for ``loss="log"``.
    tol : float, default 1e-10
        Stop when the largest gradient entry falls below ``tol`` times its initial value.

    Attributes
    ----------
    classes_ : ndarray
    coef_, intercept_, alpha_, network_, n_features_in_
    n_iter_ : int
        Newton iterations used (``loss="log"``); 1 for the one closed-form solve of
        ``loss="squared"``.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        **BundledModel._parameter_constraints,
        **FeatureClassifierMixin._constraints,
    }

    def __init__(
        self,
        num_features: int = 1024,
        depth: int = 1,
        activation: str = "relu",
        alpha: float | str = "gcv",
        loss: str = "log",
        max_iter: int = 100,
        tol: float = 1e-10,
        fit_intercept: bool = True,
        standardize: bool = True,
        sampler: str = "orthogonal",
        dtype: str | None = "float64",
        block_rows: int = 4096,
        random_state=None,
        verbose: bool = False,
        orthogonal: bool | str = DEPRECATED,
        batch_size: int | str = DEPRECATED,
        device: str | torch.device | None = "cpu",
    ):
        super().__init__(
            num_features=num_features,
            depth=depth,
            activation=activation,
            alpha=alpha,
            fit_intercept=fit_intercept,
            standardize=standardize,
            sampler=sampler,
            dtype=dtype,
            block_rows=block_rows,
            random_state=random_state,
            verbose=verbose,
            orthogonal=orthogonal,
            batch_size=batch_size,
            device=device,
        )
        self.loss = loss
        self.max_iter = max_iter
        self.tol = tol
