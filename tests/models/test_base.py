"""The pieces under every estimator: dtype table, seeds, progress, chunk validation,
pooled moments, and the feature-model base through a minimal subclass."""

from typing import ClassVar

import numpy as np
import pytest
import torch

from snnk.models._base import (
    FLOAT_DTYPES,
    Moments,
    check_chunk,
    compute_dtype_name,
    is_stream,
    iter_source,
    pooled_moments,
    progress,
)
from snnk.models._feature_model import FeatureModel, FeatureRegressorMixin


def test_dtype_table_and_compute_dtype():
    assert FLOAT_DTYPES == {"float32": torch.float32, "float64": torch.float64}
    assert compute_dtype_name(None, np.dtype(np.float32)) == "float32"
    assert compute_dtype_name(None, np.dtype(np.float64)) == "float64"
    assert compute_dtype_name(None, torch.float32) == "float32"
    assert compute_dtype_name("float64", np.dtype(np.float32)) == "float64"


def test_progress_is_silent_unless_verbose():
    items = [1, 2, 3]
    assert progress(items, False) is items
    bar = progress(items, True, total=3, desc="x")
    assert bar is not items and list(bar) == items


def test_moments_pool_chunks_exactly():
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(101, 4))
    w = rng.uniform(0.1, 2.0, size=101)
    whole = Moments(4).update(X, w)
    parts = Moments(4)
    for rows in (slice(0, 1), slice(1, 40), slice(40, 101)):
        parts.update(X[rows], w[rows])
    mean = w @ X / w.sum()
    var = w @ (X - mean) ** 2 / w.sum()
    for m in (whole, parts):
        np.testing.assert_allclose(m.mean, mean, rtol=1e-13)
        np.testing.assert_allclose(m.var, var, rtol=1e-12)
        assert m.weight == pytest.approx(w.sum(), rel=1e-14)
    unweighted = Moments(4).update(X[:50]).update(X[50:])
    assert unweighted.entry_variance() == pytest.approx(float(np.var(X)), rel=1e-12)
    assert Moments(2).entry_variance() == 0.0


def test_chunks_sources_and_validation(tmp_path):
    X, y = np.ones((4, 2)), np.arange(4.0)
    assert is_stream([(X, y)], None) and is_stream(tmp_path / "a.csv", "t")
    assert not is_stream(X, y) and not is_stream(torch.ones(2, 2), None)
    chunks, again = iter_source(None, [(X, y), (X, y, np.ones(4))], None, None, 10, "error")
    assert len(list(chunks)) == 2 and len(list(again())) == 2
    chunks, again = iter_source(None, iter([(X, y)]), None, None, 10, "error")
    assert again is None
    with pytest.raises(TypeError, match="y was given"):
        iter_source(None, [(X, y)], y, None, 10, "error")
    with pytest.raises(ValueError, match="chunk 0 is not"):
        list(iter_source(None, [X], None, None, 10, "error")[0])
    with pytest.raises(ValueError, match="chunk 2 has 3 feature columns"):
        check_chunk(2, 2, np.ones((4, 3)), y, None)
    with pytest.raises(ValueError, match="chunk 1: X has 4 rows but y has 3"):
        check_chunk(None, 1, X, y[:3], None)
    Xc, _, wc = check_chunk(2, 0, X.astype(np.float32), y, [1, 2, 3, 4])
    assert Xc.dtype == np.float32 and wc.dtype == np.float64
    m = pooled_moments(lambda: iter([(X, y, None), (2 * X, y, None)]))
    np.testing.assert_allclose(m.mean, [1.5, 1.5])


class _Identity(FeatureRegressorMixin, FeatureModel):
    """A member of the family whose features are the inputs themselves: plain ridge."""

    def __init__(self, alpha=1.0, fit_intercept=True, dtype=None, block_rows=7):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.dtype = dtype
        self.block_rows = block_rows
        self.num_features = 3
        self.batch_size = "deprecated"
        self.random_state = None
        self.verbose = False

    _parameter_constraints: ClassVar[dict] = {
        k: v for k, v in FeatureModel._parameter_constraints.items() if k in ("alpha", "dtype")
    }

    def _init_features(self, X, sw, moments):
        pass

    def _features_block(self, X):
        return torch.tensor(X, dtype=self._torch_dtype())


def test_base_is_ridge_for_identity_features():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=50)
    m = _Identity(alpha=0.7).fit(X, y)
    Xc, yc = X - X.mean(0), y - y.mean()
    U = np.linalg.solve(Xc.T @ Xc + 0.7 * np.eye(3), Xc.T @ yc)
    np.testing.assert_allclose(m.coef_[0], U, rtol=1e-10)
    np.testing.assert_allclose(m.predict(X), X @ U + y.mean() - X.mean(0) @ U, rtol=1e-10)
    chunks = _Identity(alpha=0.7).fit([(X[:13], y[:13]), (X[13:], y[13:])])
    np.testing.assert_allclose(chunks.coef_, m.coef_, rtol=1e-12)
    pf = _Identity(alpha=0.7).partial_fit(X[:20], y[:20]).partial_fit(X[20:], y[20:])
    np.testing.assert_allclose(pf.coef_, m.coef_, rtol=1e-12)
    m32 = _Identity(alpha=0.7).fit(X.astype(np.float32), y)
    assert m32.coef_.dtype == np.float32 and m32.predict(X.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="alpha"):
        _Identity(alpha=-1.0).fit(X, y)
