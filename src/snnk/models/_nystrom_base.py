r"""The shared base of the kernel-expansion models ``f(x) = Σ_j β_j k(x, c_j)``.

:class:`NystromRidge` and :class:`KernelRidgeCG` (``snnk.models.nystrom``) differ in their
points and their solver; checks, the kernel, the compute device and prediction in row
blocks are here.

**Devices.** ``device`` (default ``"cpu"``) is where ``fit`` computes: the data, the
centres, every kernel block, the Gram matrix, the factorisations, CG and GCV live there
(the centres' random draw is made from a CPU ``torch.Generator``, so a CUDA fit chooses the
same centres as a CPU fit). Fitted arrays are NumPy (CPU), so a model fitted on a GPU saves,
loads and predicts anywhere. Prediction computes on the input's device for a torch tensor,
on ``device`` for NumPy input when that device exists on this machine, else on the CPU.
NumPy in gives NumPy out; a tensor in gives a tensor out on the input's device.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._utils import check_device, check_positive, check_positive_int
from snnk._utils.blocks import (
    DEPRECATED,
    KERNEL_BLOCK_ELEMENTS,
    default_block_rows,
    resolve_block_rows,
)
from snnk.features.centers import CENTER_METHODS, select_center_indices
from snnk.io import PersistMixin
from snnk.kernels import Kernel, KernelMatrix, resolve_kernel
from snnk.models._base import FLOAT_DTYPES as _DTYPES
from snnk.models._base import (
    as_numpy,
    is_dask,
    refuse_path,
    scale_lengthscale,
    validate_data,
    verbose_cg,
)
from snnk.models._device import as_output, block_elements, fit_device, to_device

#: what to change when CG stops early
_CG_HINT = "raise max_iter (or alpha, or num_centers for a better preconditioner)"


def row_selectors() -> tuple[str, ...]:
    """Centre selectors that choose training rows (``center_indices_`` needs rows), read at
    call time so that a method registered after import counts."""
    return tuple(name for name, spec in CENTER_METHODS.items() if not spec.returns_rows)


_CPU = torch.device("cpu")


def predict_device(device, X) -> torch.device:
    """Where a prediction computes: a tensor's own device, else ``device`` when this machine
    has it, else the CPU (a model fitted on a GPU and loaded elsewhere)."""
    if isinstance(X, torch.Tensor) and X.device.type != "meta":
        return X.device
    try:
        return check_device(device)
    except (TypeError, ValueError):
        return _CPU


class KernelExpansion(RegressorMixin, PersistMixin, BaseEstimator):
    """Shared machinery of models ``f(x) = Σ_j β_j k(x, c_j)``: checks, kernel, device,
    prediction."""

    _persist_private = ("_y_1d",)

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | None = 1.0,
        num_centers: int = 1000,
        alpha: float = 1e-3,
        center_selection: str = "uniform",
        max_iter: int = 100,
        tol: float = 1e-6,
        dtype: str | None = None,
        block_rows: int | None = None,
        random_state=None,
        verbose: bool = False,
        batch_size: int | str | None = DEPRECATED,
        device: str | torch.device | None = "cpu",
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.num_centers = num_centers
        self.alpha = alpha
        self.center_selection = center_selection
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.block_rows = block_rows
        self.random_state = random_state
        self.verbose = verbose
        self.batch_size = batch_size
        self.device = device

    # -- checks -----------------------------------------------------------------------------------
    #: string values ``alpha`` may take besides a positive number
    _alpha_options: tuple[str, ...] = ()

    def _check_params(self) -> None:
        """Check every hyper-parameter but ``device`` (a file saved from a GPU fit loads on a
        machine without one: the device is checked when fitting, :meth:`_fit_device`)."""
        check_positive_int(self.num_centers, "num_centers")
        check_positive_int(self.max_iter, "max_iter")
        if isinstance(self.alpha, str):
            if self.alpha not in self._alpha_options:
                options = " or ".join([*map(repr, self._alpha_options), "a positive number"])
                raise ValueError(f"alpha must be {options}, got {self.alpha!r}")
        else:
            check_positive(self.alpha, "alpha")
        if isinstance(self.lengthscale, str) and self.lengthscale != "scale":
            raise ValueError(
                f"lengthscale must be a positive number, 'scale' or None, got {self.lengthscale!r}"
            )
        check_positive(self.tol, "tol", allow_zero=True)
        resolve_block_rows(self.block_rows, self.batch_size, owner=type(self).__name__)
        if self.center_selection not in (rows := row_selectors()):
            raise ValueError(
                f"center_selection must be one of {list(rows)} (centres chosen among "
                f"the distinct training rows), got {self.center_selection!r}"
            )
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be None (follow the input), 'float32' or 'float64', got {self.dtype!r}"
            )

    def _fit_device(self) -> torch.device:
        """Check every hyper-parameter (``device`` first); returns the fit device."""
        device = fit_device(self)
        self._check_params()
        return device

    def _compute_dtype(self, input_dtype) -> torch.dtype:
        if self.dtype is not None:
            return _DTYPES[self.dtype]
        return torch.float32 if input_dtype in (np.float32, torch.float32) else torch.float64

    def _validate_fit(self, X, y, sample_weight):
        """``(X, Y, sw, dtype, device)``: validated NumPy arrays (``Y`` 2-D float64), the
        compute dtype and the checked device; sets ``kernel_`` and ``lengthscale_``."""
        device = self._fit_device()
        refuse_path(X, type(self).__name__)
        X, y = validate_data(
            self,
            as_numpy(X),
            as_numpy(y),
            dtype=[np.float64, np.float32],
            y_numeric=True,
            multi_output=True,
        )
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        Y = y.reshape(-1, 1) if self._y_1d else y
        sw = None
        if sample_weight is not None:
            sw = _check_sample_weight(
                as_numpy(sample_weight), X, dtype=np.float64, ensure_non_negative=True
            )
        self._set_kernel(lambda: scale_lengthscale(X, sw))
        return X, Y, sw, self._compute_dtype(X.dtype), device

    def _set_kernel(self, scale) -> None:
        """``kernel_`` and ``lengthscale_``; ``scale()`` gives ``lengthscale="scale"``'s value."""
        ls = self.lengthscale
        if isinstance(ls, str):  # "scale": ℓ² = d·Var(X)/2, as the random-feature models
            ls = None if isinstance(self.kernel, Kernel) else scale()
        self.kernel_ = resolve_kernel(self.kernel, ls)
        self.lengthscale_ = getattr(self.kernel_, "lengthscale", None)

    def _center_indices(self, X: torch.Tensor | np.ndarray, sw: np.ndarray | None) -> np.ndarray:
        """Sorted row numbers of ``min(num_centers, #distinct)`` distinct rows of positive
        weight (:func:`snnk.features.select_center_indices` with ``distinct=True``), chosen
        on ``X``'s device."""
        idx = select_center_indices(
            X,
            self.num_centers,
            method=self.center_selection,
            sample_weight=sw,
            random_state=self.random_state,
            kernel=self.kernel_,
            distinct=True,
        )
        return np.sort(idx.cpu().numpy()).astype(np.int64)

    def _rows(self, columns: int, device: torch.device = _CPU, dtype=torch.float64) -> int:
        """Rows per kernel block of ``columns`` columns: ``block_rows``, else the kernel
        block budget (a share of the free memory on a CUDA device)."""
        rows = resolve_block_rows(self.block_rows, self.batch_size, warn=False)
        if rows is not None:
            return rows
        itemsize = torch.finfo(dtype).bits // 8
        return default_block_rows(columns, block_elements(device, KERNEL_BLOCK_ELEMENTS, itemsize))

    def _solve_cg(self, matvec, rhs: torch.Tensor, precond, desc: str, stacklevel: int = 3):
        """:func:`snnk.models._base.verbose_cg` with this model's settings (warnings
        attributed ``stacklevel`` frames up: the caller of ``fit``); sets ``n_iter_``."""
        X, self.n_iter_ = verbose_cg(
            self, matvec, rhs, precond, desc, stacklevel=stacklevel + 1, hint=_CG_HINT
        )
        return X

    # -- prediction ---------------------------------------------------------------------------
    def _expansion(self) -> tuple[np.ndarray, np.ndarray]:
        """``(points, coefficients)`` of the fitted expansion; each subclass defines it."""
        raise NotImplementedError

    def predict(self, X):
        """Predict ``f(x) = Σ_j β_j k(x, c_j)`` in row blocks (never the full kernel matrix).

        Returns the model's compute dtype (float32 stays float32), shape ``(n,)`` or
        ``(n, n_outputs)`` like the ``y`` it was fitted on: a NumPy array for NumPy input, a
        tensor on the input's device for a tensor, a lazy Dask array for a Dask array or
        data frame (one task per row chunk).
        """
        check_is_fitted(self)
        if is_dask(X):
            return self._predict_dask(X)
        device = predict_device(self.device, X)
        like = X
        X = validate_data(self, as_numpy(X), reset=False, dtype=[np.float64, np.float32])
        points, coef = self._expansion()
        C = to_device(points, device)
        Xt = to_device(X, device, C.dtype)
        K = KernelMatrix(self.kernel_, Xt, C, block_rows=self._rows(C.shape[0], device, C.dtype))
        out = K @ to_device(coef, device, C.dtype)
        intercept = getattr(self, "intercept_", None)
        if intercept is not None:
            out += to_device(np.asarray(intercept), device, out.dtype)
        return as_output(out[:, 0] if self._y_1d else out, like)

    def _predict_dask(self, X):
        from snnk.models._dask_kernel import map_rows

        points, coef = self._expansion()
        return map_rows(self.predict, X, None if self._y_1d else coef.shape[1], points.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.target_tags.multi_output = True
        return tags
