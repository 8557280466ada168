"""BundledRegressor / BundledClassifier: scikit-learn contract, closed form, errors."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_regression

from snnk.models import BundledClassifier, BundledRegressor

# scikit-learn's check_estimator for these models runs in tests/models/test_common.py


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
    """A float32 tower (dtype="float32", or dtype=None on float32 input) predicts what the
    float64 tower does up to float32 rounding; float32 input gives float32 predictions."""
    X, y = make_regression(150, 5, noise=0.5, random_state=1)
    m32 = BundledRegressor(num_features=64, alpha=1.0, dtype="float32", random_state=0).fit(X, y)
    m64 = BundledRegressor(num_features=64, alpha=1.0, dtype="float64", random_state=0).fit(X, y)
    assert m32.network_.weight.dtype == torch.float32 and m32.coef_.dtype == np.float32
    assert m64.network_.weight.dtype == torch.float64 and m64.coef_.dtype == np.float64
    p32, p64 = m32.predict(X), m64.predict(X)
    assert not np.array_equal(p32, p64)  # really two precisions
    np.testing.assert_allclose(p32, p64, rtol=1e-3, atol=1e-3 * np.abs(p64).max())
    follow = BundledRegressor(num_features=64, alpha=1.0, dtype=None, random_state=0)
    follow.fit(X.astype(np.float32), y)
    assert follow.compute_dtype_ == "float32" and follow.coef_.dtype == np.float32
    assert follow.predict(X.astype(np.float32)).dtype == np.float32
    assert m64.predict(X.astype(np.float32)).dtype == np.float32  # output follows the input


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
        BundledRegressor(alpha="cv").fit(X, y)
    with pytest.raises(ValueError, match="loss"):
        BundledClassifier(loss="hinge").fit(X, y > 0)


def _chunks(X, y, sizes):
    out, start = [], 0
    for s in sizes:
        out.append((X[start : start + s], y[start : start + s]))
        start += s
    return out


@pytest.mark.parametrize("cls", [BundledRegressor, BundledClassifier])
def test_streams_files_and_partial_fit_equal_the_one_shot_fit(cls, tmp_path):
    """Lists of chunks and files pool the standardisation over all rows, so they equal the
    in-memory fit; a one-shot iterator and partial_fit standardise on their first chunk,
    so they equal each other, and the in-memory fit when the first chunk has the moments of
    all rows (here: the second half is the first half reversed)."""
    import pandas as pd

    X, y = make_regression(300, 4, noise=0.5, random_state=2)
    y = y if cls is BundledRegressor else np.where(y > 0, "a", "b")
    kw = {"num_features": 48, "depth": 2, "alpha": 0.05, "random_state": 1}
    if cls is BundledClassifier:
        kw["loss"] = "squared"
    ref = cls(**kw).fit(X, y)
    listed = cls(**kw).fit(_chunks(X, y, [100, 1, 199]))
    frame = pd.DataFrame(X, columns=list("abcd")).assign(t=y)
    frame.to_csv(tmp_path / "d.csv", index=False)
    csv = cls(**kw).fit(tmp_path / "d.csv", "t", chunk_rows=70)
    for other in (listed, csv):
        np.testing.assert_allclose(other.coef_, ref.coef_, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(other.intercept_, ref.intercept_, rtol=1e-9, atol=1e-11)
    sizes = [120, 100, 80]
    stream = cls(**kw).fit(iter(_chunks(X, y, sizes)))
    pf = cls(**kw)
    for Xc, yc in _chunks(X, y, sizes):
        pf.partial_fit(Xc, yc, **({"classes": ["a", "b"]} if cls is BundledClassifier else {}))
    np.testing.assert_allclose(pf.coef_, stream.coef_, rtol=1e-9, atol=1e-11)
    assert pf.n_samples_seen_ == 300
    half = np.vstack([X[:150], X[:150][::-1]])
    ref2 = cls(**kw).fit(half, y)
    pf2 = cls(**kw)
    for Xc, yc in _chunks(half, y, [150, 150]):
        pf2.partial_fit(Xc, yc, **({"classes": ["a", "b"]} if cls is BundledClassifier else {}))
    np.testing.assert_allclose(pf2.coef_, ref2.coef_, rtol=1e-8, atol=1e-10)


def test_loo_and_gcv_choose_alpha():
    """LOO's score at the chosen alpha is the explicit leave-one-out error of ridge on the
    model's own (fixed) features."""
    X, y = make_regression(120, 4, noise=5.0, random_state=3)
    loo = BundledRegressor(num_features=32, alpha="loo", random_state=0).fit(X, y)
    gcv = BundledRegressor(num_features=32, alpha="gcv", random_state=0).fit(X, y)
    for m in (loo, gcv):
        assert m.cv_scores_.shape == (29,) and m.alpha_ > 0
    F = loo.random_features(X)
    errs = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        Fk, yk = F[keep], y[keep]
        fm, ym = Fk.mean(0), yk.mean()
        Fc = Fk - fm
        U = np.linalg.solve(Fc.T @ Fc + loo.alpha_ * np.eye(32), Fc.T @ (yk - ym))
        errs.append(((F[i] - fm) @ U + ym - y[i]) ** 2)
    assert loo.cv_scores_.min() == pytest.approx(np.mean(errs), rel=1e-8)
    with pytest.raises(ValueError, match="alpha='loo'"):
        BundledRegressor(num_features=8, alpha="loo").fit(iter(_chunks(X, y, [60, 60])))


def test_deprecated_aliases_warn_and_map():
    X, y = make_regression(60, 3, random_state=0)
    new = BundledRegressor(num_features=16, sampler="iid", block_rows=20, random_state=0).fit(X, y)
    with pytest.warns(FutureWarning, match="sampler="):
        old = BundledRegressor(
            num_features=16, orthogonal=False, block_rows=20, random_state=0
        ).fit(X, y)
    np.testing.assert_array_equal(old.coef_, new.coef_)
    with pytest.warns(FutureWarning, match="block_rows"):
        bs = BundledRegressor(num_features=16, sampler="iid", batch_size=20, random_state=0)
        bs.fit(X, y)
    np.testing.assert_array_equal(bs.coef_, new.coef_)
    ortho = BundledRegressor(num_features=16, random_state=0).fit(X, y)
    assert not np.array_equal(ortho.coef_, new.coef_)  # the sampler changes the draw
