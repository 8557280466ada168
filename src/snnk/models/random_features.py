r"""Kernel ridge regression and classification on random features, at any scale.

Both estimators fit a linear model on a fixed random feature map ``z: R^d → R^D`` whose dot
products estimate the kernel, ``z(x)ᵀz(x') ≈ k(x, x')``, on the feature-model base
(:mod:`snnk.models._feature_model`): the sufficient statistics ``ZᵀWZ`` (D×D) and ``ZᵀWY``
of one pass over the data in row blocks, so one code path serves an in-memory array, an
iterable of chunks, a CSV/Parquet file read in chunks, ``partial_fit`` calls, and a Dask
array (per-chunk statistics on the cluster, summed by a tree reduction). Peak memory is
``O(D² + block_rows·D)`` whatever the number of rows.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from snnk._persist import ValueSpec
from snnk.features import SAMPLERS
from snnk.features import make_feature_map as make_feature_map
from snnk.kernels import Kernel
from snnk.kernels import resolve_kernel as resolve_kernel
from snnk.models._base import (
    DEPRECATED,
    FLOAT_DTYPES,
    POSITIVE,
    Moments,
    StrOptions,
    scale_lengthscale,
    seed_from_random_state,
)
from snnk.models._classifier import FeatureClassifierMixin
from snnk.models._device import on_cpu, to_device
from snnk.models._feature_model import FeatureModel, FeatureRegressorMixin

__all__ = ["RandomFeatureClassifier", "RandomFeatureRidge", "make_feature_map", "resolve_kernel"]


def estimator_feature_map(
    kernel,
    lengthscale,
    in_features: int,
    num_features: int,
    *,
    sampler: str,
    phases: str,
    seed: int,
    dtype: torch.dtype,
) -> torch.nn.Module:
    """The fixed feature map of the random-feature estimators and transformers (no autograd).

    :func:`~snnk.features.make_feature_map` of ``resolve_kernel(kernel, lengthscale)``, with
    one rule of the estimators' own: the default ``sampler="orthogonal"`` draws i.i.d. for a
    kernel whose spectrum is not rotation-invariant (the L1 Laplace kernel has no orthogonal
    draw; ``"structured"`` is still refused there).
    """
    k = resolve_kernel(kernel, lengthscale)
    spectrum = getattr(k, "spectrum", None)
    if sampler == "orthogonal" and spectrum is not None and not spectrum.rotation_invariant:
        sampler = "iid"
    fmap = make_feature_map(
        k, in_features, num_features, sampler=sampler, phases=phases, seed=seed, dtype=dtype
    )
    return fmap.requires_grad_(False)


class RandomFeatureModel(FeatureModel):
    """The random-feature member of the family: ``feature_map_`` is the random feature map
    of ``kernel`` (:func:`snnk.features.make_feature_map`) drawn once per fit."""

    #: files written before ``phases`` existed hold paired cos/sin features
    _legacy_params: ClassVar[dict[str, object]] = {"phases": "paired"}
    #: ``None`` when ``kernel`` is a Kernel object (its own lengthscale)
    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "lengthscale_": ValueSpec(("real", "none"), low=0.0, low_open=True),
    }
    _parameter_constraints: ClassVar[dict[str, list]] = {
        **FeatureModel._parameter_constraints,
        "kernel": [str, Kernel],
        "lengthscale": [POSITIVE, StrOptions({"scale"}), None],
        "sampler": [StrOptions(set(SAMPLERS))],
        "phases": [StrOptions({"random", "paired"})],
    }

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
        block_rows: int = 4096,
        random_state=None,
        verbose: bool = False,
        batch_size: int | str = DEPRECATED,
        device: str | torch.device | None = "cpu",
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.num_features = num_features
        self.sampler = sampler
        self.phases = phases
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.dtype = dtype
        self.block_rows = block_rows
        self.random_state = random_state
        self.verbose = verbose
        self.batch_size = batch_size
        self.device = device

    def _needs_moments(self) -> bool:
        return self.lengthscale == "scale" and not isinstance(self.kernel, Kernel)

    def _lengthscale_for(self, X: np.ndarray, sw=None, moments: Moments | None = None):
        """The lengthscale to use: the number given, or ``"scale"``: ``ℓ² = d·Var(X)/2``,
        i.e. ``γ = 1/(2ℓ²) = 1/(d·Var(X))``, scikit-learn's ``gamma="scale"`` of SVC.

        ``Var(X)`` is over all entries of ``X`` (the first chunk of a one-shot stream), or
        from ``moments`` when the caller pooled them over the whole data (files, lists of
        chunks, Dask)."""
        ls = self.lengthscale
        if not self._needs_moments():
            return None if isinstance(self.kernel, Kernel) and ls == "scale" else ls
        return scale_lengthscale(X, sw, moments)

    def _map(self, in_features: int, lengthscale, seed: int) -> torch.nn.Module:
        return estimator_feature_map(
            self.kernel,
            lengthscale,
            in_features,
            self.num_features,
            sampler=self.sampler,
            phases=self.phases,
            seed=seed,
            dtype=FLOAT_DTYPES[self.compute_dtype_],
        )

    def _init_features(self, X: np.ndarray, sw, moments: Moments | None) -> None:
        ls = self._lengthscale_for(X, sw, moments)
        self.feature_map_ = self._map(X.shape[1], ls, seed_from_random_state(self.random_state))
        self.lengthscale_ = ls

    def _build_modules(self) -> None:
        """Recreate the feature map's skeleton for :func:`snnk.io.load_model` (on the CPU,
        whatever the fit device: ``device`` is a parameter, not state)."""
        with on_cpu():
            self.feature_map_ = self._map(self.n_features_in_, self.lengthscale_, 0)

    def _feature_module(self) -> torch.nn.Module | None:
        return getattr(self, "feature_map_", None)

    def _features_block(self, X: np.ndarray) -> torch.Tensor:
        dt = FLOAT_DTYPES[self.compute_dtype_]
        return self.feature_map_(to_device(X, self._compute_device, dt))


class RandomFeatureRidge(FeatureRegressorMixin, RandomFeatureModel):
    r"""Kernel ridge regression on random features: ``ŷ = W z(x) + c``.

    ``z`` is a random feature map of ``kernel`` (Fourier features for Gaussian, Laplace and
    Matérn kernels, drawn by ``sampler``; arc-cosine features), so ``z(x)ᵀz(x')`` is an
    unbiased estimate of ``k(x, x')`` with variance ``O(1/D)``. ``W`` minimises the
    (sample-weighted) ridge loss ``Σ_i w_i ‖y_i − W z(x_i) − c‖² + α ‖W‖²`` (the intercept is
    not penalised; scikit-learn's ``Ridge`` convention), solved exactly from ``ZᵀWZ`` and
    ``ZᵀWy`` accumulated in float64 over row blocks (Cholesky with jitter; pseudo-inverse
    when rank deficient). As ``D → ∞`` this is kernel ridge regression with ``k``.

    ``fit`` accepts arrays (NumPy, torch), a Dask array or data frame (statistics per chunk
    on the cluster, tree-reduced; no dask-ml), an iterable of ``(X, y)`` / ``(X, y, w)``
    chunks, or the path of a CSV/Parquet file with ``y`` the target column's name, read in
    chunks; ``partial_fit`` adds chunks one call at a time. Peak memory is
    ``O(D² + block_rows·D)``.

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
        How the frequencies are drawn (:class:`~snnk.features.FourierFeatures`). Kernels whose
        spectrum is not rotation-invariant (the L1 ``"laplace"`` kernel) have no orthogonal
        draw: ``"orthogonal"`` then draws i.i.d. (``"structured"`` is refused).
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
        eigendecomposition) or exact leave-one-out (one more pass; arrays, files and lists
        of chunks only).
    fit_intercept : bool, default True
    dtype : {None, "float32", "float64"}, default None
        Precision of the features, block products and fitted arrays (None: float32 for
        float32 input, else float64). Accumulators and solves are always float64.
    block_rows : int, default 4096
        Rows per block (capped so a block of features stays small).
    random_state : int, RandomState or None
        Seeds the feature draw (a torch generator; no global RNG is touched).
    verbose : bool, default False
        Progress bars over chunks (or row blocks of an array).
    batch_size : int
        Deprecated alias of ``block_rows`` (FutureWarning).
    device : str or torch.device, default "cpu"
        Where the fit runs (``"cuda"``: feature map, Gram accumulation, solves and GCV on the
        GPU, row blocks sized to its free memory). Fitted arrays are NumPy; ``feature_map_``
        stays on the fit device and predictions are computed there (a saved model loads on
        the CPU). NumPy in gives NumPy out; a tensor in gives a tensor on its own device.

    Attributes
    ----------
    coef_ : ndarray (n_outputs, D)
    intercept_ : ndarray (n_outputs,)
    alpha_ : float
    cv_scores_ : ndarray, GCV or LOO score per grid point (when ``alpha`` is a string)
    feature_map_ : torch.nn.Module
    lengthscale_ : float or None
    compute_dtype_ : str
    n_features_in_, feature_names_in_, n_samples_seen_
    """


class RandomFeatureClassifier(FeatureClassifierMixin, RandomFeatureModel):
    r"""Kernel classifier on random features: scores ``W z(x) + c``, one column per class.

    ``loss="squared"``: ridge regression on one-hot targets in closed form (the multiclass
    route of Falkon and regularised least-squares classification), from the same streaming
    statistics as :class:`RandomFeatureRidge`; works on every input kind, ``partial_fit``
    and Dask. ``loss="log"``: L2-penalised multinomial logistic regression
    ``−Σ_i w_i log softmax(W z_i + c)_{y_i} + (α/2)‖W‖²`` by truncated Newton (CG with exact
    Hessian-vector products in the features' dtype, preconditioned by ``ZᵀWZ ⊗ C`` with
    ``C`` the mean softmax curvature; loss and gradient in float64,
    :func:`snnk.solvers.multinomial_logistic`); each Newton step reads the data again
    (features up to 2²⁷ numbers are cached), so it needs arrays, a file, a list of chunks or a
    Dask array (each read one map-reduce on the cluster). With ``alpha`` "gcv" / "loo" the
    strength is chosen on the squared loss of the one-hot targets.

    ``predict_proba``: softmax for ``loss="log"``; for ``loss="squared"`` the one-hot scores
    clipped at 0 and renormalised (uniform where all are <= 0).

    Parameters not listed below are those of :class:`RandomFeatureRidge`.

    Parameters
    ----------
    loss : {"log", "squared"}, default "log"
        The default by measurement (Fashion-MNIST, n = 20,000, D = 2,048; digits): both
        losses classify equally well (0.850 / 0.854 accuracy), the squared loss fits 7-10x
        faster, but only the logistic loss gives calibrated probabilities (test log-loss
        0.444 against 0.763 for the clipped squared-loss scores), and its fit costs less
        than scikit-learn's ``LogisticRegression`` on the same features. Use "squared" for
        speed, one-shot streams, ``partial_fit`` and one pass on a Dask cluster
        (docs/kernel_machines.md).
    max_iter : int, default 100
        Newton iterations (``loss="log"``).
    tol : float, default 1e-4
        Newton stops when the largest gradient entry is below ``tol`` times that of the zero
        model (``loss="log"``). 1e-4 is still stricter than scikit-learn's
        ``LogisticRegression(tol=1e-4)``, whose bound is on the gradient of the *mean* loss
        (``n`` times looser in these units). On Fashion-MNIST (n = 10,000, D = 2,048) the
        earlier default 1e-8 took 8 Newton steps, 1e-4 takes 6 in about half the time, with
        the same test accuracy and log-loss to six digits (the last steps need the most
        conjugate-gradient iterations). Models saved with the old default keep it.

    Attributes
    ----------
    classes_ : ndarray
    coef_ : ndarray (n_classes, D)
    intercept_, alpha_, feature_map_, n_iter_, n_features_in_
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        **RandomFeatureModel._parameter_constraints,
        **FeatureClassifierMixin._constraints,
    }

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
        tol: float = 1e-4,
        fit_intercept: bool = True,
        dtype: str | None = None,
        block_rows: int = 4096,
        random_state=None,
        verbose: bool = False,
        batch_size: int | str = DEPRECATED,
        device: str | torch.device | None = "cpu",
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
            block_rows=block_rows,
            random_state=random_state,
            verbose=verbose,
            batch_size=batch_size,
            device=device,
        )
        self.loss = loss
        self.max_iter = max_iter
        self.tol = tol
