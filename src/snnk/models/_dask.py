"""Fitting on a Dask array: per-chunk statistics on the cluster, summed by a tree reduction.

No dask-ml: each chunk of rows becomes one task that validates it and returns its
:class:`~snnk.solvers.NormalEquations` (``D x D`` and ``D x o``, whatever the rows); the
tasks are merged eight at a time. The data moments that standardise inputs (``lengthscale=
"scale"``, the bundled models' scaling) are computed over the whole array in one more cheap
pass, so a Dask fit equals the in-memory fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from snnk.models._base import Moments
from snnk.solvers import NormalEquations

try:
    from sklearn.utils import check_array
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

#: tasks merged per node of the reduction tree
FAN_IN = 8


def dask_inputs(X, y, sample_weight):
    """``(X, y, w)`` as Dask arrays with aligned row chunks (``X``: all columns per chunk,
    float32 kept, other dtypes as float64). A Dask data frame is taken as its values."""
    import dask.array as da

    if hasattr(X, "to_dask_array"):
        X = X.to_dask_array(lengths=True)
    if hasattr(y, "to_dask_array"):
        y = y.to_dask_array(lengths=True)
    if hasattr(sample_weight, "to_dask_array"):
        sample_weight = sample_weight.to_dask_array(lengths=True)
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


def dask_moments(X, w) -> Moments:
    """Weighted per-column :class:`Moments` of a Dask ``X`` (computed on the cluster)."""
    import dask

    X = X.astype(np.float64)
    w = da_ones(X) if w is None else w.astype(np.float64)
    W = w.sum()
    mean = (w[:, None] * X).sum(0) / W
    m2 = (w[:, None] * (X - mean) ** 2).sum(0)
    W, mean, m2 = dask.compute(W, mean, m2)
    moments = Moments(X.shape[1])
    moments.weight, moments.mean, moments.m2 = float(W), np.asarray(mean), np.asarray(m2)
    return moments


def da_ones(X):
    import dask.array as da

    return da.ones(X.shape[0], chunks=X.chunks[0], dtype=np.float64)


def _chunk_normal_equations(est, X, y, w, targets: Callable[[Any], np.ndarray]):
    """Task run on a Dask worker: validate one chunk and return its normal equations."""
    X = check_array(X, dtype=[np.float64, np.float32])
    Y = targets(y)
    w = None if w is None else np.asarray(w, dtype=np.float64)
    return est._stats(X, Y, w)


def _merge_all(*parts: NormalEquations) -> NormalEquations:
    total = parts[0].copy()
    for p in parts[1:]:
        total.merge(p)
    return total


def dask_normal_equations(est, X, y, w, targets: Callable[[Any], np.ndarray]) -> NormalEquations:
    """The normal equations of all rows: ``est._stats`` per chunk on the cluster (``est``
    holds the fitted feature map), merged by a tree reduction of fan-in :data:`FAN_IN`."""
    import dask

    xs = X.to_delayed().ravel()
    ys = y.to_delayed().ravel()
    ws = [None] * len(xs) if w is None else list(w.to_delayed().ravel())
    task = dask.delayed(_chunk_normal_equations, pure=True)
    model = dask.delayed(est, pure=True)
    parts = [task(model, xb, yb, wb, targets) for xb, yb, wb in zip(xs, ys, ws, strict=True)]
    if not parts:
        raise ValueError("the Dask array has no chunks")
    merge = dask.delayed(_merge_all, pure=True)
    while len(parts) > 1:
        parts = [merge(*parts[i : i + FAN_IN]) for i in range(0, len(parts), FAN_IN)]
    (ne,) = dask.compute(parts[0])
    if ne.n == 0:
        raise ValueError("the Dask array has no rows")
    return ne
