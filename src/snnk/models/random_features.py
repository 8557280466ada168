r"""Kernel ridge regression and classification on random features, at any scale.

Both estimators fit a linear model on a fixed random feature map ``z: R^d → R^D`` whose dot
products estimate the kernel, ``z(x)ᵀz(x') ≈ k(x, x')``. They need only the sufficient
statistics ``ZᵀWZ`` (D×D) and ``ZᵀWY`` of one pass over the data in row blocks, so one code
path serves an in-memory array, an iterable of chunks, a CSV/Parquet file read in chunks,
``partial_fit`` calls, and a Dask array (per-chunk statistics on the cluster, summed by a
tree reduction). Peak memory is ``O(D² + block·D)`` whatever the number of rows.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_array, check_random_state
    from sklearn.utils._available_if import available_if
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
from snnk._utils.tabular import iter_table
from snnk.features import SAMPLERS, ArcCosineFeatures, FourierFeatures
from snnk.io import PersistMixin
from snnk.kernels import ArcCosine, Kernel, make_kernel
from snnk.kernels._base import _REGISTRY
from snnk.solvers import NormalEquations, multinomial_logistic

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: cache the feature matrix in memory for iterative solvers up to this many elements
_CACHE_ELEMENTS = 1 << 27


# -- kernels and feature maps ---------------------------------------------------------------------
def resolve_kernel(kernel: str | Kernel, lengthscale: float | None) -> Kernel:
    """A kernel object from a name and a lengthscale, or the object itself."""
    if isinstance(kernel, Kernel):
        return kernel
    if not isinstance(kernel, str):
        raise TypeError(f"kernel must be a name or a snnk.kernels.Kernel, got {kernel!r}")
    cls = _REGISTRY.get(kernel.lower())
    if cls is not None and "lengthscale" in inspect.signature(cls).parameters:
        if lengthscale is None:
            return make_kernel(kernel)
        if (
            isinstance(lengthscale, bool)
            or not isinstance(lengthscale, numbers.Real)
            or not lengthscale > 0
            or not math.isfinite(lengthscale)
        ):
            raise ValueError(f"lengthscale must be a positive finite number, got {lengthscale!r}")
        return make_kernel(kernel, lengthscale=float(lengthscale))
    return make_kernel(kernel)


def make_feature_map(
    kernel: Kernel,
    in_features: int,
    num_features: int,
    *,
    sampler: str = "orthogonal",
    phases: str = "random",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.nn.Module:
    """The random feature map of ``kernel``: Fourier features for shift-invariant kernels
    (Gaussian, Laplace, Matern; ``phases`` as in :class:`~snnk.features.FourierFeatures`),
    arc-cosine features for :class:`~snnk.kernels.ArcCosine` (``phases`` unused)."""
    if kernel.shift_invariant:
        return FourierFeatures(
            kernel,
            in_features,
            num_features,
            sampler=sampler,
            phases=phases,
            seed=seed,
            dtype=dtype,
        )
    if isinstance(kernel, ArcCosine):
        return ArcCosineFeatures(
            in_features, num_features, kernel.order, sampler=sampler, seed=seed, dtype=dtype
        )
    raise ValueError(
        f"no random feature map for {kernel!r}: use a shift-invariant kernel (gaussian, "
        f"laplace, matern) or arccosine, or snnk.models.NystromRidge for any kernel"
    )


def _is_dask(x) -> bool:
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "__dask_graph__")


def _is_path(x) -> bool:
    return isinstance(x, str | os.PathLike)


def _as_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _block_features(fmap, X: np.ndarray, step: int) -> Iterator[tuple[torch.Tensor, slice]]:
    """``(z(X[rows]), rows)`` over row blocks, in the map's dtype."""
    dt = next(fmap.buffers()).dtype
    with torch.no_grad():
        for rows in iter_blocks(X.shape[0], step):
            yield fmap(torch.tensor(X[rows], dtype=dt)), rows


def _block_stats(fmap, X, Y, sw, num_features: int, step: int) -> NormalEquations:
    """Normal equations of one validated chunk, accumulated over row blocks."""
    ne = NormalEquations(num_features, Y.shape[1])
    Yt = torch.tensor(Y, dtype=torch.float64)
    swt = None if sw is None else torch.tensor(sw, dtype=torch.float64)
    for F, rows in _block_features(fmap, X, step):
        ne.update(F, Yt[rows], None if swt is None else swt[rows])
    return ne


# -- the shared estimator ------------------------------------------------------------------------
class _RandomFeatureModel(PersistMixin, BaseEstimator):
    """Shared machinery: feature map, blocked statistics, streaming / file / Dask fits."""

    _persist_private: tuple[str, ...] = ("_y_1d",)
    #: files written before ``phases`` existed hold paired cos/sin features
    _legacy_params: ClassVar[dict[str, object]] = {"phases": "paired"}

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | str | None = "scale",
        num_features: int = 1024,
        sampler: str = "orthogonal",
        phases: str = "random",
        alpha: float | str = "gcv",
        fit_intercept: bool = True,
        dtype: str | None = None,
        batch_size: int = 4096,
        random_state=None,
        verbose: bool = False,
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.num_features = num_features
        self.sampler = sampler
        self.phases = phases
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.dtype = dtype
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # -- parameters ------------------------------------------------------------------------------
    def _check_params(self) -> None:
        for name in ("num_features", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be None (follow the input), 'float32' or 'float64', got {self.dtype!r}"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.phases not in ("random", "paired"):
            raise ValueError(f"phases must be 'random' or 'paired', got {self.phases!r}")
        a = self.alpha
        if isinstance(a, str):
            if a not in ("gcv", "loo"):
                raise ValueError(f"alpha must be a non-negative float, 'gcv' or 'loo', got {a!r}")
        elif isinstance(a, bool) or not isinstance(a, numbers.Real) or not (0 <= a < math.inf):
            raise ValueError(f"alpha must be a non-negative float, 'gcv' or 'loo', got {a!r}")

    def _lengthscale_for(self, X: np.ndarray, sw=None, var: float | None = None) -> float | None:
        """The lengthscale to use: the number given, or ``"scale"``: ``ℓ² = d·Var(X)/2``,
        i.e. ``γ = 1/(2ℓ²) = 1/(d·Var(X))``, scikit-learn's ``gamma="scale"`` of SVC.

        ``Var(X)`` is over all entries of ``X`` (the first chunk for streams and files), or
        ``var`` when the caller computed it over the whole data (Dask)."""
        ls = self.lengthscale
        if not isinstance(ls, str):
            return ls
        if ls != "scale":
            raise ValueError(f"lengthscale must be a positive number or 'scale', got {ls!r}")
        if isinstance(self.kernel, Kernel):
            return None
        if var is not None:
            pass
        elif not X.size:
            var = 0.0
        elif sw is None:
            var = float(np.var(X))
        else:  # weighted like repeated rows, so weights and repetitions agree
            w = np.asarray(sw, dtype=np.float64) / max(float(np.sum(sw)), 1e-300)
            mean = float(w @ X.mean(1))
            var = float(w @ np.square(X - mean).mean(1))
        return math.sqrt(X.shape[1] * var / 2.0) if var > 0 else 1.0

    def _new_map(
        self, X: np.ndarray, dtype: torch.dtype, sw=None, var: float | None = None
    ) -> tuple[torch.nn.Module, float | None]:
        """A fresh feature map for data like ``X`` (the first chunk) and its lengthscale."""
        self._check_params()
        ls = self._lengthscale_for(X, sw, var)
        kernel = resolve_kernel(self.kernel, ls)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        fmap = make_feature_map(
            kernel,
            X.shape[1],
            self.num_features,
            sampler=self.sampler,
            phases=self.phases,
            seed=seed,
            dtype=dtype,
        )
        return fmap.requires_grad_(False), ls

    def _build_modules(self) -> None:
        """Recreate the feature map's skeleton for :func:`snnk.io.load_model`."""
        kernel = resolve_kernel(self.kernel, self.lengthscale_)
        self.feature_map_ = make_feature_map(
            kernel,
            self.n_features_in_,
            self.num_features,
            sampler=self.sampler,
            phases=self.phases,
            seed=0,
            dtype=_DTYPES[self.compute_dtype_],
        ).requires_grad_(False)

    def _compute_dtype(self, X_dtype) -> str:
        if self.dtype is not None:
            return self.dtype
        return "float32" if X_dtype == np.float32 else "float64"

    @property
    def _step(self) -> int:
        return min(self.batch_size, default_block_rows(self.num_features))

    def _features(
        self, fmap: torch.nn.Module, X: np.ndarray
    ) -> Iterator[tuple[torch.Tensor, slice]]:
        return _block_features(fmap, X, self._step)

    def _stats(self, fmap, X, Y, sw) -> NormalEquations:
        return _block_stats(fmap, X, Y, sw, self.num_features, self._step)

    def _progress(self, it, total=None, desc=""):
        if not self.verbose:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc)

    # -- solving ---------------------------------------------------------------------------------
    def _solve(self, ne: NormalEquations, blocks: Callable[[], Iterable] | None):
        """``(U, c, alpha)`` for the ridge loss with the configured ``alpha``."""
        if self.alpha == "gcv":
            U, c, alpha, scores = ne.solve_gcv(fit_intercept=self.fit_intercept)
            self.cv_scores_ = scores.numpy()
            return U, c, alpha
        if self.alpha == "loo":
            if blocks is None:
                raise ValueError(
                    "alpha='loo' reads the data a second time: fit an array or a file path, "
                    "or use alpha='gcv' (one pass) for streams, partial_fit and Dask"
                )
            U, c, alpha, scores = _solve_loo(ne, blocks, self.fit_intercept)
            self.cv_scores_ = scores.numpy()
            return U, c, alpha
        U, c = ne.solve(float(self.alpha), fit_intercept=self.fit_intercept)
        return U, c, float(self.alpha)

    def _set_solution(self, U, c, alpha) -> None:
        self.coef_ = U.T.numpy().copy()  # (n_outputs, D)
        self.intercept_ = c.numpy().copy()
        self.alpha_ = float(alpha)

    # -- prediction ------------------------------------------------------------------------------
    def _decision(self, X) -> np.ndarray:
        check_is_fitted(self)
        if _is_dask(X):
            X = X.rechunk({1: -1})
            return X.map_blocks(
                self._decision, dtype=X.dtype, chunks=(X.chunks[0], (self.coef_.shape[0],))
            )
        X = validate_data(self, _as_numpy(X), reset=False, dtype=[np.float64, np.float32])
        dt = _DTYPES[self.compute_dtype_]
        W = torch.from_numpy(self.coef_.T).to(dt)
        b = torch.from_numpy(self.intercept_).to(dt)
        out = np.empty((X.shape[0], W.shape[1]), dtype=X.dtype)
        for F, rows in self._features(self.feature_map_, X):
            out[rows] = torch.addmm(b, F, W).numpy()
        return out

    def random_features(self, X) -> np.ndarray:
        """The random features ``z(X)``, shape ``(n, num_features)`` (materialised: use for
        moderate ``n`` only; ``predict`` never forms them)."""
        check_is_fitted(self)
        X = validate_data(self, _as_numpy(X), reset=False, dtype=[np.float64, np.float32])
        parts = [F.numpy() for F, _ in self._features(self.feature_map_, X)]
        return np.concatenate(parts, 0).astype(X.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    # -- input handling shared by fit ------------------------------------------------------------
    def _start(self, X: np.ndarray, sw=None, var: float | None = None) -> None:
        self.compute_dtype_ = self._compute_dtype(X.dtype)
        self.feature_map_, self.lengthscale_ = self._new_map(
            X, _DTYPES[self.compute_dtype_], sw, var
        )
        self.n_features_in_ = X.shape[1]

    def _start_dask(self, X, w) -> None:
        """``_start`` for a Dask ``X``: with ``lengthscale="scale"`` the variance is computed
        over the whole array (one cheap cluster pass), so it equals the in-memory fit's."""
        import dask

        var = None
        if self.lengthscale == "scale" and not isinstance(self.kernel, Kernel):
            if w is None:
                (var,) = dask.compute(X.astype(np.float64).var())
            else:
                w = w.astype(np.float64) / w.sum()
                rows = X.astype(np.float64).mean(1)
                mean = (w * rows).sum()
                (var,) = dask.compute((w * ((X - mean) ** 2).mean(1)).sum())
            var = float(var)
        self._start(np.asarray(X.blocks[0].compute()), var=var)

    def _stream_var(self, again) -> float | None:
        """For ``lengthscale="scale"`` on a source that can be read again (a file, a list of
        chunks): the variance over all of it, pooled chunk by chunk (Chan et al.'s stable
        update), so the fit equals the one-shot fit. ``None`` when not needed or not
        possible (a one-shot iterator uses its first chunk)."""
        if again is None or self.lengthscale != "scale" or isinstance(self.kernel, Kernel):
            return None
        W = mean = M2 = 0.0
        for i, (Xc, yc, wc) in enumerate(again()):
            Xc, _, wc = self._check_chunk(i, Xc, yc, wc)
            if not Xc.size:
                continue
            w = np.ones(len(Xc)) if wc is None else wc
            Wc = float(w.sum())
            if Wc <= 0:
                continue
            mc = float(w @ Xc.mean(1)) / Wc
            M2c = float(w @ np.square(Xc - mc).mean(1))
            delta, total = mc - mean, W + Wc
            mean += delta * Wc / total
            M2 += M2c + delta * delta * W * Wc / total
            W = total
        return M2 / W if W > 0 else 0.0

    def _reset(self) -> None:
        for k in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, k)
        self.__dict__.pop("_ne", None)

    def _check_chunk(self, i: int, X, y, w):
        """Validate one chunk of a stream; returns float arrays ``(X, y, w)``."""
        X = check_array(_as_numpy(X), dtype=[np.float64, np.float32], input_name=f"chunk {i} X")
        if hasattr(self, "n_features_in_") and X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"chunk {i} has {X.shape[1]} feature columns but the earlier chunks have "
                f"{self.n_features_in_}; every chunk must have the same columns"
            )
        y = np.asarray(_as_numpy(y))
        if y.shape[0] != X.shape[0]:
            raise ValueError(
                f"chunk {i}: X has {X.shape[0]} rows but y has {y.shape[0]}; they must match"
            )
        if w is not None:
            w = _check_sample_weight(_as_numpy(w), X, dtype=np.float64)
        return X, y, w

    def _iter_source(self, X, y, sample_weight, chunk_rows, categorical):
        """``(chunks, reiterable)``: chunk iterator of ``(X, y, w)`` and, for sources that
        can be read again (files), a function that restarts it."""
        if _is_path(X):
            if not isinstance(y, str) and not (
                isinstance(y, list | tuple) and all(isinstance(c, str) for c in y)
            ):
                raise ValueError(
                    f"fitting the file {str(X)!r} needs y = the name of the target column, "
                    f"got {y!r}"
                )
            weight_col = sample_weight if isinstance(sample_weight, str) else None
            if sample_weight is not None and weight_col is None:
                raise ValueError("with a file, sample_weight must be a column name")
            targets = [y] if isinstance(y, str) else list(y)
            targets = [*targets, weight_col] if weight_col else targets

            def read():
                for Xc, Yc, names in iter_table(
                    X, targets, chunk_rows=chunk_rows, categorical=categorical
                ):
                    if not hasattr(self, "feature_names_in_"):
                        self.feature_names_in_ = np.asarray(names, dtype=object)
                    Yc = Yc if Yc.ndim == 1 or Yc.shape[1] > 1 else Yc[:, 0]
                    if weight_col:
                        yield Xc, (Yc[:, :-1] if Yc.shape[1] > 2 else Yc[:, 0]), Yc[:, -1]
                    else:
                        yield Xc, Yc, None

            return read(), read
        if y is not None:
            raise TypeError(
                "y was given with an iterable of chunks: pass either arrays X and y, or one "
                "iterable of (X, y) or (X, y, sample_weight) tuples with y=None"
            )

        def items(source=X):
            for i, item in enumerate(source):
                if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                    raise ValueError(
                        f"chunk {i} is not an (X, y) or (X, y, sample_weight) tuple: fit takes "
                        "arrays X and y, a file path and a target column, or an iterable of "
                        "(X, y) chunks"
                    )
                yield item[0], item[1], (item[2] if len(item) == 3 else None)

        if iter(X) is not X:  # a container (list, re-iterable reader): can be read again
            return items(), lambda: items(X)
        return items(), None

    @staticmethod
    def _is_stream(X, y) -> bool:
        if _is_path(X):
            return True
        if y is not None or isinstance(X, np.ndarray | torch.Tensor):
            return False
        return isinstance(X, Iterable) and not hasattr(X, "__array__") and not hasattr(X, "shape")


def _solve_loo(ne: NormalEquations, blocks: Callable[[], Iterable], fit_intercept: bool):
    """Ridge with ``α`` minimising the exact leave-one-out error (PRESS) on a grid.

    With ``A = Z̃ᵀWZ̃ = VΛVᵀ`` (centred features), the hat diagonal is
    ``h_i(α) = w_i/Σw + w_i ‖Λ_α^{-1/2} Vᵀz̃_i‖²`` and the leave-one-out residual is
    ``e_i(α)/(1 − h_i(α))``; one eigendecomposition and one more pass over the data score
    every ``α`` of the grid (``Σ_i w_i ‖e_i/(1−h_i)‖²``).
    """
    A, B, _ = ne.centred(fit_intercept)
    evals, V = torch.linalg.eigh(A)
    evals = evals.clamp_min(0.0)
    scale = max(float(evals.mean()), 1e-300)
    alphas = scale * torch.logspace(-5, 2, 29, dtype=torch.float64)
    inv = 1.0 / (evals[:, None] + alphas[None, :])  # (D, G)
    VB = V.T @ B  # (D, o)
    G, o = alphas.numel(), B.shape[1]
    C = (VB[:, None, :] * inv[:, :, None]).reshape(-1, G * o)  # (D, G*o)
    fm = ne.Fsum / ne.wsum if fit_intercept else torch.zeros_like(ne.Fsum)
    ym = ne.Ysum / ne.wsum if fit_intercept else torch.zeros_like(ne.Ysum)
    press = torch.zeros(G, dtype=torch.float64)
    for F, Y, w in blocks():
        P = (F.double() - fm) @ V  # (b, D)
        pred = (P @ C).reshape(-1, G, o) + ym
        w = torch.ones(P.shape[0], dtype=torch.float64) if w is None else w
        h = (P.square() @ inv) * w[:, None]
        if fit_intercept:
            h = h + (w / ne.wsum)[:, None]
        e = (Y[:, None, :] - pred) / (1.0 - h).clamp_min(1e-12)[:, :, None]
        press += (w[:, None, None] * e.square()).sum((0, 2))
    best = int(torch.argmin(press))
    a = float(alphas[best])
    U = V @ (VB / (evals[:, None] + a))
    return U, ne.intercept(U, fit_intercept), a, press / ne.wsum


# -- regression ---------------------------------------------------------------------------------
class RandomFeatureRidge(RegressorMixin, _RandomFeatureModel):
    r"""Kernel ridge regression on random features: ``ŷ = W z(x) + c``.

    ``z`` is a random feature map of ``kernel`` (Fourier features for Gaussian, Laplace and
    Matérn kernels, drawn by ``sampler``; arc-cosine features), so ``z(x)ᵀz(x')`` is an
    unbiased estimate of ``k(x, x')`` with variance ``O(1/D)``. ``W`` minimises the
    (sample-weighted) ridge loss ``Σ_i w_i ‖y_i − W z(x_i) − c‖² + α ‖W‖²`` (the intercept is
    not penalised; scikit-learn's ``Ridge`` convention), solved exactly from ``ZᵀWZ`` and
    ``ZᵀWy`` accumulated in float64 over row blocks (Cholesky with jitter; pseudo-inverse
    when rank deficient). As ``D → ∞`` this is kernel ridge regression with ``k``.

    ``fit`` accepts arrays (NumPy, torch), a Dask array (statistics per chunk on the cluster,
    tree-reduced; no dask-ml), an iterable of ``(X, y)`` / ``(X, y, w)`` chunks, or the path
    of a CSV/Parquet file with ``y`` the target column's name, read in chunks; ``partial_fit``
    adds chunks one call at a time. Peak memory is ``O(D² + batch_size·D)``.

    Parameters
    ----------
    kernel : str or snnk.kernels.Kernel, default "gaussian"
        ``"gaussian"``, ``"laplace"``, ``"matern"``, ``"arccosine"``, or a kernel object
        (then ``lengthscale`` is not used).
    lengthscale : float or "scale", default "scale"
        ``"scale"`` sets ``ℓ² = d·Var(X)/2`` from the training data, i.e.
        ``γ = 1/(d·Var(X))`` like scikit-learn's ``gamma="scale"``; the value used is
        ``lengthscale_``. Files, Dask arrays and lists of chunks pool the variance over all
        rows (one extra cheap pass), so their fits equal the one-shot fit; a one-shot iterator
        and ``partial_fit`` use their first chunk (give a number to make them agree).
    num_features : int, default 1024
        ``D`` (even for Fourier features with ``phases="paired"``).
    sampler : {"orthogonal", "iid", "structured", "qmc", "halton"}, default "orthogonal"
    phases : {"random", "paired"}, default "random"
        Fourier features only. ``"random"``: ``D`` frequencies ``ω_j``, features
        ``√(2/D) cos(ω_jᵀx + b_j)`` with uniform phases; ``"paired"``: ``D/2`` frequencies,
        each as a ``cos``/``sin`` pair. Paired features estimate the kernel with lower variance
        (``‖ZZᵀ − K‖/‖K‖`` 0.040 against 0.058 at D = 2,000, orthogonal, d = 20), but random
        phases span twice as many frequencies, which is what ridge regression uses: on the
        kernel-machines reference problem (D = 2,000, 5 data draws x 6 feature draws) the
        test RMSE was 0.4399 (random) against 0.4478 (paired), mean of 30 fits
        (docs/benchmarks.md section 4). Models saved before this option existed load with
        ``"paired"``, the features they were fitted with.
    alpha : float, "gcv" or "loo", default "gcv"
        Ridge strength, or chosen on a 29-point log grid (``10^-5 … 10^2`` times the mean
        eigenvalue of ``ZᵀZ``) by generalised cross-validation (one pass, one
        eigendecomposition) or exact leave-one-out (one more pass; arrays and files only).
    fit_intercept : bool, default True
    dtype : {None, "float32", "float64"}, default None
        Precision of the features and block products (None: float32 for float32 input,
        else float64). Accumulators and solves are always float64.
    batch_size : int, default 4096
        Rows per block (capped so a block of features stays small).
    random_state : int, RandomState or None
        Seeds the feature draw (a torch generator; no global RNG is touched).
    verbose : bool, default False
        Progress bars over chunks.

    Attributes
    ----------
    coef_ : ndarray (n_outputs, D)
    intercept_ : ndarray (n_outputs,)
    alpha_ : float
    cv_scores_ : ndarray, GCV or LOO score per grid point (when ``alpha`` is a string)
    feature_map_ : torch.nn.Module
    n_features_in_, feature_names_in_, n_samples_seen_
    """

    def fit(
        self, X, y=None, sample_weight=None, *, chunk_rows: int = 65_536, categorical: str = "error"
    ):
        """Fit on arrays, a Dask array, an iterable of chunks or a CSV/Parquet file.

        ``chunk_rows`` and ``categorical`` ("error" or "drop" non-numeric columns) apply
        to files.
        """
        self._reset()
        if _is_dask(X):
            return self._fit_dask(X, y, sample_weight)
        if self._is_stream(X, y):
            chunks, again = self._iter_source(X, y, sample_weight, chunk_rows, categorical)
            var, ne = self._stream_var(again), None
            for i, (Xc, yc, wc) in enumerate(self._progress(chunks, desc="chunks")):
                Xc, yc, wc = self._check_chunk(i, Xc, yc, wc)
                yc = np.asarray(yc, dtype=np.float64)
                if not np.isfinite(yc).all():
                    raise ValueError(f"chunk {i}: y contains NaN or infinity")
                if ne is None:
                    self._start(Xc, wc, var)
                    self._y_1d = yc.ndim == 1
                Yc = yc.reshape(len(yc), -1)
                part = self._stats(self.feature_map_, Xc, Yc, wc)
                ne = part if ne is None else ne.merge(part)
            if ne is None:
                raise ValueError("the data stream was empty: no chunks with rows were given")
            if again is None:
                return self._finish(ne, None)
            return self._finish(ne, lambda: self._stream_blocks(again()))
        X, y = validate_data(
            self,
            _as_numpy(X),
            _as_numpy(y),
            dtype=[np.float64, np.float32],
            y_numeric=True,
            multi_output=True,
        )
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        self._start(X, sw)
        self._y_1d = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        ne = self._stats(self.feature_map_, X, Y, sw)
        return self._finish(ne, lambda: self._array_blocks(X, Y, sw))

    def _stream_blocks(self, chunks):
        for Xc, yc, wc in chunks:
            Y = torch.tensor(np.asarray(yc, dtype=np.float64).reshape(len(yc), -1))
            w = None if wc is None else torch.tensor(wc, dtype=torch.float64)
            for F, rows in self._features(self.feature_map_, Xc):
                yield F, Y[rows], None if w is None else w[rows]

    def _array_blocks(self, X, Y, sw):
        Yt = torch.from_numpy(Y)
        w = None if sw is None else torch.tensor(sw, dtype=torch.float64)
        for F, rows in self._features(self.feature_map_, X):
            yield F, Yt[rows], None if w is None else w[rows]

    def _finish(self, ne: NormalEquations, blocks):
        U, c, alpha = self._solve(ne, blocks)
        self._set_solution(U, c, alpha)
        self.n_samples_seen_ = int(ne.n)
        self._ne = ne
        return self

    @available_if(lambda self: self.alpha != "loo")
    def partial_fit(self, X, y, sample_weight=None):
        """Add one chunk to the sufficient statistics and re-solve (``alpha`` float or "gcv").

        A chunk that fails validation leaves the fitted state exactly as it was.
        """
        first = not hasattr(self, "_ne")
        if first and hasattr(self, "coef_"):
            raise ValueError(
                "this model was loaded from a file or fitted without statistics; partial_fit "
                "needs the statistics of the earlier chunks: refit with fit or partial_fit"
            )
        X, y = validate_data(
            self,
            _as_numpy(X),
            _as_numpy(y),
            dtype=[np.float64, np.float32],
            y_numeric=True,
            multi_output=True,
            reset=first,
        )
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        if first:
            dtype = self._compute_dtype(X.dtype)
            fmap, ls = self._new_map(X, _DTYPES[dtype], sw)
            y1d = y.ndim == 1
        else:
            fmap, y1d = self.feature_map_, self._y_1d
            if (y.ndim == 1) != y1d and y.reshape(len(y), -1).shape[1] != self.coef_.shape[0]:
                raise ValueError(
                    f"y has {y.reshape(len(y), -1).shape[1]} outputs; earlier chunks had "
                    f"{self.coef_.shape[0]}"
                )
        Y = y.reshape(len(y), -1).astype(np.float64)
        part = self._stats(fmap, X, Y, sw)
        ne = part if first else self._ne.copy().merge(part)
        U, c, alpha = self._solve(ne, None)
        if first:
            self.compute_dtype_, self.feature_map_, self._y_1d = dtype, fmap, y1d
            self.lengthscale_ = ls
        self._set_solution(U, c, alpha)
        self.n_samples_seen_ = int(ne.n)
        self._ne = ne
        return self

    def _fit_dask(self, X, y, sample_weight):
        if y is None:
            raise ValueError("a Dask X needs a Dask (or NumPy) y of the same rows")
        Xd, yd, wd = _dask_inputs(X, y, sample_weight)
        self._start_dask(Xd, wd)
        self._y_1d = yd.ndim == 1

        def one_hot(yb):
            yb = np.asarray(yb, dtype=np.float64)
            if not np.isfinite(yb).all():
                raise ValueError("y contains NaN or infinity")
            return yb.reshape(len(yb), -1)

        ne = _dask_normal_equations(self, Xd, yd, wd, one_hot)
        return self._finish(ne, None)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X) -> np.ndarray:
        """Predictions ``W z(x) + c`` computed per row block (never the full feature matrix);
        float32 input gives float32 output. A Dask array gives a lazy Dask array."""
        out = self._decision(X)
        return out[:, 0] if self._y_1d else out


def _dask_inputs(X, y, sample_weight):
    import dask.array as da

    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D Dask array, got {X.ndim} dimensions")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    X = X.rechunk({1: -1})
    y = da.asarray(y)
    if y.shape[0] != X.shape[0] and not (math.isnan(X.shape[0]) or math.isnan(y.shape[0])):
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}; they must match")
    y = y.rechunk({0: X.chunks[0]} if y.ndim == 1 else {0: X.chunks[0], 1: -1})
    w = None
    if sample_weight is not None:
        w = da.asarray(sample_weight).rechunk({0: X.chunks[0]})
    return X, y, w


def _chunk_normal_equations(fmap, X, y, w, targets, num_features, step):
    """Task run on a Dask worker: validate one chunk and return its normal equations."""
    X = check_array(X, dtype=[np.float64, np.float32])
    Y = targets(y)
    w = None if w is None else np.asarray(w, dtype=np.float64)
    return _block_stats(fmap, X, Y, w, num_features, step)


def _merge_all(*parts):
    total = parts[0].copy()
    for p in parts[1:]:
        total.merge(p)
    return total


def _dask_normal_equations(est, X, y, w, targets) -> NormalEquations:
    """Per-chunk statistics on the cluster, summed by a tree reduction (fan-in 8)."""
    import dask

    xs = X.to_delayed().ravel()
    ys = y.to_delayed().ravel()
    ws = [None] * len(xs) if w is None else list(w.to_delayed().ravel())
    task = dask.delayed(_chunk_normal_equations, pure=True)
    fmap = dask.delayed(est.feature_map_, pure=True)
    D, step = est.num_features, est._step
    parts = [
        task(fmap, xb, yb, wb, targets, D, step) for xb, yb, wb in zip(xs, ys, ws, strict=True)
    ]
    if not parts:
        raise ValueError("the Dask array has no chunks")
    merge = dask.delayed(_merge_all, pure=True)
    while len(parts) > 1:
        parts = [merge(*parts[i : i + 8]) for i in range(0, len(parts), 8)]
    (ne,) = dask.compute(parts[0])
    if ne.n == 0:
        raise ValueError("the Dask array has no rows")
    return ne


# -- classification -----------------------------------------------------------------------------
class RandomFeatureClassifier(ClassifierMixin, _RandomFeatureModel):
    r"""Kernel classifier on random features: scores ``W z(x) + c``, one column per class.

    ``loss="squared"``: ridge regression on one-hot targets in closed form (the multiclass
    route of Falkon and regularised least-squares classification), from the same streaming
    statistics as :class:`RandomFeatureRidge`; works on every input kind, ``partial_fit``
    and Dask. ``loss="log"``: L2-penalised multinomial logistic regression
    ``−Σ_i w_i log softmax(W z_i + c)_{y_i} + (α/2)‖W‖²`` by truncated Newton (CG with exact
    Hessian-vector products, preconditioned by Böhning's bound built from ``ZᵀWZ``); each
    Newton step reads the data again, so it needs arrays or a file. With ``alpha`` "gcv" /
    "loo" the strength is chosen on the squared loss of the one-hot targets.

    ``predict_proba``: softmax for ``loss="log"``; for ``loss="squared"`` the one-hot scores
    clipped at 0 and renormalised (uniform where all are <= 0).

    Parameters
    ----------
    loss : {"log", "squared"}, default "log"
    max_iter : int, default 100
        Newton iterations (``loss="log"``).
    tol : float, default 1e-8
        Newton stops when the largest gradient entry is below ``tol`` times its start.
    (others as :class:`RandomFeatureRidge`)

    Attributes
    ----------
    classes_ : ndarray
    coef_ : ndarray (n_classes, D)
    intercept_, alpha_, feature_map_, n_iter_, n_features_in_
    """

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | str | None = "scale",
        num_features: int = 1024,
        sampler: str = "orthogonal",
        phases: str = "random",
        alpha: float | str = "gcv",
        loss: str = "log",
        max_iter: int = 100,
        tol: float = 1e-8,
        fit_intercept: bool = True,
        dtype: str | None = None,
        batch_size: int = 4096,
        random_state=None,
        verbose: bool = False,
    ):
        super().__init__(
            kernel=kernel,
            lengthscale=lengthscale,
            num_features=num_features,
            sampler=sampler,
            phases=phases,
            alpha=alpha,
            fit_intercept=fit_intercept,
            dtype=dtype,
            batch_size=batch_size,
            random_state=random_state,
            verbose=verbose,
        )
        self.loss = loss
        self.max_iter = max_iter
        self.tol = tol

    def _check_loss(self):
        if self.loss not in ("log", "squared"):
            raise ValueError(f"loss must be 'log' or 'squared', got {self.loss!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral):
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if self.max_iter <= 0:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")

    @staticmethod
    def _one_hot(idx: np.ndarray, k: int) -> np.ndarray:
        Y = np.zeros((len(idx), k))
        Y[np.arange(len(idx)), idx] = 1.0
        return Y

    def fit(
        self, X, y=None, sample_weight=None, *, chunk_rows: int = 65_536, categorical: str = "error"
    ):
        """Fit on arrays, a Dask array, an iterable of chunks or a CSV/Parquet file."""
        self._reset()
        self._check_loss()
        if _is_dask(X):
            return self._fit_dask(X, y, sample_weight)
        if self._is_stream(X, y):
            return self._fit_stream(X, y, sample_weight, chunk_rows, categorical)
        X, y = validate_data(self, _as_numpy(X), _as_numpy(y), dtype=[np.float64, np.float32])
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        classes, idx = np.unique(y, return_inverse=True)
        self._check_classes(classes)
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        self._start(X, sw)
        Y = self._one_hot(idx, len(classes))
        ne = self._stats(self.feature_map_, X, Y, sw)
        self.classes_ = classes

        def blocks():
            Yt = torch.from_numpy(Y)
            w = None if sw is None else torch.tensor(sw, dtype=torch.float64)
            for F, rows in self._features(self.feature_map_, X):
                yield F, Yt[rows], None if w is None else w[rows]

        return self._finish(ne, blocks, Y, sw)

    def _check_classes(self, classes):
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data, but "
                f"the data contains only one class: {classes[0]!r}"
            )

    def _fit_stream(self, X, y, sample_weight, chunk_rows, categorical):
        chunks, again = self._iter_source(X, y, sample_weight, chunk_rows, categorical)
        if self.loss == "log" and again is None:
            raise ValueError(
                "loss='log' reads the data once per Newton step: fit an array or a file "
                "path, or use loss='squared' for a one-pass stream"
            )
        ne, labels, var = None, {}, self._stream_var(again)
        for i, (Xc, yc, wc) in enumerate(self._progress(chunks, desc="chunks")):
            Xc, yc, wc = self._check_chunk(i, Xc, yc, wc)
            yc = column_or_1d(yc)
            check_classification_targets(yc)
            if ne is None:
                self._start(Xc, wc, var)
                ne = NormalEquations(self.num_features, 0)
            new = [c for c in np.unique(yc) if c not in labels]
            if new:
                labels.update({c: len(labels) + j for j, c in enumerate(new)})
                ne.add_outputs(len(new))
            idx = np.array([labels[c] for c in yc], dtype=np.int64)
            ne.merge(self._stats(self.feature_map_, Xc, self._one_hot(idx, len(labels)), wc))
        if ne is None or ne.n == 0:
            raise ValueError("the data stream was empty: no chunks with rows were given")
        classes = np.array(sorted(labels))
        self._check_classes(classes)
        order = torch.tensor([labels[c] for c in classes])  # columns in sorted class order
        ne.FtY, ne.YtY, ne.Ysum = ne.FtY[:, order], ne.YtY[order], ne.Ysum[order]
        self.classes_ = classes
        lookup = {c: i for i, c in enumerate(classes)}

        def blocks():
            for Xc, yc, wc in again():
                idx = np.array([lookup[c] for c in np.asarray(yc)], dtype=np.int64)
                Yt = torch.from_numpy(self._one_hot(idx, len(classes)))
                w = None if wc is None else torch.tensor(wc, dtype=torch.float64)
                for F, rows in self._features(self.feature_map_, Xc):
                    yield F, Yt[rows], None if w is None else w[rows]

        return self._finish(ne, None if again is None else blocks, None, None)

    def _fit_dask(self, X, y, sample_weight):
        import dask

        if self.loss == "log":
            raise ValueError(
                "loss='log' on a Dask array is not supported (one cluster pass per Newton "
                "step); use loss='squared', which is one tree-reduced pass"
            )
        if y is None:
            raise ValueError("a Dask X needs a Dask (or NumPy) y of the same rows")
        Xd, yd, wd = _dask_inputs(X, y, sample_weight)
        if yd.ndim != 1:
            raise ValueError("y must be 1-D for a classifier")
        (classes,) = dask.compute(dask.array.unique(yd))
        self._check_classes(classes)
        self._start_dask(Xd, wd)
        self.classes_ = classes

        def targets(yb):
            idx = np.searchsorted(classes, np.asarray(yb))
            return self._one_hot(idx, len(classes))

        ne = _dask_normal_equations(self, Xd, yd, wd, targets)
        return self._finish(ne, None, None, None)

    def _finish(self, ne, blocks, Y, sw):
        U, c, alpha = self._solve(ne, blocks)
        self.n_iter_ = 1
        if self.loss == "log":
            U, c = self._fit_logistic(ne, blocks, alpha)
        self._set_solution(U, c, alpha)
        self.n_samples_seen_ = int(ne.n)
        self._ne = ne
        return self

    def _fit_logistic(self, ne, blocks, alpha):
        cache = None
        if ne.n * self.num_features <= _CACHE_ELEMENTS:
            cache = list(blocks())
        source = (lambda: iter(cache)) if cache is not None else blocks
        # multinomial_logistic wants (F, rows) pairs over one target matrix: give it global
        # row indices into concatenated targets and weights.
        Ys, ws, starts = [], [], []
        start = 0
        for _, Yb, wb in source():
            Ys.append(Yb)
            ws.append(torch.ones(Yb.shape[0], dtype=torch.float64) if wb is None else wb)
            starts.append(start)
            start += Yb.shape[0]

        def features():
            for (F, _, _), s in zip(source(), starts, strict=True):
                yield F, slice(s, s + F.shape[0])

        res = multinomial_logistic(
            features,
            torch.cat(Ys),
            ne.FtF,
            ne.Fsum,
            max(alpha, 1e-12),
            sample_weight=torch.cat(ws),
            max_iter=self.max_iter,
            tol=self.tol,
            fit_intercept=self.fit_intercept,
        )
        self.n_iter_ = res.n_iter
        if not res.converged:
            warnings.warn(
                f"{type(self).__name__} did not converge in {self.max_iter} Newton iterations; "
                "raise max_iter or alpha",
                ConvergenceWarning,
                stacklevel=3,
            )
        return res.coef, res.intercept

    @available_if(lambda self: self.loss == "squared" and self.alpha != "loo")
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Add one chunk; ``classes`` is required on the first call. Only for
        ``loss="squared"`` (the logistic loss needs every row at every Newton step).

        A chunk that fails validation leaves the fitted state exactly as it was.
        """
        self._check_loss()  # loss="squared" and alpha != "loo" are ensured by available_if
        first = not hasattr(self, "_ne")
        if first and hasattr(self, "coef_"):
            raise ValueError(
                "this model was loaded from a file or fitted without statistics; partial_fit "
                "needs the statistics of the earlier chunks: refit with fit or partial_fit"
            )
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit")
            classes = np.unique(np.asarray(classes))
            self._check_classes(classes)
        X, y = validate_data(
            self, _as_numpy(X), _as_numpy(y), dtype=[np.float64, np.float32], reset=first
        )
        y = column_or_1d(y)
        known = classes if first else self.classes_
        unseen = np.setdiff1d(np.unique(y), known)
        if unseen.size:
            raise ValueError(f"labels {unseen.tolist()} are not in classes {known.tolist()}")
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        if first:
            dtype = self._compute_dtype(X.dtype)
            fmap, ls = self._new_map(X, _DTYPES[dtype], sw)
        else:
            fmap = self.feature_map_
        Y = self._one_hot(np.searchsorted(known, y), len(known))
        part = self._stats(fmap, X, Y, sw)
        ne = part if first else self._ne.copy().merge(part)
        U, c, alpha = self._solve(ne, None)
        if first:
            self.compute_dtype_, self.feature_map_, self.classes_ = dtype, fmap, known
            self.lengthscale_ = ls
        self.n_iter_ = 1
        self._set_solution(U, c, alpha)
        self.n_samples_seen_ = int(ne.n)
        self._ne = ne
        return self

    def decision_function(self, X) -> np.ndarray:
        scores = self._decision(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        s = self._decision(X).astype(np.float64)
        if self.loss == "log":
            p = np.exp(s - s.max(1, keepdims=True))
        else:
            p = np.clip(s, 0.0, None)
            p[p.sum(1) <= 0] = 1.0
        return p / p.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        scores = self._decision(X)
        return self.classes_[np.argmax(scores, axis=1)]
