r"""scikit-learn transformers for snnk's feature maps: ``X ↦ Z = φ(X)`` with ``ZZᵀ ≈ K``.

Each transformer draws (or, for Nyström, fits) one feature map of :mod:`snnk.features` in
``fit`` and applies it in ``transform``; the output is exactly that module's output on the
same input and seed, so a ``Pipeline(RandomFeatureTransformer(), Ridge())`` is the
random-feature kernel ridge regression of :class:`~snnk.models.RandomFeatureRidge` with
scikit-learn's linear model on top.

* :class:`RandomFeatureTransformer`: the random feature map of a kernel
  (:func:`snnk.features.make_feature_map`): Fourier features of the Gaussian, Laplace and
  Matérn kernels with any sampler, arc-cosine features, random-network (NNGP) features.
* :class:`PositiveFeatureTransformer`: positive random features of the softmax kernel
  ``exp(xᵀy / T)`` (:class:`snnk.features.PositiveFeatures`, FAVOR+ and its generalisation).
* :class:`NystromTransformer`: Nyström features ``k(x, C) K_CC^{+1/2}`` of any kernel with
  any centre selection of :data:`snnk.features.centers.CENTER_METHODS`
  (:class:`snnk.features.NystromFeatures`).

All three keep float32 (float32 in, float32 out; anything else is computed in float64),
name their outputs (``get_feature_names_out``, so ``set_output(transform="pandas")`` works
in a ``Pipeline`` or ``ColumnTransformer``), validate their parameters
(``_parameter_constraints``), leave the global random generators alone, and save with
:func:`snnk.io.save_model`. The random projections also take ``scipy.sparse`` input: the
projection ``XΩᵀ`` is one sparse-times-dense product, the rest is elementwise.

``device="cuda"`` puts the fitted map on the GPU (the Nyström fit, centre selection and
``K_CC``'s factorisation, runs there); random draws come from CPU generators, so every device
gets the same map. Dense input is mapped where the map lives (the CPU after a load: the
device is not saved), sparse input on the CPU. NumPy in, NumPy out; a tensor in, a tensor
out on its device; a Dask array in, a lazy Dask array out (``map_blocks``).

The universal random features of :class:`snnk.features.URF` have no transformer: their
input tower ``Φ(x)`` estimates ``f(wᵀx + b)`` only when paired with the parameter tower
``Ψ(w, b)``; alone, ``Φ(x)ᵀΦ(y)`` is not an estimate of any useful kernel (its amplitudes grow
like ``exp(‖x‖²)``). Their ``"exp"`` kind is :class:`PositiveFeatureTransformer`.
"""

from __future__ import annotations

import math
import warnings
from numbers import Real
from typing import ClassVar

import numpy as np
import torch
from scipy import sparse
from torch.func import functional_call

try:
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.utils._param_validation import Interval, InvalidParameterError
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._persist import ValueSpec
from snnk.features import (
    SAMPLERS,
    ArcCosineFeatures,
    FourierFeatures,
    NystromFeatures,
    PositiveFeatures,
    positive_log_features,
)
from snnk.features.centers import CENTER_METHODS
from snnk.io import PersistMixin
from snnk.kernels import NNGP, Kernel, resolve_kernel
from snnk.models._base import (
    FLOAT_DTYPES,
    POSITIVE,
    POSITIVE_INT,
    Moments,
    StrOptions,
    as_numpy,
    compute_dtype_name,
    is_dask,
    refuse_path,
    seed_from_random_state,
    validate_data,
)
from snnk.models._dask_kernel import map_rows
from snnk.models._device import as_output, fit_device, move_module, on_cpu, state_device, to_device
from snnk.models.random_features import RandomFeatureModel, estimator_feature_map

__all__ = ["NystromTransformer", "PositiveFeatureTransformer", "RandomFeatureTransformer"]

_FLOATS = [np.float64, np.float32]
DEVICE_OPTIONS = [str, torch.device, None]


def _sparse_moments(X: sparse.sparray | sparse.spmatrix) -> Moments:
    """:class:`~snnk.models._base.Moments` of the rows of a sparse ``X`` without densifying:
    column means ``Σx/n`` and centred sums of squares ``Σx² − n·mean²``."""
    n = X.shape[0]
    moments = Moments(X.shape[1])
    mean = np.asarray(X.sum(axis=0), dtype=np.float64).ravel() / n
    squares = np.asarray(X.multiply(X).sum(axis=0), dtype=np.float64).ravel()
    moments.weight, moments.mean = float(n), mean
    moments.m2 = np.maximum(squares - n * np.square(mean), 0.0)
    return moments


class _FeatureTransformer(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, PersistMixin, BaseEstimator
):
    """Shared machinery: validation, the fitted map ``feature_map_``, dense and sparse
    transforms, output names, tags."""

    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "n_features_in_": ValueSpec(("int",), required=True, low=1),
    }

    # -- hooks -------------------------------------------------------------------------------------
    def _accepts_sparse(self) -> bool:
        """Whether ``fit`` / ``transform`` take ``scipy.sparse`` input (the map is a projection)."""
        return False

    def _fit_map(self, X: np.ndarray | sparse.csr_matrix, device: torch.device) -> None:
        """Draw (on the CPU) or fit (on ``device``) ``feature_map_`` and the rest for ``X``."""
        raise NotImplementedError

    def _sparse_features(self, X: sparse.csr_matrix, dtype: torch.dtype) -> torch.Tensor:
        """Features of the rows of a CSR matrix, ``(n, D)`` in ``dtype``."""
        raise NotImplementedError

    # -- scikit-learn API --------------------------------------------------------------------------
    def _validate(self, X, reset: bool):
        refuse_path(X, type(self).__name__)
        return validate_data(
            self,
            as_numpy(X),
            reset=reset,
            accept_sparse="csr" if self._accepts_sparse() else False,
            dtype=_FLOATS,
        )

    def fit(self, X, y=None) -> _FeatureTransformer:
        """Draw (or fit) the feature map for data like ``X``.

        Parameters
        ----------
        X : array-like or scipy.sparse matrix of shape ``(n_samples, n_features)``
            Sparse input is accepted by the maps that are projections (see the class).
        y : ignored

        Returns
        -------
        self
        """
        self._validate_params()
        device = fit_device(self)
        X = self._validate(X, reset=True)
        with on_cpu():  # random matrices come from CPU generators: the same on every device
            self._fit_map(X, device)
        move_module(self.feature_map_, device)
        return self

    def transform(self, X):
        """``Z = φ(X)``, shape ``(n_samples, n_features_out)``: float32 for float32 input,
        float64 otherwise; dense for dense and sparse input alike (the kinds of input and
        output, and devices: see the module notes)."""
        check_is_fitted(self)
        if is_dask(X):
            return map_rows(self.transform, X, self._n_features_out)
        like = X
        X = self._validate(X, reset=False)
        dtype = torch.float32 if X.dtype == np.float32 else torch.float64
        with torch.no_grad():
            if sparse.issparse(X):
                Z = self._sparse_features(X, dtype)
            else:
                Z = self._dense_features(to_device(X, state_device(self.feature_map_)))
        return as_output(Z, like)

    def _dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output on ``x`` in ``x``'s dtype. Random maps are drawn in float64
        (the draw itself); a float32 input is mapped with the draw rounded to float32, which
        is the module built with ``dtype=torch.float32`` bit for bit."""
        fmap = self.feature_map_
        ref = next(fmap.buffers())
        if ref.dtype == x.dtype:
            return fmap(x)
        buffers = {name: b.to(x.dtype) for name, b in fmap.named_buffers()}
        return functional_call(fmap, buffers, (x,))

    @property
    def _n_features_out(self) -> int:
        return int(self.feature_map_.num_features)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = self._accepts_sparse()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


# -- the random feature map of a kernel ----------------------------------------------------------
class _ScaleRule:
    """``lengthscale="scale"``: :class:`~snnk.models.RandomFeatureRidge`'s rule, shared."""

    _needs_moments = RandomFeatureModel._needs_moments
    _lengthscale_for = RandomFeatureModel._lengthscale_for

    def _fitted_lengthscale(self, X) -> float | None:
        with np.errstate(over="ignore", invalid="ignore"):
            moments = _sparse_moments(X) if sparse.issparse(X) and self._needs_moments() else None
            ls = self._lengthscale_for(X, None, moments)
        overflow = moments is not None and not np.isfinite(moments.m2).all()
        if overflow or (ls is not None and not math.isfinite(ls)):
            _raise_too_large(X, "lengthscale='scale' (ℓ² = d·Var(X)/2)", "a numeric lengthscale")
        return ls


def _raise_too_large(X, rule: str, option: str) -> None:
    big = float(abs(X).max())
    raise ValueError(
        f"X has entries up to {big:.3g}: {rule} overflows float64; scale X first (e.g. "
        f"sklearn.preprocessing.StandardScaler, or MaxAbsScaler for sparse X) or pass {option}"
    )


class RandomFeatureTransformer(_ScaleRule, _FeatureTransformer):
    r"""The random feature map of a kernel as a scikit-learn transformer: ``Z = z(X)``.

    ``z: R^d → R^D`` is :func:`snnk.features.make_feature_map` of ``kernel``, drawn once in
    ``fit`` from ``random_state``, with ``z(x)ᵀz(y)`` an unbiased estimate of ``k(x, y)``:

    * Gaussian, Laplace, Matérn (shift invariant): random Fourier features, frequencies
      ``ω_j`` from the kernel's spectral measure drawn by ``sampler``,
      ``z(x) = √(2/D) cos(Ωx + b)`` (``phases="random"``) or ``√(2/D) [cos Ωx, sin Ωx]``
      with ``D/2`` frequencies (``phases="paired"``);
    * :class:`~snnk.kernels.ArcCosine` of order ``n``: ``z(x) = √(2/D) Θ(Gx) (Gx)^n``;
    * :class:`~snnk.kernels.NNGP`: a random network of width ``D``.

    The same parameters give the feature map of :class:`~snnk.models.RandomFeatureRidge`:
    ``RandomFeatureTransformer(**p).fit_transform(X)`` equals ``RandomFeatureRidge(**p)``'s
    ``feature_map_`` on ``X`` (for the same ``random_state``). ``transform`` costs
    ``O(n D d)`` (``O(n D log d)`` for ``sampler="structured"`` in high ``d``).

    Parameters
    ----------
    kernel : str or snnk.kernels.Kernel, default "gaussian"
        ``"gaussian"``, ``"laplace"``, ``"matern"``, ``"arccosine"``, ``"nngp"`` or a kernel
        object (then ``lengthscale`` is not used).
    lengthscale : float or "scale", default "scale"
        ``"scale"`` sets ``ℓ² = d·Var(X)/2`` from the training data (``Var`` over all
        entries), i.e. ``γ = 1/(d·Var(X))`` like scikit-learn's ``gamma="scale"``; the value
        used is ``lengthscale_``.
    num_features : int, default 1024
        ``D``, the output width (even for ``phases="paired"``).
    sampler : {"orthogonal", "iid", "structured", "qmc", "halton"}, default "orthogonal"
        How the random directions are drawn (:data:`snnk.features.SAMPLERS`). Kernels whose
        spectrum is not rotation-invariant (the L1 ``"laplace"`` kernel) have no orthogonal
        draw: ``"orthogonal"`` then draws i.i.d. (``"structured"`` is refused), as in
        :class:`~snnk.models.RandomFeatureRidge`.
    phases : {"random", "paired"}, default "random"
        Fourier features only (see above).
    random_state : int, RandomState or None
        Seeds the draw (a torch generator; no global RNG is touched).
    device : str or torch.device, default "cpu"
        Where ``fit`` puts the map and computes (see the module notes).

    Attributes
    ----------
    feature_map_ : torch.nn.Module
        The map, drawn in float64 (a float32 input is mapped with its float32 rounding).
    lengthscale_ : float or None
    n_features_in_, feature_names_in_

    Notes
    -----
    ``scipy.sparse`` input (any format; CSR inside) is projected by one sparse-times-dense
    product ``XΩᵀ`` (the map's ``dense_weight()``), then the elementwise part is applied, so
    a wide sparse ``X`` is never densified; the output is dense. The NNGP map (a network
    of several layers) needs dense input.
    """

    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "lengthscale_": ValueSpec(("real", "none"), low=0.0, low_open=True),
    }
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "kernel": [str, Kernel],
        "lengthscale": [POSITIVE, StrOptions({"scale"}), None],
        "num_features": [POSITIVE_INT],
        "sampler": [StrOptions(set(SAMPLERS))],
        "phases": [StrOptions({"random", "paired"})],
        "random_state": ["random_state"],
        "device": DEVICE_OPTIONS,
    }

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | str | None = "scale",
        num_features: int = 1024,
        sampler: str = "orthogonal",
        phases: str = "random",
        random_state=None,
        device: str | torch.device | None = "cpu",
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.num_features = num_features
        self.sampler = sampler
        self.phases = phases
        self.random_state = random_state
        self.device = device

    def _accepts_sparse(self) -> bool:
        kernel = self.kernel
        if isinstance(kernel, str):
            return kernel.lower() != "nngp"
        return not isinstance(kernel, NNGP)

    def _map(self, in_features: int, lengthscale: float | None, seed: int) -> torch.nn.Module:
        return estimator_feature_map(
            self.kernel,
            lengthscale,
            in_features,
            self.num_features,
            sampler=self.sampler,
            phases=self.phases,
            seed=seed,
            dtype=torch.float64,
        )

    def _fit_map(self, X, device: torch.device) -> None:
        ls = self._fitted_lengthscale(X)
        self.feature_map_ = self._map(X.shape[1], ls, seed_from_random_state(self.random_state))
        self.lengthscale_ = ls

    def _build_modules(self) -> None:
        """Recreate ``feature_map_``'s skeleton for :func:`snnk.io.load_model`."""
        self.feature_map_ = self._map(self.n_features_in_, self.lengthscale_, 0)

    def _sparse_features(self, X, dtype: torch.dtype) -> torch.Tensor:
        fmap = self.feature_map_
        weight = fmap.projection.dense_weight().to(dtype).cpu().numpy()
        p = torch.from_numpy(np.ascontiguousarray(X @ weight.T))
        if isinstance(fmap, FourierFeatures):
            if fmap.phases == "random":
                return torch.cos(p + fmap.offset.to(dtype).cpu()).mul_(fmap.amplitude)
            return torch.cat([torch.cos(p), torch.sin(p)], 1).mul_(fmap.amplitude)
        if isinstance(fmap, ArcCosineFeatures):
            z = (p > 0).to(dtype) if fmap.order == 0 else torch.relu(p) ** fmap.order
            z = z.mul_(fmap.amplitude)
            if not bool(torch.isfinite(z).all()):
                raise ValueError(
                    f"arc-cosine features of order {fmap.order} overflow {dtype} for this X "
                    f"(largest |x| {float(abs(X).max()):.3g}); scale X down (e.g. "
                    "sklearn.preprocessing.MaxAbsScaler for sparse X) or pass float64"
                )
            return z
        raise TypeError(  # pragma: no cover - _accepts_sparse refuses the others
            f"{type(fmap).__name__} takes dense input only"
        )


# -- positive features of the softmax kernel -----------------------------------------------------
class PositiveFeatureTransformer(_FeatureTransformer):
    r"""Positive random features of the softmax kernel ``k(x, y) = exp(xᵀy / T)``.

    With ``x' = x/√T``, Gaussian rows ``g_j`` drawn by ``sampler`` and ``c = √(1+4M)``,

    ``z_j(x) = D^{-1/2} (1+4M)^{d/4} exp(c g_jᵀx' − ‖x'‖²/2 − M‖g_j‖²)``

    and ``E[z(x)ᵀz(y)] = exp(x'ᵀy')`` exactly (FAVOR+ for ``M = 0``; ``hyperbolic=True``
    uses the pair ``exp(±c g_jᵀx' …)/√2``). Every feature is positive, so ``z(x)ᵀz(y) > 0``
    as the kernel is. The variance of one feature grows like ``exp(‖x' + y'‖²)``: keep
    ``‖x'‖`` of order one (``temperature="scale"`` does).
    This is :class:`snnk.features.PositiveFeatures`, bit for bit.

    Parameters
    ----------
    num_features : int, default 1024
        ``D`` (even with ``hyperbolic=True``).
    temperature : float or "scale", default "scale"
        ``T``. ``"scale"`` sets ``T`` to the mean squared row norm ``mean_i ‖x_i‖²`` of the
        training data (1 when that is 0), so that ``‖x'‖² ≈ 1`` on average; the value used is
        ``temperature_``.
    M : float, default 0.0
        Variance parameter of the generalised features (``M > −1/4``; ``M ≤ −1/8`` has
        infinite variance and warns).
    hyperbolic : bool, default False
    sampler : {"orthogonal", "iid", "structured", "qmc", "halton"}, default "orthogonal"
    random_state : int, RandomState or None
    device : str or torch.device, default "cpu"
        Where ``fit`` puts the map and computes (see the module notes).

    Attributes
    ----------
    feature_map_ : snnk.features.PositiveFeatures (float64 buffers)
    temperature_ : float
    n_features_in_, feature_names_in_

    Notes
    -----
    ``scipy.sparse`` input is projected by one sparse-times-dense product with the map's
    affine form ``(A, b, γ)`` (:meth:`snnk.features.PositiveFeatures.affine_form`):
    ``log z(x) = xAᵀ + b − γ‖x‖²/2``.
    """

    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "temperature_": ValueSpec(("real",), required=True, low=0.0, low_open=True),
    }
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "num_features": [POSITIVE_INT],
        "temperature": [POSITIVE, StrOptions({"scale"})],
        "M": [Interval(Real, -0.25, None, closed="neither")],
        "hyperbolic": ["boolean"],
        "sampler": [StrOptions(set(SAMPLERS))],
        "random_state": ["random_state"],
        "device": DEVICE_OPTIONS,
    }

    def __init__(
        self,
        num_features: int = 1024,
        temperature: float | str = "scale",
        M: float = 0.0,
        hyperbolic: bool = False,
        sampler: str = "orthogonal",
        random_state=None,
        device: str | torch.device | None = "cpu",
    ):
        self.num_features = num_features
        self.temperature = temperature
        self.M = M
        self.hyperbolic = hyperbolic
        self.sampler = sampler
        self.random_state = random_state
        self.device = device

    def _accepts_sparse(self) -> bool:
        return True

    def _map(self, in_features: int, temperature: float, seed: int) -> PositiveFeatures:
        fmap = PositiveFeatures(
            in_features,
            self.num_features,
            temperature=temperature,
            M=float(self.M),
            hyperbolic=bool(self.hyperbolic),
            sampler=self.sampler,
            seed=seed,
            dtype=torch.float64,
        )
        return fmap.requires_grad_(False)

    def _fit_map(self, X, device: torch.device) -> None:
        if self.temperature == "scale":
            with np.errstate(over="ignore"):
                sq = (X.multiply(X) if sparse.issparse(X) else np.square(X, dtype=np.float64)).sum()
            T = float(sq) / X.shape[0]
            if not math.isfinite(T):
                _raise_too_large(X, "temperature='scale' (T = mean ‖x‖²)", "a numeric temperature")
            T = T if T > 0 else 1.0
        else:
            T = float(self.temperature)
        self.feature_map_ = self._map(X.shape[1], T, seed_from_random_state(self.random_state))
        self.temperature_ = T

    def _build_modules(self) -> None:
        """Recreate ``feature_map_``'s skeleton for :func:`snnk.io.load_model`."""
        self.feature_map_ = self._map(self.n_features_in_, self.temperature_, 0)

    def _sparse_features(self, X, dtype: torch.dtype) -> torch.Tensor:
        A, b, gamma = self.feature_map_.affine_form()
        A, b = A.cpu(), b.cpu()
        p = torch.from_numpy(np.ascontiguousarray(X @ A.to(dtype).numpy().T))
        sq = torch.from_numpy(np.asarray(X.multiply(X).sum(axis=1), dtype=X.dtype))
        return torch.exp(positive_log_features(p, sq, b.to(dtype), gamma))


# -- Nyström features ----------------------------------------------------------------------------
class NystromTransformer(_ScaleRule, _FeatureTransformer):
    r"""Nyström features of any kernel: ``Z = k(X, C) K_CC^{+1/2}``.

    ``fit`` chooses ``m = min(num_centers, n)`` centres ``C`` among the training rows (or
    builds them, for ``"kmeans"``) with ``center_selection`` and factors ``K_CC``; then
    ``z(x)ᵀz(y) = k(x, C) K_CC⁺ k(C, y)`` is the Nyström approximation of ``k(x, y)``, exact
    on the centres (Williams & Seeger, 2001). This is
    :class:`snnk.features.NystromFeatures`, bit for bit: ``K_CC^{+1/2}`` and ``k(x, C)`` are
    computed in float64 whatever the input dtype, the output is cast back to it. ``fit``
    costs the centre selection plus ``O(m³)``; ``transform`` ``O(n m (d + m))``.

    Parameters
    ----------
    kernel : str or snnk.kernels.Kernel, default "gaussian"
        Any kernel name of :func:`snnk.kernels.kernel_names` or a kernel object (then
        ``lengthscale`` is not used).
    lengthscale : float or "scale", default "scale"
        As for :class:`RandomFeatureTransformer`; shift-invariant kernels only.
    num_centers : int, default 1000
        ``m``, the output width (fewer when ``X`` has fewer rows: a warning says so).
    center_selection : str, default "uniform"
        A name of :data:`snnk.features.centers.CENTER_METHODS`: ``"uniform"``, ``"kmeans++"``
        (D² sampling in the kernel's feature space), ``"kmeans"``, ``"rls"`` and ``"bless"``
        (ridge leverage scores), ``"kdpp"``, ``"pivoted-cholesky"``, ``"rpcholesky"``
        (randomly pivoted Cholesky), and any registered with
        :func:`snnk.features.register_center_method`.
    rcond : float, optional
        Eigenvalues of ``K_CC`` below ``rcond · λ_max`` are dropped (pseudo-inverse; default
        ``m · eps`` of float64). ``rank_`` is the number kept.
    random_state : int, RandomState or None
    device : str or torch.device, default "cpu"
        Where ``fit`` puts the map and computes (see the module notes).

    Attributes
    ----------
    feature_map_ : snnk.features.NystromFeatures
    num_centers_ : int
    rank_ : int
    lengthscale_ : float or None
    compute_dtype_ : {"float32", "float64"}
        dtype of the training data, and of the stored centres.
    n_features_in_, feature_names_in_

    Notes
    -----
    Dense input only: ``k(x, C)`` is not a projection of ``x``.
    """

    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "lengthscale_": ValueSpec(("real", "none"), low=0.0, low_open=True),
        "num_centers_": ValueSpec(("int",), required=True, low=1),
        "rank_": ValueSpec(("int",), low=0),
        "compute_dtype_": ValueSpec(("str",), required=True, choices=tuple(FLOAT_DTYPES)),
    }
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "kernel": [str, Kernel],
        "lengthscale": [POSITIVE, StrOptions({"scale"}), None],
        "num_centers": [POSITIVE_INT],
        "center_selection": [str],  # a name of CENTER_METHODS, checked in fit (it can grow)
        "rcond": [Interval(Real, 0, 1, closed="both"), None],
        "random_state": ["random_state"],
        "device": DEVICE_OPTIONS,
    }

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | str | None = "scale",
        num_centers: int = 1000,
        center_selection: str = "uniform",
        rcond: float | None = None,
        random_state=None,
        device: str | torch.device | None = "cpu",
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.num_centers = num_centers
        self.center_selection = center_selection
        self.rcond = rcond
        self.random_state = random_state
        self.device = device

    def _map(self, lengthscale: float | None, num_centers: int, seed: int) -> NystromFeatures:
        return NystromFeatures(
            resolve_kernel(self.kernel, lengthscale),
            num_centers,
            centers=self.center_selection,
            rcond=self.rcond,
            seed=seed,
        )

    def _fit_map(self, X: np.ndarray, device: torch.device) -> None:
        if self.center_selection not in CENTER_METHODS:
            raise InvalidParameterError(
                f"The 'center_selection' parameter of NystromTransformer must be one of "
                f"{sorted(CENTER_METHODS)} (snnk.features.centers.CENTER_METHODS). Got "
                f"{self.center_selection!r} instead."
            )
        n = X.shape[0]
        m = self.num_centers
        if m > n:
            warnings.warn(
                f"NystromTransformer: num_centers={m} exceeds the {n} rows of X; using {n} "
                "centres (the output has that many columns)",
                UserWarning,
                stacklevel=3,
            )
            m = n
        ls = self._fitted_lengthscale(X)
        fmap = self._map(ls, m, seed_from_random_state(self.random_state))
        self.feature_map_ = fmap.to(device).fit(to_device(X, device))
        self.num_centers_ = m
        self.rank_ = int(fmap.rank_)
        self.lengthscale_ = ls
        self.compute_dtype_ = compute_dtype_name(None, X.dtype)

    def _dense_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map_(x)  # computes in float64 and returns x's dtype itself

    def _build_modules(self) -> None:
        """Recreate ``feature_map_``'s skeleton (empty centres of the saved shape and dtype)
        for :func:`snnk.io.load_model`."""
        fmap = self._map(self.lengthscale_, self.num_centers_, 0)
        self.feature_map_ = fmap.allocate(self.n_features_in_, FLOAT_DTYPES[self.compute_dtype_])
