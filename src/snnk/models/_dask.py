"""Fitting on a Dask array: per-chunk statistics on the cluster, summed by a tree reduction.

No dask-ml: each chunk of rows becomes one task that validates it and returns its
:class:`~snnk.solvers.NormalEquations` (``D x D`` and ``D x o``, whatever the rows); the
tasks are merged eight at a time. The data moments that standardise inputs (``lengthscale=
"scale"``, the bundled models' scaling) are computed over the whole array in one more cheap
pass, so a Dask fit equals the in-memory fit.

The logistic loss reads the rows once per gradient and per Hessian-vector product:
:class:`DaskRowSums` is the solver's :class:`~snnk.solvers.RowSums` on a cluster, each pass
one map-reduce of a per-block term over the chunks (the chunks' features persisted on the
workers while they fit the cache budget, recomputed from the rows otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from snnk._utils.blocks import CACHE_ELEMENTS
from snnk.models._base import Moments
from snnk.solvers import NormalEquations

try:
    from sklearn.utils import check_array
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

#: tasks merged per node of the reduction tree
FAN_IN = 8


def frame_values(X, name: str = "X"):
    """A Dask data frame's values as a Dask array (other input unchanged), after checking
    from its metadata (no compute) that every column is numeric: a text column would
    otherwise fail deep inside a task with NumPy's conversion message."""
    if not hasattr(X, "to_dask_array"):
        return X
    dtypes = getattr(X, "dtypes", None)
    if dtypes is not None and getattr(X, "ndim", 2) == 2:
        bad = [str(c) for c, t in dtypes.items() if t.kind not in "biuf"]
        if bad:
            raise TypeError(
                f"{name} has non-numeric columns {bad[:5]}{' ...' if len(bad) > 5 else ''}; "
                "encode them first (e.g. one-hot with dask_ml.preprocessing or "
                "`dd.get_dummies` after `categorize()`) or drop them with "
                "`select_dtypes('number')`"
            )
    return X.to_dask_array(lengths=True)


def dask_inputs(X, y, sample_weight):
    """``(X, y, w)`` as Dask arrays with aligned row chunks (``X``: all columns per chunk,
    float32 kept, other dtypes as float64). A Dask data frame is taken as its values."""
    import dask.array as da

    X = frame_values(X)
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


def check_chunk_weights(w, rows: int) -> np.ndarray | None:
    """One chunk of ``sample_weight`` as finite, non-negative float64 ``(rows,)`` (or None),
    checked on the worker as in memory."""
    if w is None:
        return None
    w = check_array(
        np.asarray(w, dtype=np.float64),
        ensure_2d=False,
        ensure_min_samples=0,
        input_name="sample_weight",
    ).reshape(rows)
    if (w < 0).any():
        raise ValueError("sample_weight has negative entries; weights must be >= 0")
    return w


def _chunk_normal_equations(est, X, y, w, targets: Callable[[Any], np.ndarray]):
    """Task run on a Dask worker: validate one chunk and return its normal equations."""
    X = check_array(X, dtype=[np.float64, np.float32])
    Y = targets(y)
    w = check_chunk_weights(w, X.shape[0])
    return est._stats(X, Y, w).to("cpu")  # a client without the workers' device reads it


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


def _chunk_rows(est, X, y, w, targets: Callable[[Any], np.ndarray], features: bool):
    """Task: one chunk as ``(blocks, Y, w)`` tensors on the model's device, ``blocks`` the
    chunk's feature blocks (``features=True``: computed once, kept while persisted) or its
    validated rows (features recomputed per pass)."""
    X = check_array(X, dtype=[np.float64, np.float32])
    dev = est._compute_device
    Y = torch.from_numpy(np.ascontiguousarray(targets(y), dtype=np.float64)).to(dev)
    if w is None:
        w = torch.ones(X.shape[0], dtype=torch.float64, device=dev)
    else:
        w = torch.from_numpy(check_chunk_weights(w, X.shape[0]).copy()).to(dev)
    if features:
        return [(F, rows) for F, rows in est._feature_blocks(X)], Y, w
    return X, Y, w


def _chunk_term(est, chunk, fn, args) -> tuple[torch.Tensor, ...] | None:
    """Task: ``Σ fn(F, Y, w, {}, *args)`` over the feature blocks of one chunk (returned on
    the CPU; ``None`` for a chunk without rows)."""
    blocks, Y, w = chunk
    dev = est._compute_device
    args = tuple(a.to(dev) if torch.is_tensor(a) else a for a in args)
    if isinstance(blocks, np.ndarray):
        blocks = est._feature_blocks(blocks)
    total = None
    for F, rows in blocks:
        part = fn(F, Y[rows], w[rows], {}, *args)
        total = list(part) if total is None else [a + b for a, b in zip(total, part, strict=True)]
    return None if total is None else tuple(t.to("cpu") for t in total)


def _add_terms(*parts):
    parts = [p for p in parts if p is not None]
    return tuple(sum(col[1:], col[0]) for col in zip(*parts, strict=True)) if parts else None


def _cat_terms(*parts):
    parts = [p for p in parts if p is not None]
    return tuple(torch.cat(col) for col in zip(*parts, strict=True)) if parts else None


class DaskRowSums:
    """:class:`~snnk.solvers.RowSums` of a Dask fit: the solver's per-block terms summed over
    the chunks on the cluster (fan-in :data:`FAN_IN` tree), each call one pass.

    ``est`` holds the fitted feature map; ``X``, ``y``, ``w`` are :func:`dask_inputs`' aligned
    arrays and ``targets`` maps a ``y`` chunk to float64 one-hot rows. The chunks' features
    are persisted on the workers when all of them fit ``CACHE_ELEMENTS`` numbers (the
    in-memory fit's rule); otherwise every pass recomputes them from the rows. A lost worker
    loses only persisted chunks, which Dask recomputes from the rows: the result does not
    change. Sums come back to the client on the CPU and move to the model's device.
    """

    def __init__(self, est, X, y, w, targets: Callable[[Any], np.ndarray]):
        import dask

        self.device = est._compute_device
        cache = X.shape[0] * est.num_features <= CACHE_ELEMENTS
        (self.model,) = dask.persist(dask.delayed(est, pure=True))
        xs, ys = X.to_delayed().ravel(), y.to_delayed().ravel()
        ws = [None] * len(xs) if w is None else list(w.to_delayed().ravel())
        task = dask.delayed(_chunk_rows, pure=True)
        chunks = [task(self.model, *c, targets, cache) for c in zip(xs, ys, ws, strict=True)]
        if not chunks:
            raise ValueError("the Dask array has no chunks")
        self.chunks = list(dask.persist(*chunks)) if cache else chunks

    def _reduce(self, fn, args, combine):
        import dask

        term = dask.delayed(_chunk_term, pure=True)
        parts = [term(self.model, c, fn, args) for c in self.chunks]
        merge = dask.delayed(combine, pure=True)
        while len(parts) > 1:
            parts = [merge(*parts[i : i + FAN_IN]) for i in range(0, len(parts), FAN_IN)]
        (out,) = dask.compute(parts[0])
        if out is None:
            raise ValueError("the Dask array has no rows")
        return tuple(t.to(self.device) for t in out)

    def map_sum(self, fn, *args) -> tuple[torch.Tensor, ...]:
        """``Σ_blocks fn(F, Y, w, {}, *args)`` over every chunk (one pass on the cluster)."""
        return self._reduce(fn, _to_cpu(args), _add_terms)

    def map_cat(self, fn, *args) -> tuple[torch.Tensor, ...]:
        """``fn(F, Y, w, {}, *args)`` of every block, concatenated in row order."""
        return self._reduce(fn, _to_cpu(args), _cat_terms)


def _to_cpu(args: tuple) -> tuple:
    """Tensors as CPU copies (what a task ships to a worker; moved to its device there)."""
    return tuple(a.cpu() if torch.is_tensor(a) else a for a in args)
