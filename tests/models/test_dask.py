"""The same random-feature fit on a Dask cluster: per-chunk statistics, tree reduction,
equal weights, the logistic loss as map-reduce passes, Dask data frames, and a worker
killed during the fit (issues #4, #17)."""

import os
import signal
import threading
import time

import dask.array as da
import numpy as np
import pytest

from snnk.models import (
    BundledClassifier,
    BundledRegressor,
    NystromRidge,
    RandomFeatureClassifier,
    RandomFeatureGP,
    RandomFeatureRidge,
)


def _data(n=3000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] / 2 + 0.1 * rng.normal(size=n)
    return X, y


def test_dask_fit_equals_in_memory_fit(client):
    X, y = _data()
    kw = {"num_features": 128, "alpha": 1e-2, "random_state": 0}
    ref = RandomFeatureRidge(**kw).fit(X, y)
    Xd, yd = da.from_array(X, chunks=(400, 3)), da.from_array(y, chunks=250)
    m = RandomFeatureRidge(**kw).fit(Xd, yd)
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m.intercept_, ref.intercept_, rtol=1e-6)
    lazy = m.predict(Xd)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), ref.predict(X), rtol=1e-6, atol=1e-9)
    gcv_ref = RandomFeatureRidge(num_features=64, random_state=1).fit(X, y)
    gcv = RandomFeatureRidge(num_features=64, random_state=1).fit(Xd, yd)
    assert gcv.alpha_ == pytest.approx(gcv_ref.alpha_, rel=1e-9)
    labels = np.where(y > 0.2, "up", "down")
    c_ref = RandomFeatureClassifier(loss="squared", **kw).fit(X, labels)
    c = RandomFeatureClassifier(loss="squared", **kw).fit(Xd, da.from_array(labels, chunks=500))
    np.testing.assert_allclose(c.coef_, c_ref.coef_, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="alpha='loo' on a Dask array"):
        RandomFeatureClassifier(alpha="loo").fit(Xd, da.from_array(labels, chunks=500))


# Dask's sums add the chunks' terms in another order than the in-memory blocks. Run to a
# tight tol, the Newton iterates agree to ~1e-10 relative (seen: 2e-10 on coef_, 7e-10 on
# probabilities at these sizes): the same number of Newton steps and coefficients and
# probabilities equal to 1e-7 are asserted. (At the classifier's default tol=1e-4 the last
# truncated-CG step may stop one iteration apart: then they agree to ~1e-6, the tolerance.)
_LOG_RTOL = 1e-7


def _three_classes(y):
    return np.digitize(y, [-0.5, 0.3])


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomFeatureClassifier(num_features=64, alpha=1e-2, tol=1e-8, random_state=0),
        lambda: BundledClassifier(num_features=32, alpha=1e-2, tol=1e-8, random_state=0),
    ],
    ids=["random-features", "bundled"],
)
def test_dask_logistic_fit_equals_in_memory_fit(client, make):
    """loss='log' on a Dask array: every gradient and Hessian-vector product of the Newton
    solver is one map-reduce over the chunks (features persisted on the workers), the
    same iterations as in memory; sample weights, three classes."""
    X, y = _data(n=1200)
    labels = _three_classes(y)
    sw = np.random.default_rng(1).uniform(0.5, 2.0, size=len(y))
    ref = make().fit(X, labels, sample_weight=sw)
    Xd, yd = da.from_array(X, chunks=(300, 6)), da.from_array(labels, chunks=300)
    m = make().fit(Xd, yd, sample_weight=da.from_array(sw, chunks=300))
    assert m.n_iter_ == ref.n_iter_ > 1
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=0, atol=_LOG_RTOL * scale)
    np.testing.assert_allclose(m.predict_proba(X), ref.predict_proba(X), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(m.predict(X), ref.predict(X))


def _slow_identity(block):
    time.sleep(0.05)  # gives the test time to kill a worker while chunks are in flight
    return block


def _fit_while_a_worker_dies(client, estimator, X, y):
    """``estimator`` fitted on 50-row Dask chunks of ``(X, y)`` while one of the cluster's
    workers is killed (SIGKILL) mid-fit; asserts that the worker really died."""
    Xd = da.from_array(X, chunks=(50, X.shape[1])).map_blocks(_slow_identity, dtype=X.dtype)
    yd = da.from_array(y, chunks=50)
    pids = client.run(os.getpid)
    victim = sorted(pids.items())[0][1]

    def kill_soon():
        time.sleep(0.6)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    m = estimator.fit(Xd, yd)
    killer.join()
    assert victim not in client.run(os.getpid).values()  # the worker really died
    return m


def test_fit_survives_a_killed_worker(client):
    X, y = _data(n=4000)
    kw = {"num_features": 64, "alpha": 1e-2, "random_state": 0}
    ref = RandomFeatureRidge(**kw).fit(X, y)
    m = _fit_while_a_worker_dies(client, RandomFeatureRidge(**kw), X, y)
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomFeatureClassifier(num_features=32, loss="squared", alpha=1e-2),
        lambda: RandomFeatureClassifier(num_features=32, alpha=0.1, tol=1e-8),
        lambda: BundledRegressor(num_features=32, alpha=1e-2),
        lambda: BundledClassifier(num_features=32, alpha=0.1, tol=1e-8),
    ],
    ids=["classifier-squared", "classifier-log", "bundled-regressor", "bundled-log"],
)
def test_classifier_and_bundled_fits_survive_a_killed_worker(client, make):
    """A worker killed mid-fit (its persisted chunks lost, recomputed from the rows by
    Dask) changes neither the one-pass fits nor the logistic loss's many passes."""
    X, y = _data(n=1000)
    target = y if isinstance(make(), BundledRegressor) else _three_classes(y)
    ref = make().set_params(random_state=0).fit(X, target)
    m = _fit_while_a_worker_dies(client, make().set_params(random_state=0), X, target)
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=0, atol=_LOG_RTOL * scale)


def test_gp_fit_survives_a_killed_worker(client):
    """The GP's optimisation rows are gathered with the in-memory draw and its final
    sufficient statistics are a map-reduce over chunks: a worker killed mid-fit changes
    nothing."""
    X, y = _data(n=3000, d=4)
    kw = {"num_features": 64, "max_optimize_rows": 1000, "random_state": 0}
    ref = RandomFeatureGP(**kw).fit(X, y)
    m = _fit_while_a_worker_dies(client, RandomFeatureGP(**kw), X, y)
    # the chunked sums add in another order than in memory: 5e-7 relative seen at 50-row chunks
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-5, atol=1e-8)
    assert m.lengthscale_ == pytest.approx(ref.lengthscale_, rel=1e-7)


def test_dask_bad_input(client):
    X, y = _data(n=200)
    Xn = X.copy()
    Xn[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RandomFeatureRidge(num_features=8).fit(
            da.from_array(Xn, chunks=50), da.from_array(y, chunks=50)
        )
    with pytest.raises(ValueError, match="rows"):
        RandomFeatureRidge(num_features=8).fit(da.from_array(X, chunks=50), y[:-1])


def test_bundled_dask_fit_equals_in_memory_fit(client):
    """The bundled models fit on Dask through the same base: standardisation from moments
    of the whole array, statistics per chunk; float32 chunks stay float32."""
    X, y = _data(n=1200)
    Xd, yd = da.from_array(X, chunks=(250, 6)), da.from_array(y, chunks=250)
    kw = {"num_features": 32, "depth": 2, "random_state": 0}
    ref = BundledRegressor(**kw).fit(X, y)
    m = BundledRegressor(**kw).fit(Xd, yd)
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-7, atol=1e-9)
    assert m.alpha_ == pytest.approx(ref.alpha_, rel=1e-9)
    np.testing.assert_allclose(m.predict(Xd).compute(), ref.predict(X), rtol=1e-7, atol=1e-9)
    labels = np.where(y > 0.2, "up", "down")
    c_ref = BundledClassifier(loss="squared", alpha=1e-2, **kw).fit(X, labels)
    c = BundledClassifier(loss="squared", alpha=1e-2, **kw).fit(Xd, da.from_array(labels, 250))
    np.testing.assert_allclose(c.coef_, c_ref.coef_, rtol=1e-7, atol=1e-9)
    X32 = Xd.astype(np.float32)
    m32 = BundledRegressor(dtype=None, **kw).fit(X32, yd)
    assert m32.coef_.dtype == np.float32 and m32.predict(X32).compute().dtype == np.float32


def test_dask_data_frame_input(client):
    import dask.dataframe as dd
    import pandas as pd

    X, y = _data(n=600)
    frame = dd.from_pandas(pd.DataFrame(X, columns=[f"x{i}" for i in range(6)]), npartitions=3)
    target = dd.from_pandas(pd.Series(y), npartitions=3)
    kw = {"num_features": 32, "alpha": 1e-2, "random_state": 0}
    ref = RandomFeatureRidge(**kw).fit(X, y)
    m = RandomFeatureRidge(**kw).fit(frame, target)
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-7, atol=1e-9)


def _frames(X, y, npartitions=3):
    import dask.dataframe as dd
    import pandas as pd

    cols = [f"x{i}" for i in range(X.shape[1])]
    return (
        dd.from_pandas(pd.DataFrame(X, columns=cols), npartitions=npartitions),
        dd.from_pandas(pd.Series(y), npartitions=npartitions),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomFeatureClassifier(num_features=32, alpha=1e-2, tol=1e-8, random_state=0),
        lambda: RandomFeatureClassifier(num_features=32, loss="squared", random_state=0),
        lambda: BundledRegressor(num_features=32, random_state=0),
        lambda: BundledClassifier(num_features=32, alpha=1e-2, tol=1e-8, random_state=0),
        lambda: RandomFeatureGP(num_features=32, max_optimize_rows=300, random_state=0),
    ],
    ids=["classifier-log", "classifier-squared", "bundled-regressor", "bundled-log", "gp"],
)
def test_dask_data_frame_input_every_model(client, make):
    """A Dask DataFrame (and Series target) fits like the NumPy arrays it holds: the
    classifiers (text labels), the bundled models and the GP."""
    X, y = _data(n=600, d=4)
    est = make()
    target = y if not hasattr(est, "loss") else np.where(y > 0.2, "up", "down")
    ref = make().fit(X, target)
    m = make().fit(*_frames(X, target))
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=0, atol=_LOG_RTOL * scale)
    if hasattr(est, "classes_") or hasattr(est, "loss"):
        np.testing.assert_array_equal(m.classes_, ref.classes_)


@pytest.mark.parametrize(
    "est",
    [RandomFeatureRidge(num_features=8), NystromRidge(num_centers=8)],
    ids=lambda e: type(e).__name__,
)
def test_data_frame_with_text_columns_is_refused_up_front(client, est):
    """A text column is named from the frame's metadata, before any task runs."""
    import dask.dataframe as dd
    import pandas as pd

    X, y = _data(n=60)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(6)]).assign(city="Oslo")
    frame = dd.from_pandas(df, npartitions=2)
    with pytest.raises(TypeError, match=r"X has non-numeric columns \['city'\]"):
        est.fit(frame, dd.from_pandas(pd.Series(y), npartitions=2))


@pytest.mark.parametrize("bad", [-3.0, np.nan, np.inf])
@pytest.mark.parametrize("loss", ["log", "squared"])
def test_dask_sample_weight_is_checked_on_the_workers(client, bad, loss):
    X, y = _data(n=300)
    labels = np.where(y > 0.2, "up", "down")
    w = np.ones(300)
    w[7] = bad
    with pytest.raises(ValueError, match="sample_weight"):
        RandomFeatureClassifier(num_features=8, loss=loss, alpha=1e-2).fit(
            da.from_array(X, chunks=(100, 6)),
            da.from_array(labels, chunks=100),
            sample_weight=da.from_array(w, chunks=100),
        )
