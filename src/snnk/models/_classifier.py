r"""The classifier mixin of the feature-model family: one-hot targets, squared or logistic
loss, class probabilities.

``loss="squared"``: ridge regression on one-hot targets in closed form (the multiclass
route of Falkon and regularised least-squares classification), from the same streaming
statistics as the regressors; every input kind, ``partial_fit`` and Dask. ``loss="log"``:
L2-penalised multinomial logistic regression
``−Σ_i w_i log softmax(W z_i + c)_{y_i} + (α/2)‖W‖²`` by truncated Newton
(:func:`snnk.solvers.softmax_newton`); each gradient and Hessian-vector product reads the
data again, so it needs arrays, a source that can be read again, or a Dask array (then each
read is one map-reduce over the chunks, :class:`snnk.models._dask.DaskRowSums`). With
``alpha`` "gcv" / "loo" the strength is chosen on the squared loss of the one-hot targets.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

try:
    from sklearn.base import ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils._available_if import available_if
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import column_or_1d
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._persist import ArraySpec, ValueSpec
from snnk._utils.blocks import BLOCK_ELEMENTS
from snnk.models._base import NON_NEGATIVE, POSITIVE_INT, StrOptions
from snnk.models._device import as_output
from snnk.solvers import BlockSums, NormalEquations, softmax_newton

#: cache the feature matrix in memory for the logistic loss's passes up to this many numbers
CACHE_ELEMENTS = 1 << 27


def one_hot(idx: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` float64 indicator rows of the class indices ``idx`` (shape ``(n,)``)."""
    Y = np.zeros((len(idx), k))
    Y[np.arange(len(idx)), idx] = 1.0
    return Y


class FeatureClassifierMixin(ClassifierMixin):
    """Classification for a :class:`~snnk.models._feature_model.FeatureModel`: ``classes_``,
    one-hot targets, ``loss`` "log" / "squared", ``decision_function``, ``predict_proba``.

    ``predict_proba``: the softmax of the scores for ``loss="log"``; for ``loss="squared"``
    the one-hot scores clipped at 0 and renormalised (uniform where all are <= 0).
    """

    _constraints: ClassVar[dict[str, list]] = {
        "loss": [StrOptions({"log", "squared"})],
        "max_iter": [POSITIVE_INT],
        "tol": [NON_NEGATIVE],
    }
    _y_checks: ClassVar[dict[str, Any]] = {}
    #: one output (score column) per class; labels as ``np.unique`` returns them
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {
        "attr.classes_": ArraySpec(
            kinds="iufbUSO", ndim=1, dims=("n_outputs",), required=True, labels=True
        ),
    }
    _persist_values: ClassVar[dict[str, ValueSpec]] = {"n_iter_": ValueSpec(("int",), low=0)}

    def _check_classes(self, classes: np.ndarray) -> None:
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data, but "
                f"the data contains only one class: {classes[0]!r}"
            )

    # -- targets ---------------------------------------------------------------------------------
    def _encode_targets(self, y) -> np.ndarray:
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        classes, idx = np.unique(y, return_inverse=True)
        self._check_classes(classes)
        self.classes_ = classes
        return one_hot(idx, len(classes))

    def _chunk_targets(self, i: int, y, ne: NormalEquations) -> np.ndarray:
        y = column_or_1d(y)
        check_classification_targets(y)
        if ne.n == 0 and ne.FtY.shape[1] == 0:  # the first chunk: no labels yet
            self._labels: dict[Any, int] = {}
        labels = self._labels
        new = [c for c in np.unique(y) if c not in labels]
        if new:
            labels.update({c: len(labels) + j for j, c in enumerate(new)})
            ne.add_outputs(len(new))
        idx = np.array([labels[c] for c in y], dtype=np.int64)
        return one_hot(idx, len(labels))

    def _end_stream_targets(self, ne: NormalEquations) -> None:
        labels = self.__dict__.pop("_labels")
        classes = np.array(sorted(labels))
        self._check_classes(classes)
        # columns in sorted class order
        order = torch.tensor([labels[c] for c in classes], device=ne.FtY.device)
        ne.FtY, ne.YtY, ne.Ysum = ne.FtY[:, order], ne.YtY[order], ne.Ysum[order]
        self.classes_ = classes

    def _reread_targets(self, y) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.classes_)}
        idx = np.array([lookup[c] for c in np.asarray(y)], dtype=np.int64)
        return one_hot(idx, len(self.classes_))

    def _dask_targets(self, y) -> Callable[[Any], np.ndarray]:
        import dask
        import dask.array as da

        if y.ndim != 1:
            raise ValueError("y must be 1-D for a classifier")
        (classes,) = dask.compute(da.unique(y))
        self._check_classes(classes)
        self.classes_ = classes

        def targets(yb):
            return one_hot(np.searchsorted(classes, np.asarray(yb)), len(classes))

        return targets

    def _partial_targets(self, y, first: bool, classes) -> np.ndarray:
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit")
            classes = np.unique(np.asarray(classes))
            self._check_classes(classes)
        y = column_or_1d(y)
        known = classes if first else self.classes_
        unseen = np.setdiff1d(np.unique(y), known)
        if unseen.size:
            raise ValueError(f"labels {unseen.tolist()} are not in classes {known.tolist()}")
        if first:
            self.classes_ = known
        return one_hot(np.searchsorted(known, y), len(known))

    # -- the loss --------------------------------------------------------------------------------
    def _check_source(self, again) -> None:
        if self.loss == "log" and again is None:
            raise ValueError(
                "loss='log' reads the data once per Newton step: fit an array or a file "
                "path, or use loss='squared' for a one-pass stream"
            )
        super()._check_source(again)

    def _rereads_rows(self) -> bool:
        return self.loss == "log"

    def _partial_fit_ok(self) -> bool:
        return self.loss == "squared" and self.alpha != "loo"

    def _refine(self, ne: NormalEquations, blocks, U, c, alpha: float, sums=None):
        self.n_iter_ = 1
        if self.loss == "log":
            return self._fit_logistic(ne, blocks, alpha, sums)
        return U, c

    def _fit_logistic(self, ne: NormalEquations, blocks, alpha: float, sums=None):
        """Newton's ``(U, c)`` for the logistic loss at ``alpha``; sets ``n_iter_``.

        ``sums``: the rows as a :class:`snnk.solvers.RowSums` (a Dask fit's map-reduce);
        otherwise the ``blocks`` source, its features cached in memory up to
        ``CACHE_ELEMENTS`` numbers. Newton starts at zero: a start from the best multiple
        of the ridge solution (``multinomial_logistic(init=...)``) took as many Newton steps
        on Fashion-MNIST (7, with 87 Hessian-vector products against 82 from zero,
        n = 5,000, D = 2,048)."""
        if sums is None:
            if ne.n * self.num_features <= CACHE_ELEMENTS:
                cache = list(blocks())
                blocks = cache.__iter__  # a re-readable source: a new iterator per pass
            sums = BlockSums(blocks, remember=ne.n * len(self.classes_) <= BLOCK_ELEMENTS)
        res = softmax_newton(
            sums,
            ne.FtF,
            ne.Fsum,
            max(alpha, 1e-12),
            wsum=ne.wsum,
            ysum=ne.Ysum,
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
                stacklevel=4,
            )
        return res.coef, res.intercept

    # -- API -------------------------------------------------------------------------------------
    @available_if(lambda self: self._partial_fit_ok())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Add one chunk; ``classes`` (all labels) is required on the first call. Only for
        ``loss="squared"`` (the logistic loss needs every row at every Newton step) and
        ``alpha`` a number or "gcv".

        A chunk that fails validation leaves the fitted state exactly as it was.
        """
        return self._partial_fit(X, y, sample_weight, classes)

    def decision_function(self, X) -> np.ndarray:
        """Class scores ``(n, n_classes)``; for two classes the difference ``(n,)``."""
        scores = self._decision(X)
        return as_output(scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores, X)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` (float64; rows sum to 1)."""
        return as_output(self._proba(self._decision(X).astype(np.float64)), X)

    def _proba(self, s: np.ndarray) -> np.ndarray:
        if self.loss == "log":
            p = np.exp(s - s.max(1, keepdims=True))
        else:
            p = np.clip(s, 0.0, None)
            p[p.sum(1) <= 0] = 1.0
        return p / p.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The class of the largest score per row."""
        scores = self._decision(X)
        return as_output(self.classes_[np.argmax(scores, axis=1)], X)
