"""The feature-map transformers: scikit-learn's contract, the module's output bit for bit,
float32, sparse input, Pipeline / ColumnTransformer with pandas output, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from snnk._utils.random import seed_from_random_state
from snnk.features import (
    SAMPLERS,
    NystromFeatures,
    PositiveFeatures,
    make_feature_map,
)
from snnk.features.centers import CENTER_METHODS, register_center_method
from snnk.io import load_model, save_model
from snnk.kernels import NNGP, ArcCosine, Gaussian, resolve_kernel
from snnk.models import RandomFeatureRidge
from snnk.models.transformers import (
    NystromTransformer,
    PositiveFeatureTransformer,
    RandomFeatureTransformer,
)

SEED = 7


def _data(n: int = 60, d: int = 5, seed: int = 0, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


# every sampler (phases alternating), every kernel family, every centre selection
RANDOM_CASES = [
    dict(kernel="gaussian", sampler=s, phases=("random", "paired")[i % 2])
    for i, s in enumerate(SAMPLERS)
] + [
    dict(kernel="laplace", sampler="iid", phases="random"),
    dict(kernel="matern", sampler="qmc", phases="paired"),
    dict(kernel=ArcCosine(order=0), sampler="orthogonal", phases="random"),
    dict(kernel="arccosine", sampler="halton", phases="random"),
    dict(kernel=ArcCosine(order=2), sampler="iid", phases="random"),
    dict(kernel=NNGP(depth=2, bias_variance=0.1), sampler="orthogonal", phases="random"),
]
POSITIVE_CASES = [dict(), dict(hyperbolic=True, M=0.05, sampler="iid"), dict(sampler="qmc")]
NYSTROM_CASES = [dict(center_selection=m) for m in CENTER_METHODS]


def _random(**kw):
    return RandomFeatureTransformer(num_features=32, random_state=0, **kw)


def _positive(**kw):
    return PositiveFeatureTransformer(num_features=16, random_state=0, **kw)


def _nystrom(**kw):
    return NystromTransformer(num_centers=10, random_state=0, **kw)


ESTIMATORS = (
    [_random(**c) for c in RANDOM_CASES]
    + [_positive(**c) for c in POSITIVE_CASES]
    + [_nystrom(**c) for c in NYSTROM_CASES]
)


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_contract(estimator, check):
    check(estimator)


# -- the module's output, bit for bit ------------------------------------------------------------
def _torch_dtype(dtype) -> torch.dtype:
    return torch.float32 if dtype == np.float32 else torch.float64


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", RANDOM_CASES, ids=lambda c: f"{c['kernel']}-{c['sampler']}")
def test_random_features_are_the_module_bit_for_bit(case, dtype):
    X = _data(dtype=dtype)
    est = RandomFeatureTransformer(lengthscale=2.0, num_features=64, random_state=SEED, **case)
    Z = est.fit_transform(X)
    fmap = make_feature_map(
        resolve_kernel(case["kernel"], 2.0),
        X.shape[1],
        64,
        sampler=case["sampler"],
        phases=case["phases"],
        seed=seed_from_random_state(SEED),
        dtype=_torch_dtype(dtype),
    )
    expected = fmap(torch.from_numpy(X)).numpy()
    assert Z.dtype == dtype
    np.testing.assert_array_equal(Z, expected)
    # the fitted map does not depend on the dtype it was fitted with
    other = np.float32 if dtype == np.float64 else np.float64
    np.testing.assert_array_equal(clone(est).fit(X.astype(other)).transform(X), expected)


def test_structured_sampler_in_high_dimension_is_the_module():
    X = _data(n=20, d=70)  # padded to 128 > 64: the Hadamard transform, not dense blocks
    est = RandomFeatureTransformer(
        lengthscale=5.0, num_features=256, sampler="structured", random_state=SEED
    )
    fmap = make_feature_map(
        Gaussian(lengthscale=5.0),
        70,
        256,
        sampler="structured",
        seed=seed_from_random_state(SEED),
        dtype=torch.float64,
    )
    assert fmap.projection.structured
    np.testing.assert_array_equal(est.fit_transform(X), fmap(torch.from_numpy(X)).numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", POSITIVE_CASES, ids=str)
def test_positive_features_are_the_module_bit_for_bit(case, dtype):
    X = _data(dtype=dtype) / 3
    est = PositiveFeatureTransformer(
        num_features=64, temperature=2.0, random_state=SEED, **case
    ).fit(X)
    fmap = PositiveFeatures(
        X.shape[1],
        64,
        temperature=2.0,
        seed=seed_from_random_state(SEED),
        dtype=_torch_dtype(dtype),
        **case,
    )
    Z = est.transform(X)
    assert Z.dtype == dtype and (Z > 0).all()
    np.testing.assert_array_equal(Z, fmap(torch.from_numpy(X)).numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", list(CENTER_METHODS))
def test_nystrom_features_are_the_module_bit_for_bit(method, dtype):
    X, Y = _data(dtype=dtype), _data(n=15, seed=1, dtype=dtype)
    est = NystromTransformer(
        lengthscale=2.0, num_centers=12, center_selection=method, random_state=SEED
    ).fit(X)
    fmap = NystromFeatures(
        Gaussian(lengthscale=2.0), 12, centers=method, seed=seed_from_random_state(SEED)
    ).fit(torch.from_numpy(X))
    Z = est.transform(Y)
    assert Z.dtype == dtype and Z.shape == (15, 12)
    np.testing.assert_array_equal(Z, fmap(torch.from_numpy(Y)).numpy())
    assert est.rank_ == fmap.rank_ and est.compute_dtype_ == np.dtype(dtype).name


@pytest.mark.parametrize("kernel", ["gaussian", "laplace", "arccosine"])
def test_defaults_are_random_feature_ridges_feature_map(kernel):
    """Same parameters, same map: "scale", and the default sampler on the L1 Laplace kernel
    (which has no orthogonal draw: i.i.d.)."""
    X = 3.0 * _data() + 1.0
    y = X[:, 0]
    for dtype in (np.float64, np.float32):
        Xd = X.astype(dtype)
        ridge = RandomFeatureRidge(kernel=kernel, num_features=64, random_state=SEED).fit(Xd, y)
        est = RandomFeatureTransformer(kernel=kernel, num_features=64, random_state=SEED).fit(Xd)
        assert est.lengthscale_ == ridge.lengthscale_
        expected = ridge.feature_map_(torch.from_numpy(Xd)).numpy()
        np.testing.assert_array_equal(est.transform(Xd), expected)


def test_features_estimate_the_kernel():
    """Nyström with every row a centre reproduces K; Fourier features estimate it within
    their standard error (relative Frobenius error ~ 1/√D: 0.016 at D = 8192, margin 3x)."""
    X = _data(n=40)
    K = Gaussian(lengthscale=2.0)(torch.from_numpy(X)).numpy()
    Z = NystromTransformer(lengthscale=2.0, num_centers=40, random_state=0).fit_transform(X)
    np.testing.assert_allclose(Z @ Z.T, K, atol=1e-8)
    for seed in range(3):
        est = RandomFeatureTransformer(lengthscale=2.0, num_features=8192, random_state=seed)
        Z = est.fit_transform(X)
        assert np.linalg.norm(Z @ Z.T - K) / np.linalg.norm(K) < 0.05


# -- sparse input ----------------------------------------------------------------------------------
SPARSE_CASES = [_random(**c) for c in RANDOM_CASES if not isinstance(c["kernel"], NNGP)] + [
    _positive(**c) for c in POSITIVE_CASES
]


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("est", SPARSE_CASES, ids=lambda e: repr(e)[:60])
def test_sparse_input_matches_dense(est, fmt):
    X = _data(d=6)
    X[np.abs(X) < 0.8] = 0.0
    Xs = sparse.csr_matrix(X).asformat(fmt)
    dense = clone(est).fit(X).transform(X)
    got = clone(est).fit(Xs).transform(Xs)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-12)
    got32 = clone(est).fit(X).transform(Xs.astype(np.float32))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, dense, rtol=1e-4, atol=1e-5)


def test_wide_sparse_input_is_projected_without_densifying():
    d = 100_000  # a dense float64 copy would take 80 MB
    X = sparse.random(100, d, density=1e-4, format="csr", random_state=0, dtype=np.float64)
    est = RandomFeatureTransformer(lengthscale=1.0, num_features=16, sampler="iid", random_state=0)
    Z = est.fit_transform(X)
    W = est.feature_map_.projection.weight.numpy()
    rows = [0, 1]
    expected = np.cos(X[rows] @ W.T + est.feature_map_.offset.numpy()) * np.sqrt(2 / 16)
    np.testing.assert_allclose(Z[rows], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "est",
    [RandomFeatureTransformer(kernel="nngp", num_features=8), NystromTransformer(num_centers=4)],
    ids=["nngp", "nystrom"],
)
def test_maps_that_are_not_projections_refuse_sparse(est):
    with pytest.raises(TypeError, match=r"[Ss]parse"):
        est.fit(sparse.csr_matrix(_data()))


# -- ecosystem: names, pandas, Pipeline, ColumnTransformer ---------------------------------------
def test_feature_names_and_pandas_output():
    df = pd.DataFrame(_data(d=3), columns=["a", "b", "c"])
    est = RandomFeatureTransformer(num_features=8, random_state=0).set_output(transform="pandas")
    out = est.fit_transform(df)
    names = [f"randomfeaturetransformer{i}" for i in range(8)]
    assert list(out.columns) == names and list(est.get_feature_names_out()) == names
    assert list(est.feature_names_in_) == ["a", "b", "c"]
    nys = NystromTransformer(num_centers=5, random_state=0).fit(df)
    assert list(nys.get_feature_names_out()) == [f"nystromtransformer{i}" for i in range(5)]


def test_pipeline_and_column_transformer_with_pandas_output():
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n) * 100,
            "cut": rng.choice(["fair", "good", "ideal"], size=n),
        }
    )
    y = np.sin(df["x1"]) + df["x2"] / 100 + (df["cut"] == "ideal")
    numeric = make_pipeline(
        StandardScaler(), RandomFeatureTransformer(num_features=16, random_state=0)
    )
    prep = ColumnTransformer(
        [
            ("rff", numeric, ["x1", "x2"]),
            ("nys", NystromTransformer(num_centers=6, random_state=0), ["x1"]),
            ("pos", PositiveFeatureTransformer(num_features=4, random_state=0), ["x2"]),
            ("cat", OneHotEncoder(sparse_output=False), ["cut"]),
        ]
    ).set_output(transform="pandas")
    model = make_pipeline(prep, Ridge(alpha=1e-3)).fit(df, y)
    out = model[0].transform(df)
    assert isinstance(out, pd.DataFrame) and out.shape == (n, 16 + 6 + 4 + 3)
    assert out.columns[0] == "rff__randomfeaturetransformer0"
    assert "nys__nystromtransformer5" in out.columns and "pos__positivefeaturetransformer3" in out
    assert out.dtypes.eq(np.float64).all()
    # the step's columns are the transformer's own output
    rff = model[0].named_transformers_["rff"]
    np.testing.assert_array_equal(
        out.filter(like="rff__").to_numpy(), rff.transform(df[["x1", "x2"]]).to_numpy()
    )
    assert model.score(df, y) > 0.9


# -- persistence, RNGs, clone --------------------------------------------------------------------
@pytest.mark.parametrize(
    "est",
    [
        _random(sampler="structured", phases="paired"),
        _random(kernel=NNGP(depth=2, bias_variance=0.1)),
        _positive(hyperbolic=True),
        _nystrom(center_selection="kmeans"),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_save_load_is_bit_exact(est, dtype, tmp_path):
    X = _data(dtype=dtype)
    fitted = clone(est).fit(X)
    back = load_model(save_model(fitted, tmp_path / "t.snnk"))
    assert type(back) is type(fitted) and back.get_params().keys() == fitted.get_params().keys()
    for Y in (X, X.astype(np.float64)):
        np.testing.assert_array_equal(back.transform(Y), fitted.transform(Y))


@pytest.mark.parametrize("est", ESTIMATORS[:1] + ESTIMATORS[-7:-6] + ESTIMATORS[-8:-7])
@pytest.mark.parametrize("random_state", [None, 3])
def test_global_rngs_untouched(est, random_state):
    X = _data()
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 - the global RNG is what this test watches
    t_state, n_state = torch.get_rng_state().clone(), np.random.get_state()  # noqa: NPY002
    clone(est).set_params(random_state=random_state).fit(X).transform(X)
    assert torch.equal(t_state, torch.get_rng_state())
    after = np.random.get_state()  # noqa: NPY002
    assert all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        for a, b in zip(n_state, after, strict=True)
    )


def test_random_state_none_draws_fresh_maps_and_clone_repeats():
    X = _data()
    a = RandomFeatureTransformer(num_features=8).fit_transform(X)
    b = RandomFeatureTransformer(num_features=8).fit_transform(X)
    assert not np.array_equal(a, b)
    est = NystromTransformer(num_centers=5, random_state=4).fit(X)
    np.testing.assert_array_equal(clone(est).fit(X).transform(X), est.transform(X))


# -- hostile input and bad options -----------------------------------------------------------------
@pytest.mark.parametrize(
    "est", [_random(), _positive(), _nystrom()], ids=lambda e: type(e).__name__
)
def test_hostile_input(est):
    X = _data()
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 1] = bad
        with pytest.raises(ValueError, match=r"NaN|infinity"):
            clone(est).fit(Xb)
        with pytest.raises(ValueError, match=r"NaN|infinity"):
            clone(est).fit(X).transform(Xb)
    with pytest.raises(ValueError, match="0 sample"):
        clone(est).fit(X[:0])
    with pytest.raises(ValueError, match="expecting 5 features"):
        clone(est).fit(X).transform(X[:, :4])
    with pytest.raises(TypeError, match="file path"):
        clone(est).fit("data.csv")
    # one row, integer and half-precision input: finite float64 features
    for Xo in (X[:1], np.arange(20).reshape(4, 5), X.astype(np.float16)):
        Z = clone(est).fit(X).transform(Xo)
        assert Z.dtype == np.float64 and np.isfinite(Z).all()
    # huge and tiny scales: finite features (Nyström and Fourier are bounded)
    for scale in (1e-30, 1e30):
        Z = clone(est).fit(X * scale).transform(X * scale)
        assert np.isfinite(Z).all()


@pytest.mark.parametrize(
    ("est", "match"),
    [
        (RandomFeatureTransformer(num_features=0), "num_features"),
        (RandomFeatureTransformer(sampler="sobol"), "sampler"),
        (RandomFeatureTransformer(lengthscale=-1.0), "lengthscale"),
        (RandomFeatureTransformer(phases="none"), "phases"),
        (PositiveFeatureTransformer(M=-0.3), "'M'"),
        (PositiveFeatureTransformer(temperature=0.0), "temperature"),
        (NystromTransformer(center_selection="random"), "center_selection"),
        (NystromTransformer(rcond=2.0), "rcond"),
    ],
)
def test_bad_parameters_name_themselves(est, match):
    with pytest.raises(InvalidParameterError, match=match):
        est.fit(_data())


@pytest.mark.parametrize("as_sparse", [False, True])
@pytest.mark.parametrize(
    ("est", "option"),
    [(RandomFeatureTransformer(num_features=8), "lengthscale"), (_positive(), "temperature")],
)
def test_scale_rules_that_overflow_say_so(est, option, as_sparse):
    X = _data() * 1e200
    X = sparse.csr_matrix(X) if as_sparse else X
    if option == "lengthscale" and not as_sparse:
        # the estimators' rule computes "scale" in units of max|X| when Var(X) overflows
        fitted = clone(est).fit(X)
        assert np.isfinite(fitted.lengthscale_) and np.isfinite(fitted.transform(X)).all()
        return
    with pytest.raises(ValueError, match=f"scale X first .* or pass a numeric {option}"):
        clone(est).fit(X)
    # a number instead of "scale" fits such data (the features are finite)
    fitted = clone(est).set_params(**{option: 1.0}).fit(X)
    assert np.isfinite(fitted.transform(X)).all()


def test_sparse_scale_rules_equal_the_dense_ones():
    X = 2.0 * _data(d=6) + 0.5
    X[np.abs(X) < 1.0] = 0.0
    for est in (RandomFeatureTransformer(num_features=8), _positive()):
        dense, sp = clone(est).fit(X), clone(est).fit(sparse.csr_matrix(X))
        name = "lengthscale_" if hasattr(dense, "lengthscale_") else "temperature_"
        np.testing.assert_allclose(getattr(sp, name), getattr(dense, name), rtol=1e-12)


def test_bad_combinations_explain_the_fix():
    X = _data()
    with pytest.raises(ValueError, match="sampler='iid'"):
        RandomFeatureTransformer(kernel="laplace", sampler="structured").fit(X)
    with pytest.raises(ValueError, match="even"):
        RandomFeatureTransformer(num_features=7, phases="paired").fit(X)
    with pytest.raises(ValueError, match="no random feature map"):
        RandomFeatureTransformer(kernel="polynomial").fit(X)
    with pytest.raises(ValueError, match="overflows"):
        est = RandomFeatureTransformer(kernel=ArcCosine(order=2), num_features=8)
        est.fit(X).transform(X.astype(np.float32) * 1e20)
    with pytest.warns(UserWarning, match="num_centers=100 exceeds the 60 rows"):
        assert NystromTransformer(num_centers=100).fit(X).transform(X).shape == (60, 60)


def test_a_registered_centre_method_is_accepted():
    def first_rows(X, m, *, weight, generator, kernel):
        return torch.arange(m)

    CENTER_METHODS_BEFORE = dict(CENTER_METHODS)
    register_center_method("first-rows-test", first_rows)
    try:
        X = _data()
        est = NystromTransformer(num_centers=4, center_selection="first-rows-test").fit(X)
        np.testing.assert_array_equal(est.feature_map_.centers.numpy(), X[:4])
    finally:
        CENTER_METHODS.clear()
        CENTER_METHODS.update(CENTER_METHODS_BEFORE)


# -- device= and tensor input (issue #17) --------------------------------------------------------
@pytest.mark.parametrize(
    "make", [_random, _positive, _nystrom], ids=["random", "positive", "nystrom"]
)
def test_device_values_and_tensor_input(make):
    """``device`` is checked at fit (an error naming it, before any work); tensors in give
    tensors out (float32 kept) equal to the NumPy answer; the fitted map lives on the fit
    device."""
    X = _data()
    for bad, err in (("meta", ValueError), ("tpu", ValueError), (2, InvalidParameterError)):
        with pytest.raises(err, match="device"):
            make(device=bad).fit(X)
    ref = make().fit(X)
    est = make(device="cpu").fit(torch.from_numpy(X))
    assert all(b.device.type == "cpu" for b in est.feature_map_.buffers())
    for dtype in (np.float64, np.float32):
        out = est.transform(torch.from_numpy(X.astype(dtype)))
        assert isinstance(out, torch.Tensor) and out.dtype == _torch_dtype(dtype)
        np.testing.assert_array_equal(out.numpy(), ref.transform(X.astype(dtype)))
