"""DP ℓ1 / ℓ2 distance sums by noisy dyadic trees."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snnk.private import DistanceSumRelease, PrivacyLeakWarning, load_release, private_distance_sums
from snnk.private.distance import _tree_values


def _stat(X, lo, hi, L):
    u = (np.clip(X, lo, hi) - lo) / (hi - lo)
    leaves = np.clip(np.floor(u * (1 << L)).astype(np.int64), 0, (1 << L) - 1)
    return np.stack([_tree_values(u, leaves, L, None), _tree_values(u, leaves, L, u)])


@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
def test_tree_sensitivity_holds_and_is_tight(neighboring):
    rng = np.random.default_rng(0)
    d, L = 3, 5
    X = rng.uniform(size=(40, d))
    r = private_distance_sums(
        X, bounds=(0, 1), epsilon=1.0, levels=L, neighboring=neighboring, random_state=0
    )
    factor = 2 if neighboring == "replace_one" else 1
    assert r.sensitivity == factor * 2 * d * (L + 1)
    T = _stat(X, 0, 1, L)
    worst = 0.0
    for xs in [
        np.ones(d),
        np.zeros(d),
        np.full(d, 7.0),
        -np.ones(d) * 1e9,
        X[0],
        rng.uniform(size=d),
    ]:
        X2 = np.vstack([X, xs]) if neighboring == "add_remove" else np.vstack([X[1:], xs])
        diff = np.abs(_stat(X2, 0, 1, L) - T).sum()
        assert diff <= r.sensitivity + 1e-9
        worst = max(worst, diff)
    # add/remove: the upper corner (outside points are clipped onto it) attains the bound.
    # replace-one uses the generic factor 2, an upper bound that trees do not attain (the
    # root count never changes when a point moves): checked to hold, documented as loose.
    if neighboring == "add_remove":
        assert worst == pytest.approx(r.sensitivity)
    else:
        Xc, Xd = np.vstack([np.zeros((1, d)), X]), np.vstack([np.ones((1, d)), X])
        moved = np.abs(_stat(Xc, 0, 1, L) - _stat(Xd, 0, 1, L)).sum()
        assert d * (3 * L + 1) == pytest.approx(moved) and moved <= r.sensitivity


def test_noise_scale_and_budget_split():
    X = np.random.default_rng(1).uniform(size=(50, 4))
    r = private_distance_sums(X, bounds=(0, 1), epsilon=0.5, levels=4, random_state=0)
    assert r.scale == pytest.approx(r.sensitivity / 0.5, rel=1e-5)
    split = r.budget_split()
    assert len(split) == 8 and sum(split.values()) == pytest.approx(0.5)
    noise = np.concatenate(
        [(r.counts - _stat(X, 0, 1, 4)[0]).ravel(), (r.sums - _stat(X, 0, 1, 4)[1]).ravel()]
    )
    assert np.all(noise != 0)  # every node, empty ones included, is noised


def test_noise_off_is_exact_up_to_the_leaf():
    rng = np.random.default_rng(2)
    X, Y = rng.uniform(-1, 3, size=(3000, 3)), rng.uniform(-2, 4, size=(25, 3))
    L = 8
    r = private_distance_sums(X, bounds=(-1, 3), epsilon=math.inf, levels=L)
    exact = np.abs(X[:, None] - Y[None]).sum((0, 2))
    w = 4 / 2**L
    # each point of the query's own leaf is off by at most w/2
    assert np.all(np.abs(r.query(Y) - exact) <= 3 * 3000 * w / 2 * 0.05 + 1e-6 * exact)


def test_l2_embedding_noise_off():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(800, 10))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = rng.normal(size=(10, 10)) * 0.5
    with pytest.warns(PrivacyLeakWarning, match="clipped"):  # a few embedded coordinates
        r = private_distance_sums(
            X,
            metric="l2",
            data_norm=1.0,
            epsilon=math.inf,
            embedding_dim=400,
            levels=10,
            random_state=0,
        )
    exact = np.linalg.norm(X[:, None] - Y[None], axis=2).sum(0)
    assert np.abs(r.query(Y) / exact - 1).max() < 0.1  # ≈ 1/√k relative
    assert r.embedding.shape == (400, 10)


def test_validation_and_persistence(tmp_path):
    X = np.random.default_rng(4).uniform(size=(20, 2))
    with pytest.raises(ValueError, match="bounds"):
        private_distance_sums(X, epsilon=1.0)
    with pytest.raises(ValueError, match="data_norm"):
        private_distance_sums(X, metric="l2", epsilon=1.0)
    with pytest.raises(ValueError, match="upper > lower"):
        private_distance_sums(X, bounds=(1, 0), epsilon=1.0)
    with pytest.raises(ValueError, match="metric"):
        private_distance_sums(X, metric="l3", bounds=(0, 1), epsilon=1.0)
    with pytest.raises(ValueError, match="levels"):
        private_distance_sums(X, bounds=(0, 1), epsilon=1.0, levels=30)
    with pytest.warns(PrivacyLeakWarning, match="clipped"):
        private_distance_sums(X * 5, bounds=(0, 1), epsilon=1.0, random_state=0)
    r = private_distance_sums(
        X, bounds=(0, 1), epsilon=1.0, noise="gaussian", delta=1e-6, random_state=0
    )
    r2 = load_release(r.save(tmp_path / "t.safetensors"))
    assert isinstance(r2, DistanceSumRelease)
    np.testing.assert_array_equal(r.query(X), r2.query(X))
    assert not np.any(np.isin(X, r.counts)) and 20 not in r.params().values()
