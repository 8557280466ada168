"""Pieces shared by the scikit-learn estimators: the dtype table, parameter constraints,
seeds that leave the global RNGs alone, progress bars, input kinds, chunk validation and
pooled data moments.

Every estimator of :mod:`snnk.models` (the Gaussian process included) can use these:
``FLOAT_DTYPES`` / :func:`compute_dtype_name` for ``dtype=``, ``seed_from_random_state``
(re-exported from ``snnk._utils.random``) for ``random_state=``, :func:`progress` for
``verbose=``, and the constraint fragments for scikit-learn's ``_parameter_constraints``
(checked by ``BaseEstimator._validate_params``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

try:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_array
    from sklearn.utils._param_validation import Hidden, Interval, StrOptions
    from sklearn.utils.validation import _check_sample_weight
    from sklearn.utils.validation import validate_data as _sklearn_validate_data
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._utils.random import seed_from_random_state
from snnk._utils.tabular import iter_table
from snnk._utils.validation import as_numpy
from snnk.solvers import conjugate_gradient

#: the floating dtypes an estimator computes in, by the names its ``dtype=`` takes
FLOAT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

#: constraint fragments for scikit-learn's ``_parameter_constraints``
POSITIVE_INT = Interval(Integral, 1, None, closed="left")
NON_NEGATIVE = Interval(Real, 0, None, closed="left")
POSITIVE = Interval(Real, 0, None, closed="neither")
DTYPE_OPTIONS = StrOptions(set(FLOAT_DTYPES))
#: the value of a deprecated alias parameter that was not given
DEPRECATED = "deprecated"
DEPRECATED_OPTION = Hidden(StrOptions({DEPRECATED}))

ChunkSource = Iterator[tuple[Any, Any, Any]]

__all__ = [
    "DEPRECATED",
    "DEPRECATED_OPTION",
    "DTYPE_OPTIONS",
    "FLOAT_DTYPES",
    "NON_NEGATIVE",
    "POSITIVE",
    "POSITIVE_INT",
    "Moments",
    "StrOptions",
    "as_numpy",
    "check_chunk",
    "compute_dtype_name",
    "is_dask",
    "is_path",
    "is_stream",
    "iter_source",
    "pooled_moments",
    "progress",
    "scale_lengthscale",
    "seed_from_random_state",
    "text_refused",
    "validate_data",
]


def compute_dtype_name(dtype: str | None, input_dtype: np.dtype | torch.dtype) -> str:
    """The name of the dtype to compute in: ``dtype`` when given, else the input's
    (``"float32"`` for float32 input, ``"float64"`` otherwise)."""
    if dtype is not None:
        return dtype
    return "float32" if input_dtype in (np.float32, torch.float32) else "float64"


def _entry_variance(X: np.ndarray, sw=None) -> float:
    """The variance of all entries of ``X`` (rows weighted like repetitions by ``sw``)."""
    if sw is None:
        return float(np.var(X))
    w = np.asarray(sw, dtype=np.float64) / max(float(np.sum(sw)), 1e-300)
    mean = float(w @ X.mean(1))
    return float(w @ np.square(X - mean).mean(1))


def scale_lengthscale(X: np.ndarray, sw=None, moments: Moments | None = None) -> float:
    r"""``lengthscale="scale"``: ``ℓ = √(d·Var(X)/2)``, i.e. ``γ = 1/(2ℓ²) = 1/(d·Var(X))``,
    scikit-learn's ``gamma="scale"`` of ``SVC``; the one rule of every estimator's
    ``"scale"`` (random features, Nyström).

    ``Var(X)`` is over all entries of ``X`` (``(n, d)``; rows weighted by ``sw``), or from
    ``moments`` pooled over the whole data. Squares that overflow (``|X| ≳ 1e155``) or
    underflow are avoided by measuring in units of ``max|X|``; constant data gives 1.
    """
    d = X.shape[1]
    if moments is not None:
        var = moments.entry_variance()
    elif not X.size:
        var = 0.0
    else:
        with np.errstate(over="ignore", under="ignore"):
            var = _entry_variance(X, sw)
        if not (math.isfinite(var) and var > 0):
            top = float(np.max(np.abs(X)))
            if 0.0 < top < math.inf and (vs := _entry_variance(X / top, sw)) > 0:
                return top * math.sqrt(d * vs / 2.0)
            var = 0.0
    return math.sqrt(d * var / 2.0) if var > 0 else 1.0


def verbose_cg(
    est: Any, matvec, rhs: torch.Tensor, precond, desc: str, *, stacklevel: int, hint: str
) -> tuple[torch.Tensor, int]:
    """:func:`snnk.solvers.conjugate_gradient` with ``est.tol`` and ``est.max_iter``, a
    progress bar when ``est.verbose``, and a ``ConvergenceWarning`` (ending with ``hint``,
    attributed ``stacklevel`` frames up) when it stops before ``tol``. Returns
    ``(solution, iterations)``."""
    bar = None
    if est.verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=est.max_iter, desc=desc)

    def callback(it: int, rel: torch.Tensor) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(residual=f"{float(rel.max()):.1e}")

    try:
        X, info = conjugate_gradient(
            matvec, rhs, precond=precond, tol=est.tol, max_iter=est.max_iter, callback=callback
        )
    finally:
        if bar is not None:
            bar.close()
    rel = float(info.residuals.max())
    if rel > est.tol:
        warnings.warn(
            f"{type(est).__name__}: conjugate gradients stopped after {est.max_iter} "
            f"iterations at relative residual {rel:.1e} > tol={est.tol:g}; {hint}",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
    return X, info.n_iter


def progress(it: Iterable, verbose: bool, total: int | None = None, desc: str = "") -> Iterable:
    """``it`` wrapped in a ``tqdm`` progress bar when ``verbose``, else ``it`` unchanged."""
    if not verbose:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc)


def is_dask(x: Any) -> bool:
    """A Dask collection (array or data frame)."""
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "__dask_graph__")


def is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def refuse_path(X: Any, owner: str) -> None:
    """Raise a clear error when a file path (or an array of text) is passed to an estimator
    that fits numeric arrays only."""
    if is_path(X):
        raise TypeError(
            f"X is a file path ({str(X)!r}), but {owner} fits in-memory arrays only: load the "
            "file first (e.g. snnk._utils.tabular or pandas) or use RandomFeatureRidge / "
            "BundledRegressor, which stream CSV and Parquet files"
        )
    if (isinstance(X, np.ndarray) and X.dtype.kind in "USO") or isinstance(X, list | tuple):
        problem = _text_problem(X)
        if problem is not None:
            raise _text_error("X", problem) from problem


def _text_error(name: str, exc: ValueError) -> TypeError:
    return TypeError(
        f"{name} holds text that is not a number ({exc}): snnk estimators fit numbers. Encode "
        f"text columns first (e.g. sklearn.preprocessing.OneHotEncoder or OrdinalEncoder), "
        f"or convert numbers stored as text with {name}.astype(np.float64)"
    )


@contextmanager
def text_refused(name: str) -> Iterator[None]:
    """Within the block, NumPy's "could not convert string to float" becomes a ``TypeError``
    naming the argument ``name`` and the fix."""
    try:
        yield
    except ValueError as exc:
        if "could not convert" not in str(exc):
            raise
        raise _text_error(name, exc) from exc


def _text_problem(x: Any) -> ValueError | None:
    """NumPy's error converting ``x`` to float64 when it holds text, else ``None``."""
    try:
        np.asarray(as_numpy(x), dtype=np.float64)
    except ValueError as exc:
        return exc if "could not convert" in str(exc) else None
    except TypeError:
        return None
    return None


def validate_data(estimator: Any, X: Any = "no_validation", y: Any = "no_validation", **kw):
    """scikit-learn's ``validate_data`` (its messages are the estimator contract), except that
    text arrays get a ``TypeError`` naming ``X`` (or ``y``) and what to pass instead, where
    NumPy's raw "could not convert string to float" would escape."""
    try:
        return _sklearn_validate_data(estimator, X, y, **kw)
    except ValueError as exc:
        if "could not convert" not in str(exc):
            raise
        name = "X" if not isinstance(X, str) and _text_problem(X) is not None else "y"
        raise _text_error(name, exc) from exc


def is_stream(X: Any, y: Any) -> bool:
    """``X`` is a file path, or an iterable of ``(X, y[, w])`` chunks given with ``y=None``."""
    if is_path(X):
        return True
    if y is not None or isinstance(X, np.ndarray | torch.Tensor):
        return False
    return isinstance(X, Iterable) and not hasattr(X, "__array__") and not hasattr(X, "shape")


class Moments:
    r"""Weighted per-column mean and variance, pooled over chunks (Chan et al.'s update).

    After chunks ``X_c`` with row weights ``w_c``: ``weight = Σw``, ``mean = Σ w x / Σw``
    and ``var = Σ w (x − mean)² / Σw`` per column (shape ``(d,)``), exact up to rounding
    whatever the chunking, so a streamed fit standardises like the one-shot fit.
    """

    def __init__(self, num_columns: int):
        self.weight = 0.0
        self.mean = np.zeros(num_columns)
        self.m2 = np.zeros(num_columns)

    def update(self, X: np.ndarray, w: np.ndarray | None = None) -> Moments:
        """Add the rows of ``X`` (shape ``(n, d)``) with weights ``w`` (``(n,)``, or ones)."""
        w = np.ones(X.shape[0]) if w is None else np.asarray(w, dtype=np.float64)
        W = float(w.sum())
        if not X.size or W <= 0:
            return self
        mc = (w @ X) / W
        m2c = w @ np.square(X - mc)
        delta, total = mc - self.mean, self.weight + W
        self.mean = self.mean + delta * (W / total)
        self.m2 = self.m2 + m2c + np.square(delta) * (self.weight * W / total)
        self.weight = total
        return self

    @property
    def var(self) -> np.ndarray:
        """Per-column weighted variance (zeros before any weight)."""
        return self.m2 / self.weight if self.weight > 0 else np.zeros_like(self.m2)

    def entry_variance(self) -> float:
        """The variance of all entries of the data (every entry of a row weighted by the
        row's weight): ``mean_j(var_j + (mean_j − m)²)`` with ``m`` the mean of all entries."""
        if self.weight <= 0:
            return 0.0
        m = float(self.mean.mean())
        return float(np.mean(self.var + np.square(self.mean - m)))


def check_chunk(n_features: int | None, i: int, X: Any, y: Any, w: Any):
    """Validate chunk ``i`` of a stream: float arrays ``(X, y, w)`` (``w`` float64 or
    ``None``); ``X`` must have ``n_features`` columns when given."""
    with text_refused(f"chunk {i} X"):
        X = check_array(as_numpy(X), dtype=[np.float64, np.float32], input_name=f"chunk {i} X")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"chunk {i} has {X.shape[1]} feature columns but the earlier chunks have "
            f"{n_features}; every chunk must have the same columns"
        )
    y = np.asarray(as_numpy(y))
    if y.shape[0] != X.shape[0]:
        raise ValueError(
            f"chunk {i}: X has {X.shape[0]} rows but y has {y.shape[0]}; they must match"
        )
    if w is not None:
        w = _check_sample_weight(as_numpy(w), X, dtype=np.float64, ensure_non_negative=True)
    return X, y, w


def _file_source(est: Any, path, y, sample_weight, chunk_rows: int, categorical: str):
    if not isinstance(y, str) and not (
        isinstance(y, list | tuple) and all(isinstance(c, str) for c in y)
    ):
        raise ValueError(
            f"fitting the file {str(path)!r} needs y = the name of the target column, got {y!r}"
        )
    weight_col = sample_weight if isinstance(sample_weight, str) else None
    if sample_weight is not None and weight_col is None:
        raise ValueError("with a file, sample_weight must be a column name")
    targets = [y] if isinstance(y, str) else list(y)
    targets = [*targets, weight_col] if weight_col else targets

    def read() -> ChunkSource:
        for Xc, Yc, names in iter_table(
            path, targets, chunk_rows=chunk_rows, categorical=categorical
        ):
            if not hasattr(est, "feature_names_in_"):
                est.feature_names_in_ = np.asarray(names, dtype=object)
            Yc = Yc if Yc.ndim == 1 or Yc.shape[1] > 1 else Yc[:, 0]
            if weight_col:
                yield Xc, (Yc[:, :-1] if Yc.shape[1] > 2 else Yc[:, 0]), Yc[:, -1]
            else:
                yield Xc, Yc, None

    return read(), read


def iter_source(
    est: Any, X: Any, y: Any, sample_weight: Any, chunk_rows: int, categorical: str
) -> tuple[ChunkSource, Callable[[], ChunkSource] | None]:
    """``(chunks, again)``: an iterator of raw ``(X, y, w)`` chunks of a file or an iterable
    and, for sources that can be read again (files, lists), a function that restarts it
    (``None`` for a one-shot iterator). A file sets ``est.feature_names_in_``."""
    if is_path(X):
        return _file_source(est, X, y, sample_weight, chunk_rows, categorical)
    if y is not None:
        raise TypeError(
            "y was given with an iterable of chunks: pass either arrays X and y, or one "
            "iterable of (X, y) or (X, y, sample_weight) tuples with y=None"
        )

    def items(source=X) -> ChunkSource:
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


def pooled_moments(again: Callable[[], ChunkSource]) -> Moments | None:
    """:class:`Moments` of every row of a source that can be read again (one extra pass);
    ``None`` when it has no rows."""
    moments = None
    n_features = None
    for i, (Xc, yc, wc) in enumerate(again()):
        Xc, _, wc = check_chunk(n_features, i, Xc, yc, wc)
        n_features = Xc.shape[1]
        moments = (moments or Moments(n_features)).update(Xc, wc)
    return moments
