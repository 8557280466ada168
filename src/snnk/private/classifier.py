"""DP classification by average similarity (BLMST24 §11): one kernel-sum sketch per class.

``fit`` releases, in one pass over the data, a noisy sketch ``S̃_c = Σ_{x∈class c} z(x) + η_c``
and a noisy count ``ñ_c`` per class. The classes partition the data, so all sketches together
cost ``ε_sketch`` once and all counts ``ε_count`` once (parallel composition); the two releases
compose sequentially to ``ε``. ``predict`` returns ``argmax_c z(y)ᵀS̃_c / ñ_c``, the class of
highest DP average similarity; prediction is post-processing (free).
"""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from snnk._utils.validation import as_numpy
from snnk.private.accountant import NEIGHBORING, BudgetAccountant, PrivacyLeakWarning
from snnk.private.kde import KernelSumRelease, private_kernel_sum
from snnk.private.mechanisms import NOISES
from snnk.private.projection import PROJECTIONS
from snnk.private.release import load_release
from snnk.private.smooth import KERNELS


class PrivateKernelClassifier(ClassifierMixin, BaseEstimator):
    r"""Differentially private average-similarity classifier (scikit-learn API).

    Parameters
    ----------
    kernel : {"gaussian", "exponential", "laplace", "cauchy", "linear"}, default "gaussian"
        The similarity (see :func:`~snnk.private.private_kernel_sum`); ``"linear"`` is the
        DP class-mean (nearest-centroid by inner product) classifier.
    lengthscale : float
        Public bandwidth (``"linear"``: the declared norm bound of the rows); required.
    epsilon : float, default 1.0
        Total privacy budget of ``fit`` (``inf``: the non-private classifier).
    delta : float, default 0.0
        ``> 0`` with ``noise="gaussian"`` only.
    noise : {"laplace", "gaussian"}, default "laplace"
    neighboring : {"add_remove", "replace_one"}, default "add_remove"
    num_features : int, default 1024
        Sketch length ``D`` per class.
    projection_dim : int or None, default None
        KDE-preserving JL dimension (``None``: none).
    projection : {"gaussian", "fourier"}, default "gaussian"
        The JL map (dense Gaussian, or the ``O(d log d)`` subsampled randomized Fourier
        transform; see :func:`~snnk.private.private_kernel_sum`).
    count_fraction : float, default 0.1
        Share of the budget spent on the noisy class counts.
    classes : array-like or None
        The public label set. ``None`` takes it from ``y``, which reveals which labels occur
        (a :class:`PrivacyLeakWarning`).
    accountant : BudgetAccountant or None
    random_state : None or int
        ``None``: secure noise (publishable). An int: reproducible (tests; warns).

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    release_ : KernelSumRelease
        The published sketches and counts (everything ``predict`` uses).
    """

    _parameter_constraints: ClassVar[dict] = {
        "kernel": [StrOptions(set(KERNELS))],
        "lengthscale": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "epsilon": [Interval(numbers.Real, 0, None, closed="right")],
        "delta": [Interval(numbers.Real, 0, 1, closed="left")],
        "noise": [StrOptions(set(NOISES))],
        "neighboring": [StrOptions(set(NEIGHBORING))],
        "num_features": [Interval(numbers.Integral, 1, None, closed="left")],
        "projection_dim": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "projection": [StrOptions(set(PROJECTIONS))],
        "count_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "classes": ["array-like", None],
        "accountant": [BudgetAccountant, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        kernel: str = "gaussian",
        lengthscale: float | None = None,
        epsilon: float = 1.0,
        delta: float = 0.0,
        noise: str = "laplace",
        neighboring: str = "add_remove",
        num_features: int = 1024,
        projection_dim: int | None = None,
        projection: str = "gaussian",
        count_fraction: float = 0.1,
        classes=None,
        accountant: BudgetAccountant | None = None,
        random_state=None,
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.epsilon = epsilon
        self.delta = delta
        self.noise = noise
        self.neighboring = neighboring
        self.num_features = num_features
        self.projection_dim = projection_dim
        self.projection = projection
        self.count_fraction = count_fraction
        self.classes = classes
        self.accountant = accountant
        self.random_state = random_state

    def fit(self, X, y):
        """Release the class sketches of ``(X, y)`` (one pass; spends ``(epsilon, delta)``)."""
        self._validate_params()
        X, y = validate_data(self, as_numpy(X), y, dtype=_DTYPES, accept_sparse=False)
        check_classification_targets(y)
        if self.classes is None:
            warnings.warn(
                "classes=None: the label set is taken from the private y, which reveals which "
                "labels occur; declare classes=[...] (public) instead",
                PrivacyLeakWarning,
                stacklevel=2,
            )
            classes = np.unique(y)
        else:
            classes = np.unique(np.asarray(self.classes))
        if classes.size < 1:
            raise ValueError("classes is empty: at least one class is needed")
        idx = np.searchsorted(classes, y)
        bad = (idx >= classes.size) | (classes[np.minimum(idx, classes.size - 1)] != y)
        if bad.any():
            raise ValueError(
                f"y holds {int(bad.sum())} label(s) outside the declared classes {classes.tolist()}"
            )
        self.release_ = private_kernel_sum(
            X,
            kernel=self.kernel,
            lengthscale=self.lengthscale,
            epsilon=float(self.epsilon),
            delta=float(self.delta),
            noise=self.noise,
            neighboring=self.neighboring,
            num_features=self.num_features,
            projection_dim=self.projection_dim,
            projection=self.projection,
            count_fraction=self.count_fraction,
            groups=idx.astype(np.int64),
            n_groups=int(classes.size),
            labels=classes.tolist(),
            accountant=self.accountant,
            random_state=self.random_state,
        )
        self.classes_ = classes
        return self

    def _scores(self, X) -> np.ndarray:
        """DP average similarity ``s_c(y)`` of every row to every class, shape ``(n, C)``."""
        check_is_fitted(self)
        X = validate_data(self, as_numpy(X), reset=False, dtype=_DTYPES, accept_sparse=False)
        return self.release_.query(X, average=True).reshape(-1, self.classes_.size)

    def decision_function(self, X) -> np.ndarray:
        """DP average similarity to each class, shape ``(n, C)``. For two classes, as in
        scikit-learn, one score per row, positive for ``classes_[1]``: ``p₁ − p₀`` of
        :meth:`predict_proba` (its sign is that of ``s₁ − s₀``; ranking rows by it ranks
        them by ``p₁``), shape ``(n,)``."""
        s = self._scores(X)
        if s.shape[1] != 2:
            return s
        p = _proba(s)
        return p[:, 1] - p[:, 0]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``(n, C)``: the positive parts of the average similarities,
        normalised (the kernel-density Bayes rule with equal priors). Where the privacy noise
        leaves every class at ``≤ 0``, a softmax of the scores, so that the most probable
        class is always :meth:`predict`'s."""
        return _proba(self._scores(X))

    def predict(self, X) -> np.ndarray:
        """The class of highest DP average similarity."""
        s = self._scores(X)  # before self.classes_: an unfitted model raises NotFittedError
        return self.classes_[np.argmax(s, axis=1)]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the release (all ``predict`` needs, labels included) as safetensors + JSON."""
        check_is_fitted(self)
        return self.release_.save(path)

    @classmethod
    def from_release(cls, release: KernelSumRelease) -> PrivateKernelClassifier:
        """A fitted classifier that predicts from a published class-sketch release."""
        if not isinstance(release, KernelSumRelease) or release.labels is None:
            raise ValueError("from_release needs a KernelSumRelease with labels (class names)")
        est = cls(
            kernel=release.kernel,
            lengthscale=release.lengthscale,
            epsilon=release.epsilon,
            delta=release.delta,
            noise=release.noise,
            neighboring=release.neighboring,
            num_features=release.num_features,
            projection_dim=release.projection_dim,
            projection=release.projection,
            classes=list(release.labels),
        )
        est.release_ = release
        est.classes_ = np.asarray(release.labels)
        est.n_features_in_ = release.in_features
        return est

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivateKernelClassifier:
        """Load a classifier saved by :meth:`save` (the file is validated on load)."""
        return cls.from_release(load_release(path))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True
        return tags


#: dtypes the classifier computes in (integer and boolean rows are widened to float64)
_DTYPES = (np.float64, np.float32)


def _proba(s: np.ndarray) -> np.ndarray:
    p = np.clip(s, 0.0, None)
    tot = p.sum(1, keepdims=True)
    soft = np.exp(s - s.max(1, keepdims=True))
    p = np.where(tot > 0, p, soft)
    return p / p.sum(1, keepdims=True)
