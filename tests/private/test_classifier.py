"""DP average-similarity classifier."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.base import clone

from snnk.private import (
    BudgetAccountant,
    BudgetError,
    PrivacyLeakWarning,
    PrivateKernelClassifier,
    exact_kernel,
)

from .conftest import blobs


def _fit(eps, seed, **kw):
    X, y = blobs(600, 5, seed, centers=3, spread=2.0)
    args = {
        "lengthscale": 3.0,
        "epsilon": eps,
        "classes": [0, 1, 2],
        "num_features": 128,
        "random_state": seed,
    }
    return PrivateKernelClassifier(**{**args, **kw}).fit(X, y)


def test_accuracy_rises_with_epsilon():
    Xt, yt = blobs(600, 5, 99, centers=3, spread=2.0)
    acc = {
        eps: np.median([_fit(eps, s).score(Xt, yt) for s in range(5)])
        for eps in (0.02, 0.2, 2.0, math.inf)
    }
    eps = sorted(acc)
    assert all(acc[a] <= acc[b] + 0.02 for a, b in itertools.pairwise(eps))
    assert acc[0.02] < acc[math.inf] - 0.1  # the noise matters at small ε
    assert acc[2.0] >= acc[math.inf] - 0.03


def test_epsilon_inf_equals_the_non_private_classifier():
    X, y = blobs(600, 5, 0, centers=3, spread=2.0)
    Xt, _ = blobs(200, 5, 1, centers=3, spread=2.0)
    clf = _fit(math.inf, 0, num_features=2048)
    # the same average similarity computed by hand from the public features
    Z = clf.release_.features(X).numpy()
    Zt = clf.release_.features(Xt).numpy()
    means = np.stack([Z[y == c].mean(0) for c in range(3)])
    np.testing.assert_array_equal(clf.predict(Xt), np.argmax(Zt @ means.T, 1))
    # and with the exact kernel, up to the random-feature error
    K = exact_kernel("gaussian", 3.0, torch.tensor(Xt), torch.tensor(X)).numpy()
    exact = np.argmax(np.stack([K[:, y == c].mean(1) for c in range(3)], 1), 1)
    assert np.mean(clf.predict(Xt) == exact) > 0.97


@pytest.mark.parametrize("projection", ["gaussian", "fourier"])
def test_sklearn_contract_and_persistence(tmp_path, projection):
    clf = _fit(1.0, 0, noise="gaussian", delta=1e-6, projection_dim=3, projection=projection)
    assert clf.release_.projection == projection
    X, _ = blobs(50, 5, 3)
    P = clf.predict_proba(X)
    assert P.shape == (50, 3) and np.allclose(P.sum(1), 1) and np.all(P >= 0)
    assert clf.decision_function(X).shape == (50, 3)
    assert clone(clf).get_params()["epsilon"] == 1.0
    clf2 = PrivateKernelClassifier.load(clf.save(tmp_path / "c.safetensors"))
    np.testing.assert_array_equal(clf2.predict(X), clf.predict(X))
    assert clf2.classes_.tolist() == [0, 1, 2] and clf2.projection == projection


def test_parallel_composition_and_accountant():
    acc = BudgetAccountant(epsilon=1.0)
    clf = _fit(1.0, 0, accountant=acc)
    assert acc.total()[0] == pytest.approx(1.0)  # 3 classes, one ε (parallel composition)
    assert clf.release_.dp_event().epsilon_delta()[0] == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(BudgetError):
        _fit(0.1, 1, accountant=acc)


def test_classifier_validation():
    X, y = blobs(60, 5, 0)
    with pytest.warns(PrivacyLeakWarning, match="label set"):
        PrivateKernelClassifier(lengthscale=1.0, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="outside the declared classes"):
        PrivateKernelClassifier(lengthscale=1.0, classes=[0, 1], random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="lengthscale must be declared"):
        PrivateKernelClassifier(classes=[0, 1, 2]).fit(X, y)
    with pytest.raises(ValueError):
        PrivateKernelClassifier(lengthscale=1.0, epsilon=-1.0, classes=[0, 1, 2]).fit(X, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        PrivateKernelClassifier(lengthscale=1.0, classes=[0, 1, 2]).fit(X, y[:5])


def test_scores_probabilities_and_predictions_agree_under_heavy_noise():
    """At ε = 0.01 the noise drives many rows below zero for every class: ``predict_proba``
    falls back to a softmax there, so its argmax is still ``predict``'s class, and the
    binary ``decision_function`` is ``p₁ − p₀`` (positive exactly where class 1 wins)."""
    X, y = blobs(400, 4, 3, centers=2, spread=2.0)
    for seed in range(3):
        clf = PrivateKernelClassifier(
            lengthscale=1.0, epsilon=0.01, classes=[0, 1], num_features=64, random_state=seed
        ).fit(X, y)
        s = clf.release_.query(X, average=True)
        assert np.any((s <= 0).all(1)), "the fallback is exercised"
        P, d, pred = clf.predict_proba(X), clf.decision_function(X), clf.predict(X)
        assert np.all(np.isfinite(P)) and np.allclose(P.sum(1), 1.0)
        np.testing.assert_array_equal(clf.classes_[P.argmax(1)], pred)
        np.testing.assert_array_equal(np.where(d > 0, 1, 0), pred)
        np.testing.assert_allclose(d, P[:, 1] - P[:, 0])


def test_inputs_as_scikit_learn_takes_them():
    X, y = blobs(120, 3, 0, centers=2)
    clf = PrivateKernelClassifier(
        lengthscale=2.0, epsilon=math.inf, classes=[0, 1], num_features=32, random_state=0
    )
    clf.fit(np.rint(X * 10).astype(np.int64), y)  # integers are widened to float64
    assert clf.n_features_in_ == 3
    ref = clf.predict(X)
    np.testing.assert_array_equal(clf.predict(torch.as_tensor(X)), ref)
    assert clf.predict(torch.as_tensor(X, dtype=torch.bfloat16)).shape == (120,)
    with pytest.raises(TypeError, match="meta device"):
        clf.predict(torch.empty(4, 3, device="meta"))
    with pytest.raises(ValueError, match="3 features"):
        clf.predict(X[:, :2])
