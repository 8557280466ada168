"""Fully bundled networks fitted in closed form (no backpropagation)."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import (
        _check_sample_weight,
        check_is_fitted,
        column_or_1d,
        validate_data,
    )
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._utils import default_block_rows, iter_blocks
from snnk.io import PersistMixin
from snnk.nn import BundledNetwork
from snnk.solvers import NormalEquations, multinomial_logistic

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: cache the design matrix in memory for iterative losses up to this many elements
_CACHE_ELEMENTS = 1 << 28


class _Bundled(PersistMixin, BaseEstimator):
    """Shared machinery: standardise, random input tower, streaming normal equations."""

    def __init__(
        self,
        num_features: int = 1024,
        depth: int = 1,
        activation: str = "relu",
        alpha: float | str = "gcv",
        fit_intercept: bool = True,
        standardize: bool = True,
        orthogonal: bool = True,
        dtype: str = "float64",
        batch_size: int = 4096,
        random_state=None,
        verbose: bool = False,
    ):
        self.standardize = standardize
        self.num_features = num_features
        self.depth = depth
        self.activation = activation
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.orthogonal = orthogonal
        self.dtype = dtype
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # -- validation ----------------------------------------------------------------------------
    def _check_params(self) -> None:
        for name in ("num_features", "depth", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        if isinstance(self.alpha, str):
            if self.alpha != "gcv":
                raise ValueError(f"alpha must be a non-negative float or 'gcv', got {self.alpha!r}")
        elif (
            not isinstance(self.alpha, numbers.Real)
            or not math.isfinite(self.alpha)
            or self.alpha < 0
        ):
            raise ValueError(f"alpha must be a non-negative float or 'gcv', got {self.alpha!r}")
        if self.activation not in ("relu", "exp", "cos", "sin", "gaussian"):
            raise ValueError(
                f"activation must be one of ['relu', 'exp', 'cos', 'sin', 'gaussian'], "
                f"got {self.activation!r}"
            )

    # -- the fixed random tower ----------------------------------------------------------------
    def _init_tower(self, X: np.ndarray, n_outputs: int, sw: np.ndarray) -> None:
        self._check_params()
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        d = X.shape[1]
        # Weighted moments: a weight acts exactly like repeating the row.
        wn = sw / sw.sum()
        self.mean_ = wn @ X
        var = np.maximum(wn @ np.square(X - self.mean_), 0.0)
        if self.standardize:  # every feature to unit variance, rows to norm ≈ 1
            self.scale_ = np.where(var > 0, np.sqrt(var), 1.0) * math.sqrt(d)
        else:  # one global scale: keeps the features' relative scales (e.g. pixels)
            total = math.sqrt(float(var.sum()))
            self.scale_ = np.full(d, total if total > 0 else 1.0)
        self.network_ = BundledNetwork(
            d,
            [self.num_features] * self.depth,
            self.activation,
            n_outputs,
            orthogonal=self.orthogonal,
            seed=seed,
            dtype=_DTYPES[self.dtype],
        )
        self.network_.requires_grad_(False)

    def _build_modules(self) -> None:
        """Recreate the tower skeleton for :func:`snnk.io.load_model` (buffers follow)."""
        self.network_ = BundledNetwork(
            self.n_features_in_,
            [self.num_features] * self.depth,
            self.activation,
            self.coef_.shape[0],
            orthogonal=self.orthogonal,
            seed=0,
            dtype=_DTYPES[self.dtype],
        )
        self.network_.requires_grad_(False)

    def _blocks(self, X: np.ndarray):
        """Yield ``(F_block, rows)``: tower features of standardised row blocks."""
        dt = _DTYPES[self.dtype]
        step = min(self.batch_size, default_block_rows(self.num_features))
        with torch.no_grad():
            for rows in iter_blocks(X.shape[0], step):
                xb = torch.from_numpy(((X[rows] - self.mean_) / self.scale_).astype(np.float64))
                yield self.network_.input_features(xb.to(dt)), rows

    def random_features(self, X) -> np.ndarray:
        """The fixed random features ``Φ̃(x)``, shape ``(n, num_features)``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.concatenate([F.double().numpy() for F, _ in self._blocks(X)], 0)

    def _normal_equations(self, X, Y, sw) -> NormalEquations:
        ne = NormalEquations(self.num_features, Y.shape[1])
        Yt, swt = torch.tensor(Y), torch.tensor(sw)
        for F, rows in self._progress(self._blocks(X), X.shape[0], "accumulating FᵀF"):
            ne.update(F, Yt[rows], swt[rows])
        return ne

    def _progress(self, it, n, desc):
        if not self.verbose:
            return it
        from tqdm.auto import tqdm

        return tqdm(
            it,
            total=math.ceil(n / min(self.batch_size, default_block_rows(self.num_features))),
            desc=desc,
        )

    def _solve(self, ne: NormalEquations):
        if self.alpha == "gcv":
            U, c, alpha, _ = ne.solve_gcv(fit_intercept=self.fit_intercept)
        else:
            U, c = ne.solve(float(self.alpha), fit_intercept=self.fit_intercept)
            alpha = float(self.alpha)
        return U, c, alpha

    def _set_solution(self, U: torch.Tensor, c: torch.Tensor, alpha: float) -> None:
        self.coef_ = U.T.numpy().copy()  # (n_outputs, num_features)
        self.intercept_ = c.numpy().copy()
        self.alpha_ = alpha
        with torch.no_grad():
            self.network_.weight.copy_(U.T)
            self.network_.bias.copy_(c)

    def _decision(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        out = [F.double().numpy() @ self.coef_.T + self.intercept_ for F, _ in self._blocks(X)]
        return np.concatenate(out, 0)

    @property
    def num_parameters_(self) -> int:
        """Trained numbers: ``coef_`` and ``intercept_``."""
        check_is_fitted(self)
        return int(self.coef_.size + self.intercept_.size)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class BundledRegressor(RegressorMixin, _Bundled):
    r"""Fully bundled network ``y = U Φ̃(x) + c`` fitted in closed form (no backprop).

    ``Φ̃ = Φ_L ∘ … ∘ Φ_1`` is a fixed random SNNK input tower (``depth`` stages of
    ``num_features`` features, ``activation`` relu/exp/cos/sin/gaussian) applied to
    standardised inputs scaled to unit norm; ``U`` minimises the (sample-weighted) ridge loss
    ``Σ_i w_i ‖y_i − U Φ̃(x_i) − c‖² + α‖U‖²`` exactly, from normal equations accumulated over
    row blocks (``FᵀWF``, ``FᵀWY``; Cholesky with jitter, pseudo-inverse when rank
    deficient). ``alpha="gcv"`` picks ``α`` by generalised cross-validation from one
    eigendecomposition; ``alpha=0`` is least squares.

    Parameters
    ----------
    num_features : int, default 1024
        Width ``D`` of every tower stage (the model has ``D·o + o`` trained numbers).
    depth : int, default 1
        Number of tower stages.
    activation : str, default "relu"
    alpha : float or "gcv", default "gcv"
    fit_intercept : bool, default True
    standardize : bool, default True
        Scale every input feature to unit variance (then rows to norm ≈ 1). With False, the
        centred inputs are divided by one global scale, which keeps the features' relative
        sizes (better for pixels).
    orthogonal : bool, default True
        Orthogonal random projections in the tower.
    dtype : {"float32", "float64"}, default "float64"
        Precision of the tower; the normal equations are always accumulated in float64.
    batch_size : int, default 4096
        Rows per block.
    random_state : int, RandomState or None
    verbose : bool, default False
        Progress bar.

    Attributes
    ----------
    coef_ : ndarray of shape (n_outputs, num_features)
    intercept_ : ndarray of shape (n_outputs,)
    alpha_ : float
        The ridge strength used.
    network_ : snnk.nn.BundledNetwork
        The fitted model as a torch module (expects standardised inputs).
    n_features_in_ : int
    """

    _persist_private = ("_y_1d",)

    def fit(self, X, y, sample_weight=None):
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], y_numeric=True, multi_output=True
        )
        y = np.asarray(y, dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values; remove those rows first")
        self._y_1d = y.ndim == 1
        Y = y.reshape(-1, 1) if self._y_1d else y
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        self._init_tower(X, Y.shape[1], sw)
        ne = self._normal_equations(X, Y, sw)
        self._set_solution(*self._solve(ne))
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X) -> np.ndarray:
        out = self._decision(X)
        return out[:, 0] if self._y_1d else out


class BundledClassifier(ClassifierMixin, _Bundled):
    r"""Fully bundled network classifier: ``softmax(U Φ̃(x) + c)`` without backpropagation.

    Same fixed random tower as :class:`BundledRegressor`. ``loss="squared"`` fits one-hot
    targets by ridge in closed form (GCV for ``alpha="gcv"``); ``loss="log"`` minimises the
    L2-penalised multinomial logistic loss by truncated Newton (conjugate gradients with exact
    Hessian-vector products, preconditioned by Böhning's Hessian bound), with
    ``alpha="gcv"`` taking the ridge strength that GCV picks for the squared loss.

    ``predict_proba`` is the softmax for ``loss="log"``; for ``loss="squared"`` it is the
    one-hot regression clipped at 0 and renormalised (uniform where all scores are <= 0).

    Parameters
    ----------
    loss : {"log", "squared"}, default "log"
    max_iter : int, default 100
        Newton iterations for ``loss="log"``.
    tol : float, default 1e-10
        Stop when the largest gradient entry falls below ``tol`` times its initial value.
    (others as :class:`BundledRegressor`)

    Attributes
    ----------
    classes_ : ndarray
    coef_, intercept_, alpha_, network_, n_features_in_
    n_iter_ : int
        Newton iterations used (``loss="log"``); 1 for the one closed-form solve of
        ``loss="squared"``.
    """

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
        orthogonal: bool = True,
        dtype: str = "float64",
        batch_size: int = 4096,
        random_state=None,
        verbose: bool = False,
    ):
        super().__init__(
            num_features=num_features,
            depth=depth,
            activation=activation,
            alpha=alpha,
            fit_intercept=fit_intercept,
            standardize=standardize,
            orthogonal=orthogonal,
            dtype=dtype,
            batch_size=batch_size,
            random_state=random_state,
            verbose=verbose,
        )
        self.loss = loss
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y, sample_weight=None):
        if self.loss not in ("log", "squared"):
            raise ValueError(f"loss must be 'log' or 'squared', got {self.loss!r}")
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.classes_, idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"BundledClassifier needs samples of at least 2 classes in the data, but the "
                f"data contains only one class: {self.classes_[0]!r}"
            )
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        Y = np.zeros((X.shape[0], len(self.classes_)))
        Y[np.arange(X.shape[0]), idx] = 1.0
        self._init_tower(X, Y.shape[1], sw)
        ne = self._normal_equations(X, Y, sw)
        U, c, alpha = self._solve(ne)
        self.n_iter_ = 1
        if self.loss == "log":
            U, c = self._fit_logistic(X, Y, sw, ne, alpha)
        self._set_solution(U, c, alpha)
        return self

    def _fit_logistic(self, X, Y, sw, ne, alpha):
        cache = None
        if X.shape[0] * self.num_features <= _CACHE_ELEMENTS:
            cache = [(F.double(), rows) for F, rows in self._blocks(X)]

        def features():
            return iter(cache) if cache is not None else self._blocks(X)

        res = multinomial_logistic(
            features,
            torch.tensor(Y),
            ne.FtF,
            ne.Fsum,
            alpha,
            sample_weight=torch.tensor(sw),
            max_iter=self.max_iter,
            tol=self.tol,
            fit_intercept=self.fit_intercept,
        )
        self.n_iter_ = res.n_iter
        if not res.converged:
            import warnings

            from sklearn.exceptions import ConvergenceWarning

            warnings.warn(
                f"BundledClassifier did not converge in {self.max_iter} iterations; raise "
                f"max_iter or alpha",
                ConvergenceWarning,
                stacklevel=3,
            )
        return res.coef, res.intercept

    def decision_function(self, X) -> np.ndarray:
        scores = self._decision(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        s = self._decision(X)
        if self.loss == "log":
            s = s - s.max(1, keepdims=True)
            p = np.exp(s)
        else:
            p = np.clip(s, 0.0, None)
            p[p.sum(1) <= 0] = 1.0
        return p / p.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        scores = self._decision(X)
        return self.classes_[np.argmax(scores, axis=1)]
