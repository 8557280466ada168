r"""The estimator base of the feature-model family: a linear model on a fixed feature map,
fitted from streaming normal equations.

A model of the family maps inputs through a fixed (random) feature map ``z: R^d -> R^D`` and
fits ``ŷ = W z(x) + c``. The fit needs only the sufficient statistics ``ZᵀWZ`` (``D x D``)
and ``ZᵀWY`` of one pass over the rows in blocks
(:class:`~snnk.solvers.NormalEquations`), so one code path serves an in-memory array, an
iterable of chunks, a CSV/Parquet file read in chunks, ``partial_fit`` calls and a Dask
array or data frame; peak memory is ``O(D² + block_rows·D)`` whatever the number of rows.
The ridge strength is a number, or chosen by GCV (one pass) or exact leave-one-out (one
more pass). The classifier mixin adds one-hot targets and the logistic loss.

A subclass supplies the feature map through three hooks: ``_needs_moments()`` (whether
its set-up uses data moments), ``_init_features(X, sw, moments)`` (draw the map for data
like ``X``) and ``_features_block(X_block) -> tensor`` (the features of a block of rows in
``compute_dtype_``), plus ``_build_modules`` for :func:`snnk.io.load_model`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils._available_if import available_if
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._persist import ArraySpec, PersistMixin, ValueSpec
from snnk._utils import default_block_rows, iter_blocks
from snnk.models._base import (
    DEPRECATED,
    DEPRECATED_OPTION,
    DTYPE_OPTIONS,
    FLOAT_DTYPES,
    NON_NEGATIVE,
    POSITIVE_INT,
    ChunkSource,
    Moments,
    StrOptions,
    as_numpy,
    check_chunk,
    compute_dtype_name,
    is_dask,
    is_stream,
    iter_source,
    pooled_moments,
    progress,
    validate_data,
)
from snnk.models._dask import (
    DaskRowSums,
    dask_inputs,
    dask_moments,
    dask_normal_equations,
    frame_values,
)
from snnk.models._device import (
    as_output,
    block_elements,
    fit_device,
    move_module,
    on_cpu,
    state_device,
    to_device,
)
from snnk.solvers import NormalEquations
from snnk.solvers.cross_validation import default_alpha_grid, gcv_ridge, loo_ridge

#: ``(F, Y, w)`` row blocks for the passes that read the data again (LOO, logistic loss)
Blocks = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]
#: points of the ridge grid that "gcv" / "loo" search (the length of ``cv_scores_``)
ALPHA_GRID_SIZE = default_alpha_grid(torch.ones(1)).numel()


class FeatureModel(PersistMixin, BaseEstimator):
    """Shared machinery of the feature-model family (see the module docstring).

    Fitted attributes common to every member: ``coef_`` ``(n_outputs, D)`` and
    ``intercept_`` ``(n_outputs,)`` in ``compute_dtype_`` (float32 for float32 input unless
    ``dtype`` says otherwise), ``alpha_``, ``cv_scores_`` (when ``alpha`` is "gcv"/"loo"),
    ``n_features_in_``, ``n_samples_seen_``. The statistics stay in float64.
    """

    _persist_private: ClassVar[tuple[str, ...]] = ("_y_1d",)
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {
        "attr.coef_": ArraySpec(ndim=2, dims=("n_outputs", "num_features"), required=True),
        "attr.intercept_": ArraySpec(ndim=1, dims=("n_outputs",), required=True),
        # a GCV score is infinite where the hat matrix's trace reaches n
        "attr.cv_scores_": ArraySpec(ndim=1, dims=(ALPHA_GRID_SIZE,), finite=False),
    }
    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "n_features_in_": ValueSpec(("int",), required=True, low=1),
        "n_samples_seen_": ValueSpec(("int",), low=0),
        "alpha_": ValueSpec(("real",), low=0.0),
        "compute_dtype_": ValueSpec(("str",), choices=tuple(FLOAT_DTYPES)),
    }
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "num_features": [POSITIVE_INT],
        "alpha": [NON_NEGATIVE, StrOptions({"gcv", "loo"})],
        "fit_intercept": ["boolean"],
        "dtype": [DTYPE_OPTIONS, None],
        "block_rows": [POSITIVE_INT],
        "batch_size": [POSITIVE_INT, DEPRECATED_OPTION],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "device": [str, torch.device, None],
    }

    # -- hooks -----------------------------------------------------------------------------------
    def _needs_moments(self) -> bool:
        """Whether ``_init_features`` uses data moments (then streams and Dask pool them)."""
        return False

    def _init_features(self, X: np.ndarray, sw: np.ndarray | None, moments: Moments | None):
        """Draw the feature map for data like ``X`` (the first chunk; ``moments`` of all rows
        when available) and set it as fitted attributes."""
        raise NotImplementedError

    def _features_block(self, X: np.ndarray) -> torch.Tensor:
        """Features of the rows ``X`` (a block), in ``compute_dtype_``, on
        :attr:`_compute_device`."""
        raise NotImplementedError

    def _feature_module(self) -> torch.nn.Module | None:
        """The fitted module that computes the features (its device is where the model
        computes: the fit device, or the CPU after :func:`snnk.io.load_model`); ``None``
        for a map without tensors (then the model computes on the CPU)."""
        return None

    @property
    def _compute_device(self) -> torch.device:
        return state_device(self._feature_module())

    def _after_solution(self) -> None:
        """Called when ``coef_`` / ``intercept_`` change (e.g. to copy them into a module)."""

    def _refine(self, ne: NormalEquations, blocks: Blocks | None, U, c, alpha: float, sums=None):
        """The final ``(U, c)`` from the ridge solution (the logistic loss refines it, reading
        the rows through ``blocks`` or, on a cluster, the :class:`~snnk.solvers.RowSums`
        ``sums``)."""
        return U, c

    # -- parameters ------------------------------------------------------------------------------
    def _check_params(self) -> None:
        """scikit-learn's ``_parameter_constraints`` check, then the deprecated aliases."""
        self._validate_params()
        if self.batch_size != DEPRECATED:
            warnings.warn(
                f"{type(self).__name__}(batch_size=...) is deprecated: use block_rows=",
                FutureWarning,
                stacklevel=3,
            )

    @classmethod
    def _upgrade_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Files written before ``block_rows`` hold ``batch_size``: the same number."""
        params = dict(params)
        if "batch_size" in params and params["batch_size"] != DEPRECATED:
            params["block_rows"] = params.pop("batch_size")
        return params

    @property
    def _step(self) -> int:
        rows = self.block_rows if self.batch_size == DEPRECATED else self.batch_size
        budget = block_elements(self._compute_device, itemsize=8)
        return min(rows, default_block_rows(self.num_features, budget))

    def _torch_dtype(self) -> torch.dtype:
        return FLOAT_DTYPES[getattr(self, "compute_dtype_", None) or self.dtype or "float64"]

    def _import_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super()._import_state(meta, tensors)
        if not hasattr(self, "compute_dtype_"):  # files written before it was saved
            self.compute_dtype_ = self.dtype or "float64"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    # -- blocks and statistics -------------------------------------------------------------------
    def _feature_blocks(self, X: np.ndarray) -> Iterator[tuple[torch.Tensor, slice]]:
        """``(z(X[rows]), rows)`` over row blocks."""
        with torch.no_grad():
            for rows in iter_blocks(X.shape[0], self._step):
                yield self._features_block(X[rows]), rows

    def _stats(self, X, Y, sw, show: bool = False) -> NormalEquations:
        """Normal equations of validated rows ``X``, float64 targets ``Y`` ``(n, o)`` and
        weights ``sw`` (``None``: ones), accumulated over row blocks."""
        dev = self._compute_device
        ne = NormalEquations(self.num_features, Y.shape[1], device=dev)
        Yt = to_device(Y, dev, torch.float64)
        swt = None if sw is None else to_device(sw, dev, torch.float64)
        blocks = self._feature_blocks(X)
        if show:
            blocks = progress(blocks, self.verbose, -(-X.shape[0] // self._step), "blocks")
        for F, rows in blocks:
            ne.update(F, Yt[rows], None if swt is None else swt[rows])
        return ne

    def _array_blocks(self, X, Y, sw) -> Iterator:
        dev = self._compute_device
        Yt = to_device(Y, dev, torch.float64)
        w = None if sw is None else to_device(sw, dev, torch.float64)
        for F, rows in self._feature_blocks(X):
            yield F, Yt[rows], None if w is None else w[rows]

    # -- solving ---------------------------------------------------------------------------------
    def _solve(self, ne: NormalEquations, blocks: Blocks | None):
        """``(U, c, alpha)`` for the ridge loss with the configured ``alpha``."""
        if self.alpha == "gcv":
            U, c, alpha, scores = gcv_ridge(ne, self.fit_intercept)
            self.cv_scores_ = scores.cpu().numpy()
            return U, c, alpha
        if self.alpha == "loo":
            if blocks is None:
                raise ValueError(
                    "alpha='loo' reads the data a second time: fit an array or a file path, "
                    "or use alpha='gcv' (one pass) for streams, partial_fit and Dask"
                )
            U, c, alpha, scores = loo_ridge(ne, blocks, self.fit_intercept)
            self.cv_scores_ = scores.cpu().numpy()
            return U, c, alpha
        U, c = ne.solve(float(self.alpha), fit_intercept=self.fit_intercept)
        return U, c, float(self.alpha)

    def _set_solution(self, U: torch.Tensor, c: torch.Tensor, alpha: float) -> None:
        dt = self._torch_dtype()
        self.coef_ = U.T.to(dt).cpu().numpy().copy()  # (n_outputs, D)
        self.intercept_ = c.to(dt).cpu().numpy().copy()
        self.alpha_ = float(alpha)
        self._after_solution()

    def _finish(self, ne: NormalEquations, blocks: Blocks | None, sums=None):
        U, c, alpha = self._solve(ne, blocks)
        U, c = self._refine(ne, blocks, U, c, alpha, sums)
        self._set_solution(U, c, alpha)
        self.n_samples_seen_ = int(ne.n)
        self._ne = ne
        return self

    def _reset(self) -> None:
        for k in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, k)
        self.__dict__.pop("_ne", None)

    def _start(self, X: np.ndarray, sw=None, moments: Moments | None = None) -> None:
        self.compute_dtype_ = compute_dtype_name(self.dtype, X.dtype)
        with on_cpu():  # random matrices come from CPU generators: the same on every device
            self._init_features(X, sw, moments)
        if (module := self._feature_module()) is not None:
            move_module(module, fit_device(self))
        self.n_features_in_ = X.shape[1]

    # -- fitting ---------------------------------------------------------------------------------
    def fit(
        self, X, y=None, sample_weight=None, *, chunk_rows: int = 65_536, categorical: str = "error"
    ):
        """Fit on arrays (NumPy, torch), a Dask array or data frame, an iterable of ``(X, y)``
        / ``(X, y, w)`` chunks (``y=None``) or a CSV/Parquet file (``y`` the target column's
        name, ``sample_weight`` a column name or ``None``).

        ``chunk_rows`` and ``categorical`` ("error" or "drop" non-numeric columns) apply to
        files. Returns ``self``.
        """
        self._reset()
        self._check_params()
        fit_device(self)  # a device that cannot fit fails here, before any work
        if is_dask(X):
            return self._fit_dask(X, y, sample_weight)
        if is_stream(X, y):
            return self._fit_stream(X, y, sample_weight, chunk_rows, categorical)
        X, y = validate_data(
            self, as_numpy(X), as_numpy(y), dtype=[np.float64, np.float32], **self._y_checks
        )
        Y = self._encode_targets(y)
        sw = (
            None
            if sample_weight is None
            else _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        )
        self._start(X, sw)
        ne = self._stats(X, Y, sw, show=True)
        return self._finish(ne, lambda: self._array_blocks(X, Y, sw))

    def _check_source(self, again: Callable | None) -> None:
        """Raise early when the settings need a second pass over a one-shot source."""
        if self.alpha == "loo" and again is None:
            raise ValueError(
                "alpha='loo' reads the data a second time: fit an array or a file path, "
                "or use alpha='gcv' (one pass) for streams, partial_fit and Dask"
            )

    def _fit_stream(self, X, y, sample_weight, chunk_rows: int, categorical: str):
        chunks, again = iter_source(self, X, y, sample_weight, chunk_rows, categorical)
        self._check_source(again)
        moments = pooled_moments(again) if again is not None and self._needs_moments() else None
        ne = None
        for i, (Xc, yc, wc) in enumerate(progress(chunks, self.verbose, desc="chunks")):
            Xc, yc, wc = check_chunk(getattr(self, "n_features_in_", None), i, Xc, yc, wc)
            if ne is None:
                self._start(Xc, wc, moments)
                ne = NormalEquations(self.num_features, 0, device=self._compute_device)
            Yc = self._chunk_targets(i, yc, ne)
            ne.merge(self._stats(Xc, Yc, wc))
        if ne is None or ne.n == 0:
            raise ValueError("the data stream was empty: no chunks with rows were given")
        self._end_stream_targets(ne)
        return self._finish(ne, None if again is None else lambda: self._reread(again))

    def _reread(self, again: Callable[[], ChunkSource]) -> Iterator:
        """``(F, Y, w)`` blocks of a source read once more (LOO, logistic loss)."""
        for i, (Xc, yc, wc) in enumerate(again()):
            Xc, yc, wc = check_chunk(self.n_features_in_, i, Xc, yc, wc)
            dev = self._compute_device
            Y = to_device(self._reread_targets(yc), dev, torch.float64)
            w = None if wc is None else to_device(wc, dev, torch.float64)
            for F, rows in self._feature_blocks(Xc):
                yield F, Y[rows], None if w is None else w[rows]

    def _check_dask(self) -> None:
        """Raise when the settings cannot be fitted in one cluster pass."""
        if self.alpha == "loo":
            raise ValueError(
                "alpha='loo' on a Dask array is not supported (it reads the data twice); "
                "use alpha='gcv', which is one tree-reduced pass"
            )

    def _fit_dask(self, X, y, sample_weight):
        self._check_dask()
        if y is None:
            raise ValueError("a Dask X needs a Dask (or NumPy) y of the same rows")
        Xd, yd, wd = dask_inputs(X, y, sample_weight)
        targets = self._dask_targets(yd)
        moments = dask_moments(Xd, wd) if self._needs_moments() else None
        self._start(np.asarray(Xd.blocks[0].compute()), None, moments)
        ne = dask_normal_equations(self, Xd, yd, wd, targets)
        ne = ne.to(self._compute_device)
        sums = DaskRowSums(self, Xd, yd, wd, targets) if self._rereads_rows() else None
        return self._finish(ne, None, sums)

    def _rereads_rows(self) -> bool:
        """Whether the solve reads the rows again after the normal equations (the
        logistic loss)."""
        return False

    def _partial_fit_ok(self) -> bool:
        return self.alpha != "loo"

    def _partial_fit(self, X, y, sample_weight, classes) -> FeatureModel:
        """Add one chunk to the statistics and re-solve. A chunk that fails validation leaves
        the fitted state exactly as it was."""
        first = not hasattr(self, "_ne")
        if first and hasattr(self, "coef_"):
            raise ValueError(
                "this model was loaded from a file or fitted without statistics; partial_fit "
                "needs the statistics of the earlier chunks: refit with fit or partial_fit"
            )
        if first:
            self._check_params()
            fit_device(self)
        try:
            X, y = validate_data(
                self,
                as_numpy(X),
                as_numpy(y),
                dtype=[np.float64, np.float32],
                reset=first,
                **self._y_checks,
            )
            Y = self._partial_targets(y, first, classes)
            sw = (
                None
                if sample_weight is None
                else _check_sample_weight(
                    sample_weight, X, dtype=np.float64, ensure_non_negative=True
                )
            )
            if first:
                self._start(X, sw)
            part = self._stats(X, Y, sw)
        except BaseException:
            if first:
                self._reset()
            raise
        ne = part if first else self._ne.copy().merge(part)
        return self._finish(ne, None)

    @available_if(lambda self: self._partial_fit_ok())
    def partial_fit(self, X, y, sample_weight=None):
        """Add one chunk of rows to the sufficient statistics and re-solve (``alpha`` a
        number or "gcv"). A chunk that fails validation leaves the fitted state as it was.
        The first call draws the feature map from its chunk."""
        return self._partial_fit(X, y, sample_weight, None)

    # -- prediction ------------------------------------------------------------------------------
    def _decision(self, X) -> np.ndarray:
        """Scores ``W z(x) + c`` per row block, shape ``(n, n_outputs)``, in ``X``'s dtype
        (a Dask array gives a lazy Dask array)."""
        check_is_fitted(self)
        if is_dask(X):
            X = frame_values(X).rechunk({1: -1})
            return X.map_blocks(
                self._decision, dtype=X.dtype, chunks=(X.chunks[0], (self.coef_.shape[0],))
            )
        X = validate_data(self, as_numpy(X), reset=False, dtype=[np.float64, np.float32])
        dt, dev = self._torch_dtype(), self._compute_device
        W = to_device(self.coef_.T, dev, dt)
        b = to_device(self.intercept_, dev, dt)
        out = np.empty((X.shape[0], W.shape[1]), dtype=X.dtype)
        for F, rows in self._feature_blocks(X):
            out[rows] = torch.addmm(b, F, W).cpu().numpy()
        return out

    def random_features(self, X) -> np.ndarray:
        """The features ``z(X)``, shape ``(n, num_features)`` in ``X``'s dtype (materialised:
        for moderate ``n`` only; ``predict`` never forms them). A tensor in gives a tensor on
        its device."""
        check_is_fitted(self)
        Xn = validate_data(self, as_numpy(X), reset=False, dtype=[np.float64, np.float32])
        parts = [F.cpu().numpy() for F, _ in self._feature_blocks(Xn)]
        return as_output(np.concatenate(parts, 0).astype(Xn.dtype, copy=False), X)

    # -- targets (the regressor and classifier mixins implement these) --------------------------
    _y_checks: ClassVar[dict[str, Any]] = {}

    def _encode_targets(self, y) -> np.ndarray:
        raise NotImplementedError

    def _chunk_targets(self, i: int, y, ne: NormalEquations) -> np.ndarray:
        raise NotImplementedError

    def _end_stream_targets(self, ne: NormalEquations) -> None:
        """Called after the last chunk of a stream."""

    def _reread_targets(self, y) -> np.ndarray:
        raise NotImplementedError

    def _dask_targets(self, y) -> Callable[[Any], np.ndarray]:
        raise NotImplementedError

    def _partial_targets(self, y, first: bool, classes) -> np.ndarray:
        raise NotImplementedError


class FeatureRegressorMixin(RegressorMixin):
    """Targets of a regressor of the feature-model family: numeric ``y`` of shape ``(n,)``
    or ``(n, o)`` (predictions keep that shape)."""

    _y_checks: ClassVar[dict[str, Any]] = {"y_numeric": True, "multi_output": True}
    #: a model fitted on a 1-D ``y`` has one output (see :mod:`snnk._persist_schema`)
    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "_y_1d": ValueSpec(("bool",), required=True, when_true=(("n_outputs", 1),)),
    }

    def _encode_targets(self, y) -> np.ndarray:
        self._y_1d = y.ndim == 1
        return y.reshape(len(y), -1).astype(np.float64)

    def _chunk_targets(self, i: int, y, ne: NormalEquations) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError(f"chunk {i}: y contains NaN or infinity")
        Y = y.reshape(len(y), -1)
        if ne.n == 0 and ne.FtY.shape[1] == 0:
            self._y_1d = y.ndim == 1
            ne.add_outputs(Y.shape[1])
        return Y

    def _reread_targets(self, y) -> np.ndarray:
        return np.asarray(y, dtype=np.float64).reshape(len(y), -1)

    def _dask_targets(self, y) -> Callable[[Any], np.ndarray]:
        self._y_1d = y.ndim == 1

        def targets(yb):
            yb = np.asarray(yb, dtype=np.float64)
            if not np.isfinite(yb).all():
                raise ValueError("y contains NaN or infinity")
            return yb.reshape(len(yb), -1)

        return targets

    def _partial_targets(self, y, first: bool, classes) -> np.ndarray:
        Y = y.reshape(len(y), -1).astype(np.float64)
        if first:
            self._y_1d = y.ndim == 1
        elif Y.shape[1] != self.coef_.shape[0]:
            raise ValueError(
                f"y has {Y.shape[1]} outputs; earlier chunks had {self.coef_.shape[0]}"
            )
        return Y

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X) -> np.ndarray:
        """Predictions ``W z(x) + c`` computed per row block (never the full feature matrix),
        in ``X``'s dtype (float32 input gives float32 output); shape ``(n,)`` for a 1-D
        training ``y``, else ``(n, o)``. A Dask array gives a lazy Dask array; a torch tensor
        a tensor on its device (computed on the model's device)."""
        out = self._decision(X)
        return as_output(out[:, 0] if self._y_1d else out, X)
