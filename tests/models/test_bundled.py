"""BundledRegressor / BundledClassifier: scikit-learn contract, closed form, errors."""

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_regression
from sklearn.utils.estimator_checks import check_estimator

from snnk.models import BundledClassifier, BundledRegressor


@pytest.mark.parametrize(
    "est",
    [
        BundledRegressor(num_features=32, random_state=0),
        BundledClassifier(num_features=32, random_state=0),
        BundledClassifier(num_features=32, loss="squared", alpha=1e-3, random_state=0),
    ],
    ids=["regressor", "classifier-log", "classifier-squared"],
)
def test_sklearn_estimator_checks(est):
    check_estimator(est)


def test_regressor_matches_ridge_on_its_own_features():
    X, y = make_regression(200, 6, noise=1.0, random_state=0)
    m = BundledRegressor(num_features=64, alpha=0.5, dtype="float64", random_state=0).fit(X, y)
    F = m.random_features(X)
    Fc, yc = F - F.mean(0), y - y.mean()
    U = np.linalg.solve(Fc.T @ Fc + 0.5 * np.eye(64), Fc.T @ yc)
    np.testing.assert_allclose(m.coef_[0], U, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(m.predict(X), F @ U + y.mean() - F.mean(0) @ U, rtol=1e-7, atol=1e-7)
    assert m.num_parameters_ == 65


@pytest.mark.parametrize("loss", ["log", "squared"])
def test_classifier_on_digits(loss):
    X, y = load_digits(return_X_y=True)
    m = BundledClassifier(num_features=256, loss=loss, random_state=0).fit(X[:1200], y[:1200])
    proba = m.predict_proba(X[1200:])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    assert (proba >= 0).all()
    assert m.score(X[1200:], y[1200:]) > 0.9


def test_float32_and_float64_agree():
    X, y = make_regression(150, 5, noise=0.5, random_state=1)
    p32 = BundledRegressor(num_features=64, alpha=1.0, random_state=0).fit(X, y).predict(X)
    p64 = (
        BundledRegressor(num_features=64, alpha=1.0, dtype="float64", random_state=0)
        .fit(X, y)
        .predict(X)
    )
    np.testing.assert_allclose(p32, p64, rtol=1e-3, atol=1e-3 * np.abs(p64).max())


def test_bad_inputs():
    X, y = make_regression(30, 3, random_state=0)
    y_nan = y.copy()
    y_nan[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        BundledRegressor(num_features=8).fit(X, y_nan)
    with pytest.raises(ValueError, match=r"2 classes|one class"):
        BundledClassifier(num_features=8).fit(X, np.zeros(30))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        BundledRegressor(num_features=8).fit(X, y[:-1])
    with pytest.raises(ValueError, match="num_features"):
        BundledRegressor(num_features=0).fit(X, y)
    with pytest.raises(ValueError, match="alpha"):
        BundledRegressor(alpha="loo").fit(X, y)
    with pytest.raises(ValueError, match="loss"):
        BundledClassifier(loss="hinge").fit(X, y > 0)
