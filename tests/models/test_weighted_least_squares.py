"""OptimalWeightedLeastSquares: designs, stability diagnostic, bases, persistence, hostile input."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from snnk.features import FourierFeatures
from snnk.io import load_model, save_model
from snnk.models.weighted_least_squares import OptimalWeightedLeastSquares
from snnk.sampling import PolynomialBasis, gram_deviation, orthonormal_basis

GRID = np.linspace(-1, 1, 4000)[:, None]


def runge(x):
    return 1.0 / (1.0 + 25.0 * x[:, 0] ** 2)


def best_error(degree):
    U = orthonormal_basis(PolynomialBasis("legendre", degree)(torch.from_numpy(GRID)))
    f = torch.from_numpy(runge(GRID))
    return float((U @ (U.T @ f) - f).norm() / np.sqrt(len(GRID)))


def rmse(model):
    return float(np.sqrt(np.mean((model.predict(GRID) - runge(GRID)) ** 2)))


def test_repeated_dpp_is_quasi_optimal_and_reports_stability():
    best = best_error(9)
    errs, stab = [], []
    for seed in range(20):
        m = OptimalWeightedLeastSquares(degree=9, random_state=seed).fit(GRID, runge(GRID))
        assert m.rank_ == 10 and len(m.sample_indices_) == 60
        errs.append(rmse(m) / best)
        stab.append(m.stability_)
    assert np.mean(errs) <= 1.15
    assert np.mean(np.array(stab) <= 0.5) >= 0.7
    # the diagnostic is ‖G − I‖₂ of the rows used
    U = orthonormal_basis(PolynomialBasis("legendre", 9)(torch.from_numpy(GRID)))
    assert m.stability_ == pytest.approx(float(gram_deviation(U, m.sample_indices_)[0]), rel=1e-8)


def test_designs_and_weights():
    y = runge(GRID)
    for sampler, n in (("iid", 60), ("volume", 10), ("dpp", 10), ("repeated_dpp", 35)):
        n_arg = None if sampler == "dpp" else n
        m = OptimalWeightedLeastSquares(
            degree=9, sampler=sampler, num_samples=n_arg, random_state=1
        )
        m.fit(GRID, y)
        assert len(m.sample_indices_) == n and np.isfinite(m.coef_).all()
        assert np.all(m.sample_weight_ > 0)
        idx, w = OptimalWeightedLeastSquares(
            degree=9, sampler=sampler, num_samples=n_arg, random_state=1
        ).design(GRID)
        np.testing.assert_array_equal(idx, m.sample_indices_)
        np.testing.assert_allclose(w, m.sample_weight_)
    # only the chosen labels are read
    y2 = np.zeros_like(y)
    y2[m.sample_indices_] = y[m.sample_indices_]
    m2 = OptimalWeightedLeastSquares(degree=9, num_samples=35, random_state=1).fit(GRID, y2)
    np.testing.assert_allclose(m2.coef_, m.coef_)
    # a ridge on G changes little when G is well conditioned
    r = OptimalWeightedLeastSquares(degree=9, alpha=1e-8, random_state=1, num_samples=35)
    np.testing.assert_allclose(r.fit(GRID, y).predict(GRID), m.predict(GRID), atol=1e-5)


def test_exact_on_the_span_multioutput_and_2d():
    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 5, size=(800, 2))
    Y = np.stack([1 + X[:, 0] * X[:, 1], X[:, 0] ** 2 - 2 * X[:, 1]], 1)
    m = OptimalWeightedLeastSquares(degree=2, random_state=0).fit(X, Y)
    assert m.coef_.shape == (6, 2)
    np.testing.assert_allclose(m.predict(X[:50]), Y[:50], atol=1e-8)
    h = OptimalWeightedLeastSquares(basis="hermite", degree=2, random_state=0)
    np.testing.assert_allclose(h.fit(X, Y[:, 0]).predict(X[:50]), Y[:50, 0], atol=1e-8)


def test_feature_map_basis():
    X = np.random.default_rng(1).normal(size=(500, 3))
    phi = FourierFeatures("gaussian", 3, 40, seed=0).double()
    y = phi(torch.from_numpy(X)).numpy() @ np.arange(phi(torch.zeros(1, 3)).shape[1])
    m = OptimalWeightedLeastSquares(basis=phi, num_samples=300, random_state=0).fit(X, y)
    np.testing.assert_allclose(m.predict(X), y, rtol=1e-6, atol=1e-6 * np.abs(y).max())
    with pytest.raises(TypeError, match="cannot save basis"):
        save_model(m, "/tmp/never-written.safetensors")


def test_save_load_round_trip(tmp_path):
    m = OptimalWeightedLeastSquares(degree=6, sampler="volume", random_state=3).fit(
        GRID, runge(GRID)
    )
    path = save_model(m, tmp_path / "wls.safetensors")
    m2 = load_model(path)
    np.testing.assert_array_equal(m2.predict(GRID), m.predict(GRID))
    assert m2.stability_ == m.stability_


def test_hostile_inputs():
    y = runge(GRID)
    bad = GRID.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        OptimalWeightedLeastSquares().fit(bad, y)
    with pytest.raises(ValueError, match="sampler"):
        OptimalWeightedLeastSquares(sampler="sobol").fit(GRID, y)
    with pytest.raises(ValueError, match="exactly m"):
        OptimalWeightedLeastSquares(sampler="dpp", num_samples=30).fit(GRID, y)
    with pytest.raises(ValueError, match="num_samples >= m"):
        OptimalWeightedLeastSquares(sampler="volume", degree=5, num_samples=3).fit(GRID, y)
    with pytest.raises(ValueError, match="degree"):
        OptimalWeightedLeastSquares(degree=-1).fit(GRID, y)
    # huge and tiny scales: the affine map keeps the basis finite
    for s in (1e-150, 1e150):
        m = OptimalWeightedLeastSquares(degree=4, random_state=0).fit(s * GRID, y)
        assert np.isfinite(m.predict(s * GRID)).all()
        assert rmse_scaled(m, s) < 0.2
    # float32 / int inputs, one row
    m = OptimalWeightedLeastSquares(degree=3, random_state=0).fit(GRID.astype(np.float32), y)
    assert m.predict(GRID[:3].astype(np.float32)).dtype == np.float64
    ints = np.arange(40)[:, None]
    assert np.isfinite(OptimalWeightedLeastSquares(degree=2).fit(ints, ints[:, 0] ** 2).coef_).all()
    one = OptimalWeightedLeastSquares(degree=3, random_state=0).fit(GRID[:1], y[:1])
    assert one.rank_ == 1 and one.predict(GRID[:1]) == pytest.approx(y[:1])
    # predicting far outside the pool: a clear message, not inf
    with pytest.raises(ValueError, match="not finite"):
        OptimalWeightedLeastSquares(degree=3, random_state=0).fit(GRID, y).predict(
            np.full((1, 1), 1e300)
        )


def rmse_scaled(model, s):
    return float(np.sqrt(np.mean((model.predict(s * GRID) - runge(GRID)) ** 2)))


def test_global_rngs_untouched():
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    t_state = torch.get_rng_state()
    OptimalWeightedLeastSquares(degree=5, random_state=None).fit(GRID, runge(GRID))
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), t_state)


def test_device_values_and_tensor_input():
    """``device`` is checked at fit (a ``ValueError`` / ``TypeError`` naming it); tensors in
    give tensors out equal to the NumPy answer."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 2))
    y = np.cos(X[:, 0]) + X[:, 1] ** 2
    est = OptimalWeightedLeastSquares(degree=2, random_state=0)
    for bad, err in (("meta", ValueError), ("tpu", ValueError), (1.5, TypeError)):
        with pytest.raises((err, InvalidParameterError), match="device"):
            clone(est).set_params(device=bad).fit(X, y)
    ref = clone(est).fit(X, y)
    got = clone(est).fit(torch.from_numpy(X), torch.from_numpy(y))
    np.testing.assert_array_equal(got.coef_, ref.coef_)
    out = got.predict(torch.from_numpy(X))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), ref.predict(X))
    idx, _ = clone(est).design(torch.from_numpy(X))
    np.testing.assert_array_equal(idx, ref.sample_indices_)
