r""":class:`~snnk.models.NystromRidge` on a Dask array or data frame: one tree-reduced pass.

The direct solver needs the rows only through sums (:class:`NystromStatistics`:
``K_nMᵀWK_nM``, ``K_nMᵀWY``, ``K_nMᵀw``, ``Σwy``, ``Σwy²``, ``Σw``), so each chunk of rows
becomes one task that validates it and returns its statistics (``M x M`` whatever the rows);
the tasks are merged :data:`~snnk.models._dask.FAN_IN` at a time, and the ``M x M`` solve
(and GCV) runs on the client, on ``device``. The data never leave the workers except for
the centre pool below.

**Centres.** ``center_selection`` runs on a *pool* of rows gathered from the array: all rows
when there are at most :func:`center_pool_rows` (``max(20 M, 20,000)``; then the centres, and
so the fit, are exactly those of the in-memory fit), else a seeded uniform sample of that
many rows (without replacement). Every selector works on the pool; ``"uniform"`` on a
uniform sample is a uniform draw of rows (a row repeated ``k`` times is ``k`` times as
likely to be in the pool, where the in-memory draw is uniform over *distinct* rows), the
data-dependent ones (``"kmeans++"``, ``"rls"``, ...) see the pool only. ``lengthscale=
"scale"`` takes ``Var(X)`` over the whole array (one more pass of per-column moments).

Reads of the data: the pool (one gather of ``min(n, pool)`` rows), the moments for
``lengthscale="scale"`` (one pass), the statistics (one pass).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

try:
    from sklearn.utils import check_array
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._utils.random import seed_from_random_state
from snnk.kernels import KernelMatrix
from snnk.models._base import scale_lengthscale
from snnk.models._dask import (
    FAN_IN,
    check_chunk_weights,
    dask_inputs,
    dask_moments,
    frame_values,
)
from snnk.models._device import to_device
from snnk.solvers import NystromFactor
from snnk.solvers.nystrom_direct import (
    NystromStatistics,
    nystrom_statistics,
    solve_nystrom_statistics,
)

#: the centre pool holds ``max(POOL_FACTOR * M, POOL_MIN)`` rows
POOL_FACTOR = 20
POOL_MIN = 20_000

F64 = torch.float64


def center_pool_rows(num_centers: int) -> int:
    """Rows of the pool the centres are chosen from on a Dask array (see the module)."""
    return max(POOL_FACTOR * int(num_centers), POOL_MIN)


def _check_targets(y, rows: int, y_1d: bool) -> np.ndarray:
    """One chunk of ``y`` as a finite float64 ``(rows, o)`` array."""
    try:
        Y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y must be numeric for a regressor: {exc}") from None
    Y = check_array(Y, ensure_2d=False, ensure_min_samples=0, input_name="y")
    return Y.reshape(-1, 1) if y_1d else Y  # (an empty chunk has rows = 0)


def _chunk_statistics(spec: dict, X, y, w) -> NystromStatistics:
    """Task run on a Dask worker: validate one chunk and return its statistics (on the CPU)."""
    X = check_array(X, dtype=[np.float64, np.float32], ensure_min_samples=0)
    rows = X.shape[0]
    Y = _check_targets(y, rows, spec["y_1d"])
    w = check_chunk_weights(w, rows)
    device, dt = spec["device"], spec["dtype"]
    C = spec["centers"].to(device)
    Xt = to_device(X, device, dt)
    K = KernelMatrix(spec["kernel"], Xt, C, block_rows=spec["block_rows"])
    wt = None if w is None else to_device(w, device)
    stats = nystrom_statistics(K.blocks(F64), to_device(Y, device), wt, C.shape[0])
    return stats.to("cpu")


def _merge(*parts: NystromStatistics) -> NystromStatistics:
    m, o = parts[0].G.shape[0], parts[0].B.shape[1]
    total = NystromStatistics.zeros(m, o)
    for p in parts:
        total.merge(p)
    return total


def _tree_statistics(spec: dict, X, y, w) -> NystromStatistics:
    """The statistics of all rows: one task per chunk, merged by a tree reduction."""
    import dask

    xs = X.to_delayed().ravel()
    ys = y.to_delayed().ravel()
    ws = [None] * len(xs) if w is None else list(w.to_delayed().ravel())
    task = dask.delayed(_chunk_statistics, pure=True)
    shared = dask.delayed(spec, pure=True)
    parts = [task(shared, xb, yb, wb) for xb, yb, wb in zip(xs, ys, ws, strict=True)]
    merge = dask.delayed(_merge, pure=True)
    while len(parts) > 1:
        parts = [merge(*parts[i : i + FAN_IN]) for i in range(0, len(parts), FAN_IN)]
    (stats,) = dask.compute(parts[0])
    return stats


def _pool(est, X, w) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(rows, X[rows], w[rows])``: the rows the centres are chosen from (all rows up to
    :func:`center_pool_rows`, else a seeded uniform sample), in row order, validated."""
    import dask

    n = X.shape[0]
    size = center_pool_rows(est.num_centers)
    if n <= size:
        rows = np.arange(n)
        Xp, wp = dask.compute(X, w)
    else:
        rng = np.random.default_rng(seed_from_random_state(est.random_state))
        rows = np.sort(rng.choice(n, size=size, replace=False))
        Xp, wp = dask.compute(X[rows], None if w is None else w[rows])
    Xp = check_array(Xp, dtype=[np.float64, np.float32])
    wp = check_chunk_weights(wp, Xp.shape[0])
    return rows, Xp, wp


def _known_rows(a):
    """A Dask array with chunk sizes computed when unknown (e.g. after boolean indexing)."""
    chunks = getattr(a, "chunks", None)
    if (
        chunks is not None
        and not hasattr(a, "to_dask_array")
        and any(math.isnan(c) for c in chunks[0])
    ):
        return a.compute_chunk_sizes()
    return a


def _start(est, X):
    """Known chunk sizes, ``n_features_in_`` (and ``feature_names_in_`` of a data frame)."""
    columns = getattr(X, "columns", None)
    X = _known_rows(frame_values(X))
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D Dask array, got {X.ndim} dimensions")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X has shape {X.shape}: at least one row and one column are needed")
    est.n_features_in_ = int(X.shape[1])
    if columns is not None and all(isinstance(c, str) for c in columns):
        est.feature_names_in_ = np.asarray(list(columns), dtype=object)
    elif hasattr(est, "feature_names_in_"):
        del est.feature_names_in_
    return X


def fit_nystrom_dask(est, X, y, sample_weight):
    """Fit ``est`` (a :class:`~snnk.models.NystromRidge`) on a Dask ``X`` (see the module)."""
    device = est._fit_device()
    est._check_solver()
    if est.solver == "cg":
        raise ValueError(
            "solver='cg' on a Dask array would read the data at every CG iteration; use "
            "solver='direct' (or 'auto'): one tree-reduced pass"
        )
    if y is None:
        raise ValueError("a Dask X needs a Dask (or NumPy) y of the same rows")
    Xd, yd, wd = dask_inputs(_start(est, X), _known_rows(y), _known_rows(sample_weight))
    est._y_1d = yd.ndim == 1
    est._set_kernel(lambda: scale_lengthscale(Xd, moments=dask_moments(Xd, wd)))
    dt = est._compute_dtype(Xd.dtype)
    rows, Xp, wp = _pool(est, Xd, wd)
    Xin = to_device(Xp, device)  # centres are chosen on the data as given (then cast)
    Xpt = Xin.to(dt)
    idx = est._center_indices(Xin, wp)
    C = Xpt[torch.from_numpy(idx).to(device)].contiguous()
    m = C.shape[0]
    spec = {
        "kernel": est.kernel_,
        "centers": C.cpu(),
        "dtype": dt,
        "device": device,
        "block_rows": est._rows(m, device, dt),
        "y_1d": est._y_1d,
    }
    stats = _tree_statistics(spec, Xd, yd, wd).to(device)
    factor = NystromFactor(est.kernel_(C, C).double(), name="K_MM")
    sol = solve_nystrom_statistics(
        stats,
        factor,
        "gcv" if est.alpha == "gcv" else float(est.alpha),
        fit_intercept=est.fit_intercept,
    )
    est._set_solution(sol)
    est.solver_, est.n_iter_ = "direct", 1
    est.centers_ = C.cpu().numpy().copy()
    est.center_indices_ = rows[idx]
    est.dual_coef_ = sol.beta.cpu().numpy().copy()
    return est


def map_rows(fn, X, width: int | None, dtype=None):
    """``fn`` (an estimator's ``predict`` / ``transform`` of NumPy rows) of every row chunk
    of a Dask array or data frame, lazily: a Dask array of ``width`` columns (1-D for
    ``None``) of ``dtype`` (``None``: float32 for float32 input, else float64). A data
    frame's chunks reach ``fn`` as data frames, so fitted feature names are checked as in
    memory."""
    frame = hasattr(X, "to_dask_array")
    X = frame_values(X).rechunk({1: -1})
    if dtype is None:
        dtype = np.float32 if X.dtype == np.float32 else np.float64
    names = getattr(fn.__self__, "feature_names_in_", None) if frame else None
    if names is not None:
        fn = partial(_on_frame, fn, list(names))
    if width is None:
        return X.map_blocks(fn, dtype=dtype, drop_axis=1)
    return X.map_blocks(fn, dtype=dtype, chunks=(X.chunks[0], (width,)))


def _on_frame(fn, columns: list[str], block: np.ndarray):
    import pandas as pd

    return fn(pd.DataFrame(block, columns=columns))
