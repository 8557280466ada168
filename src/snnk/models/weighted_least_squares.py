r"""Optimal weighted least squares with DPP and volume-sampling designs (Nouy & Michel).

Given a pool of ``N`` candidate inputs (the rows of ``X``; their empirical measure is ``μ``)
and a basis ``φ_1..φ_M``, the estimator labels only ``n`` rows chosen by a sampling design
and fits

.. math:: \hat f = \arg\min_{v ∈ V_m} \frac1n Σ_{i=1}^n w(x_i)\,(y_i − v(x_i))², \qquad
          w = m / k_m,\; k_m(x) = Σ_j ψ_j(x)²,

where ``ψ = √N U`` is an orthonormal basis of ``V_m = span φ`` in ``L²(μ)`` (``U`` from the SVD
of the pool's feature matrix, ``m = rank``). The designs come from :mod:`snnk.sampling`:
``"iid"`` (``ρ_m = k_m/m``, stable for ``n ≳ m log m``), ``"dpp"`` (one projection DPP,
``n = m``), ``"repeated_dpp"`` (``n/m`` independent DPPs: stable with ``n`` a small multiple
of ``m``) and ``"volume"`` (volume-rescaled sampling: unbiased, finite mean error at
``n = m``). After ``fit`` the stability diagnostic ``stability_ = ‖G − I‖₂`` with
``G = (1/n) Σ w(x_i) ψ(x_i)ψ(x_i)ᵀ`` says whether the fit is quasi-optimal: with
``‖G − I‖₂ ≤ δ < 1``, ``E‖f − \hat f‖² ≤ (1 + (1 − δ)^{-1}) \min_{v ∈ V_m} ‖f − v‖²``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._persist import ArraySpec, PersistMixin, ValueSpec
from snnk._utils.random import make_generator, seed_from_random_state
from snnk.models._base import NON_NEGATIVE, POSITIVE_INT, as_numpy, refuse_path
from snnk.models._device import as_output, fit_device, on_cpu, to_device
from snnk.models._nystrom_base import predict_device
from snnk.sampling import (
    DESIGNS,
    FAMILIES,
    PolynomialBasis,
    gram_deviation,
    optimal_weights,
    orthonormal_basis,
    sample_design,
)
from snnk.solvers import solve_spd

__all__ = ["OptimalWeightedLeastSquares"]

F64 = torch.float64


def _callable_basis(value: Any) -> bool:
    return callable(value) and not isinstance(value, str)


class OptimalWeightedLeastSquares(RegressorMixin, PersistMixin, BaseEstimator):
    r"""Weighted least squares on a basis, from ``n`` rows chosen by a DPP / volume design.

    Parameters
    ----------
    basis : {"legendre", "hermite"} or callable, default "legendre"
        Orthonormal polynomials (tensor products of total or tensor degree ``degree``) or any
        feature map ``X -> (n, M)`` (a fitted snnk feature module such as
        :class:`~snnk.features.FourierFeatures`, or a function). The basis need not be
        orthonormal: it is orthonormalised on the pool.
    degree : int, default 3
        Polynomial degree (polynomial bases only).
    index_set : {"total", "tensor"}, default "total"
        Multi-indices of the polynomial basis: ``|α|₁ ≤ degree`` or ``max α ≤ degree``.
    sampler : {"repeated_dpp", "volume", "iid", "dpp"}, default "repeated_dpp"
        The sampling design (see :func:`snnk.sampling.sample_design`).
    num_samples : int or None, default None
        Number ``n`` of rows used (labelled). ``None``: ``6 m`` (``m`` for ``"dpp"``).
    alpha : float, default 0
        Optional ridge on ``G`` (``(G + αI) c = b``); 0 is the plain weighted least squares
        (minimum-norm solution when ``G`` is singular).
    rescale : bool, default True
        Map the inputs affinely to the basis' reference domain using the pool: per-feature
        min/max onto ``[−1, 1]`` (Legendre) or mean/std (Hermite); ignored for callables.
    random_state : int, RandomState or None
        Seeds the design's ``torch.Generator``.
    device : str or torch.device, default "cpu"
        Where ``fit`` computes (the basis on the pool, its orthonormalisation, the design,
        the solve); the design's random draws come from a CPU generator. Not saved:
        prediction computes on a tensor input's device, else on ``device`` when this machine
        has it, else on the CPU.

    Attributes
    ----------
    coef_ : ndarray of shape ``(M,)`` or ``(M, n_outputs)``
        Coefficients on the raw basis: ``predict(X) = φ(X) @ coef_``.
    sample_indices_ : ndarray of shape ``(n,)``
        Rows of ``X`` the fit used.
    sample_weight_ : ndarray of shape ``(n,)``
        Their weights ``w = m/k_m`` (``1`` on average under ``ρ_m``).
    stability_ : float
        ``‖G − I‖₂``; below ``1/2`` the fit is quasi-optimal.
    rank_ : int
        ``m``, the dimension of the span of the basis on the pool.
    offset_, scale_ : ndarray of shape ``(n_features,)``
        The input map ``(X − offset_)/scale_`` (zeros and ones without ``rescale``).
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "basis": [StrOptions(set(FAMILIES)), callable],
        "degree": [Interval(Integral, 0, None, closed="left")],
        "index_set": [StrOptions({"total", "tensor"})],
        "sampler": [StrOptions(set(DESIGNS))],
        "num_samples": [POSITIVE_INT, None],
        "alpha": [NON_NEGATIVE],
        "rescale": ["boolean"],
        "random_state": ["random_state"],
        "device": [str, torch.device, None],
    }

    def __init__(
        self,
        basis: str | Callable = "legendre",
        degree: int = 3,
        index_set: str = "total",
        sampler: str = "repeated_dpp",
        num_samples: int | None = None,
        alpha: float = 0.0,
        rescale: bool = True,
        random_state=None,
        device: str | torch.device | None = "cpu",
    ):
        self.basis = basis
        self.degree = degree
        self.index_set = index_set
        self.sampler = sampler
        self.num_samples = num_samples
        self.alpha = alpha
        self.rescale = rescale
        self.random_state = random_state
        self.device = device

    # -- the basis ----------------------------------------------------------------------------
    def _make_basis(self, n_features: int):
        if _callable_basis(self.basis):
            return self.basis
        with on_cpu():  # its index tables live on the CPU and follow the input's device
            return PolynomialBasis(self.basis, int(self.degree), n_features, self.index_set)

    def _features(self, X: np.ndarray, device: torch.device) -> torch.Tensor:
        """The basis at the rows of ``X`` (rescaled), ``(n, M)`` float64 on ``device``."""
        offset, scale = (to_device(a, device) for a in (self.offset_, self.scale_))
        Z = (to_device(X, device, F64) - offset) / scale
        if _callable_basis(self.basis):
            out = self.basis(Z)
            out = to_device(out.detach() if isinstance(out, torch.Tensor) else out, device)
            if out.ndim != 2 or out.shape[0] != X.shape[0]:
                raise ValueError(
                    f"basis(X) must return a ({X.shape[0]}, M) array, got shape {tuple(out.shape)}"
                )
            out = out.to(F64)
        else:
            out = self.basis_(Z)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(
                "the basis is not finite on X (inputs far outside the pool's range overflow a "
                "polynomial); keep rescale=True, lower degree or clip X"
            )
        return out

    def _fit_scaling(self, X: np.ndarray) -> None:
        d = X.shape[1]
        off, sc = np.zeros(d), np.ones(d)
        if self.rescale and not _callable_basis(self.basis):
            if self.basis == "legendre":
                lo, hi = X.min(0), X.max(0)
                off, sc = (lo + hi) / 2, (hi - lo) / 2
            else:
                off, sc = X.mean(0), X.std(0)
            sc = np.where(sc > 0, sc, 1.0)
        self.offset_, self.scale_ = off.astype(np.float64), sc.astype(np.float64)

    # -- fit / predict ------------------------------------------------------------------------
    def fit(self, X, y) -> OptimalWeightedLeastSquares:
        """Choose ``num_samples`` rows of ``X`` by the design and fit on their labels only.

        ``X`` is the candidate pool ``(N, d)``; ``y`` ``(N,)`` or ``(N, n_outputs)`` (only the
        chosen rows are read, so entries of unchosen rows may be placeholders — but must be
        finite). Use :meth:`design` to choose the rows before any label exists.
        """
        self._validate_params()
        device = fit_device(self)
        refuse_path(X, type(self).__name__)
        X, y = validate_data(
            self, as_numpy(X), as_numpy(y), dtype=np.float64, y_numeric=True, multi_output=True
        )
        Y = np.asarray(y, dtype=np.float64)
        self._y_1d = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        idx, w, U, T = self._design(X, device)
        N = X.shape[0]
        m = U.shape[1]
        sw = w.to(device).sqrt()  # the weights come back on the CPU
        A = sw[:, None] * U[idx.to(device)] * math.sqrt(N)  # √w ψ(x_i)
        B = sw[:, None] * to_device(Y[idx.cpu().numpy()], device)
        n = idx.numel()
        if self.alpha > 0:
            c = solve_spd(A.T @ A / n, A.T @ B / n, alpha=float(self.alpha))
        elif device.type == "cpu":
            c = torch.linalg.lstsq(A, B, driver="gelsd").solution
        else:  # the minimum-norm solution; gelsd is CPU-only (same cut-off: max(n, M)·eps)
            c = torch.linalg.pinv(A) @ B
        coef = (T @ c) * math.sqrt(N)
        self.coef_ = (coef[:, 0] if self._y_1d else coef).cpu().numpy()
        self.sample_indices_ = idx.cpu().numpy()
        self.sample_weight_ = w.cpu().numpy()
        self.stability_ = float(gram_deviation(U, idx)[0])
        self.rank_ = int(m)
        self.n_basis_ = int(T.shape[0])
        return self

    def _design(self, X: np.ndarray, device: torch.device):
        """``(indices, weights, U, T)`` of a design on the pool ``X`` (sets the scaling)."""
        if X.shape[0] == 0:
            raise ValueError("X has no rows; the pool needs at least one candidate")
        self.basis_ = self._make_basis(X.shape[1])
        self._fit_scaling(X)
        U, T = orthonormal_basis(self._features(X, device), return_transform=True)
        m = U.shape[1]
        n = self.num_samples
        if n is None:
            n = m if self.sampler == "dpp" else 6 * m
        if self.sampler == "dpp" and n != m:
            raise ValueError(
                f"sampler='dpp' uses exactly m = {m} rows (the dimension of the basis on X); "
                f"set num_samples=None or use sampler='repeated_dpp' for num_samples={n}"
            )
        if self.sampler == "volume" and n < m:
            raise ValueError(f"sampler='volume' needs num_samples >= m = {m}, got {n}")
        gen = make_generator(seed_from_random_state(self.random_state))[0]
        with on_cpu():  # draws from the CPU generator, the design on U's device
            idx = sample_design(U, n, design=self.sampler, generator=gen)[0]
            return idx, optimal_weights(U, idx), U, T

    def design(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, weights)`` of the rows of the pool ``X`` to label (same draw as ``fit``)."""
        self._validate_params()
        device = fit_device(self)
        refuse_path(X, type(self).__name__)
        X = validate_data(self, as_numpy(X), dtype=np.float64, reset=True)
        idx, w, _, _ = self._design(X, device)
        return idx.cpu().numpy(), w.cpu().numpy()

    def predict(self, X):
        """``φ(X) @ coef_``, shape ``(n,)`` or ``(n, n_outputs)``, float64: NumPy for NumPy
        input, a tensor on the input's device for a tensor."""
        check_is_fitted(self)
        device = predict_device(self.device, X)
        like = X
        X = validate_data(self, as_numpy(X), reset=False, dtype=np.float64)
        if X.shape[0] == 0:
            shape = (0,) if self._y_1d else (0, self.coef_.shape[1])
            return as_output(np.zeros(shape), like)
        return as_output(self._features(X, device) @ to_device(self.coef_, device), like)

    def _build_modules(self) -> None:  # pragma: no cover - no fitted modules
        pass

    def _import_state(self, meta, tensors) -> None:
        super()._import_state(meta, tensors)
        self.basis_ = self._make_basis(self.n_features_in_)

    def _fitted_names(self) -> list[str]:
        return [k for k in super()._fitted_names() if k != "basis_"]  # rebuilt from params

    _persist_private = ("_y_1d",)
    #: the fitted state a model file must hold, checked before anything is built
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {
        "attr.offset_": ArraySpec(ndim=1, dims=("n_features_in_",), required=True),
        "attr.scale_": ArraySpec(
            ndim=1, dims=("n_features_in_",), required=True, low=0.0, low_open=True
        ),
        # (n_basis,) for one target, (n_basis, n_outputs) for several: the leading size only
        "attr.coef_": ArraySpec(dims=("n_basis_",), required=True),
        "attr.sample_indices_": ArraySpec(kinds="iu", ndim=1, dims=("n_samples",), low=0.0),
        "attr.sample_weight_": ArraySpec(ndim=1, dims=("n_samples",), low=0.0),
    }
    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "n_features_in_": ValueSpec(("int",), required=True, low=1),
        "stability_": ValueSpec(("real",), low=0.0),
        "rank_": ValueSpec(("int",), required=True, low=1),
        "n_basis_": ValueSpec(("int",), required=True, low=1),
        "_y_1d": ValueSpec(("bool",), required=True),
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.target_tags.multi_output = True
        return tags
