"""The estimators of ``snnk.models`` on hostile input.

Estimators validate their arrays through scikit-learn's ``validate_data`` /
``_check_sample_weight`` (the scikit-learn contract asks for those messages), so here a clear
error may also come from ``sklearn/utils/validation.py``; a raw error from torch, NumPy or
SciPy still fails.
"""

from __future__ import annotations

import copy
import math
import traceback

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_classifier

from snnk.features import NystromFeatures
from snnk.kernels import Gaussian
from snnk.models import (
    BundledClassifier,
    BundledRegressor,
    DeepKernelMachineClassifier,
    DeepKernelMachineRegressor,
    KernelRidgeCG,
    NystromRidge,
    OptimalWeightedLeastSquares,
    RandomFeatureClassifier,
    RandomFeatureGP,
    RandomFeatureRidge,
)
from tests.adversarial.harness import CLEAR, expect_finite

ESTIMATORS = {
    "rf_ridge": lambda: RandomFeatureRidge(num_features=32, random_state=0),
    "rf_clf": lambda: RandomFeatureClassifier(num_features=16, random_state=0),
    "bundled_reg": lambda: BundledRegressor(num_features=32, random_state=0),
    "bundled_clf": lambda: BundledClassifier(num_features=16, random_state=0),
    "nystrom": lambda: NystromRidge(num_centers=20, lengthscale=2.0, alpha=1e-2, random_state=0),
    "krcg": lambda: KernelRidgeCG(num_centers=10, lengthscale=2.0, alpha=1e-2, random_state=0),
    "gp": lambda: RandomFeatureGP(num_features=64, optimize=False, random_state=0),
    "dkm_reg": lambda: DeepKernelMachineRegressor(
        depth=1, num_inducing=8, max_iter=3, random_state=0
    ),
    "dkm_clf": lambda: DeepKernelMachineClassifier(
        depth=1, num_inducing=8, max_iter=3, random_state=0
    ),
    "owls": lambda: OptimalWeightedLeastSquares(degree=2, random_state=0),
}
NAMES = sorted(ESTIMATORS)
#: fit(X, y, sample_weight)
WEIGHTED = [n for n in NAMES if n not in ("gp", "dkm_reg", "dkm_clf", "owls")]
PARTIAL = ["rf_ridge", "rf_clf", "bundled_reg", "bundled_clf"]
#: partial_fit needs loss="squared" for the classifiers
PARTIAL_PARAMS = {"rf_clf": {"loss": "squared"}, "bundled_clf": {"loss": "squared"}}
REGRESSORS = [n for n in NAMES if not is_classifier(ESTIMATORS[n]())]


def _data(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] + 0.05 * rng.normal(size=n)
    return X, y


def _target(est, y):
    return np.where(y > np.median(y), 1, 0) if is_classifier(est) else y


def _outputs(est, X):
    out = [est.predict(X)]
    for name in ("predict_proba", "decision_function"):
        if hasattr(est, name):
            out.append(getattr(est, name)(X))
    return out


def _clear_origin(exc: BaseException) -> bool:
    """Raised by snnk, re-raised by snnk with a message of its own, or by scikit-learn's
    input validation (the scikit-learn estimator contract)."""
    files = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    if not files:
        return False
    last = files[-1]
    if "/snnk/" in last and "/tests/" not in last:
        return True
    if "sklearn/utils/validation.py" in last or "sklearn/utils/_param_validation" in last:
        return True
    return exc.__cause__ is not None and any("/snnk/" in f for f in files)


def expect_clear(fn, *names: str) -> BaseException:
    with pytest.raises(CLEAR) as info:
        fn()
    exc = info.value
    assert _clear_origin(exc), f"a raw error from outside snnk: {exc!r}"
    assert any(n in str(exc) for n in names), f"the message names none of {names}: {exc}"
    return exc


def correct_or_clear(fn, check, *names: str) -> str:
    try:
        out = fn()
    except CLEAR as exc:
        assert _clear_origin(exc), f"a raw error from outside snnk: {exc!r}"
        assert any(n in str(exc) for n in names), f"the message names none of {names}: {exc}"
        return "error"
    check(out)
    return "result"


# -- non-finite values -----------------------------------------------------------------------------
@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["X", "y", "sample_weight"])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_fit(name, where, bad):
    if where == "sample_weight" and name not in WEIGHTED:
        pytest.skip("fit takes no sample_weight")
    est = ESTIMATORS[name]()
    X, y = _data()
    y = _target(est, y).astype(np.float64)
    w = np.ones(len(y)) if where == "sample_weight" else None
    {"X": X[3], "y": y[3:4], "sample_weight": w[3:4] if w is not None else None}[where][0] = bad
    kw = {} if w is None else {"sample_weight": w}
    expect_clear(lambda: est.fit(X, y, **kw), where, "Input contains")


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_predict(name, bad):
    est = ESTIMATORS[name]()
    X, y = _data()
    est.fit(X, _target(est, y))
    Xb = X[:5].copy()
    Xb[2, 0] = bad
    expect_clear(lambda: est.predict(Xb), "X")


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("bad", [-1.0, math.nan])
@pytest.mark.parametrize("name", WEIGHTED)
def test_bad_sample_weights_refused(name, bad):
    est = ESTIMATORS[name]()
    X, y = _data()
    w = np.ones(len(y))
    w[5] = bad
    expect_clear(lambda: est.fit(X, _target(est, y), sample_weight=w), "sample_weight")


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("name", PARTIAL)
def test_negative_sample_weights_refused_by_partial_fit(name):
    est = ESTIMATORS[name]().set_params(**PARTIAL_PARAMS.get(name, {}))
    X, y = _data()
    w = np.ones(len(y))
    w[5] = -2.0
    kw = {"classes": [0, 1]} if is_classifier(est) else {}
    expect_clear(
        lambda: est.partial_fit(X, _target(est, y), sample_weight=w, **kw), "sample_weight"
    )


# -- offsets and scales --------
def _offset_data(offset, n=60, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X32 = (offset + rng.normal(size=(n, d))).astype(np.float32)
    Xc = X32.astype(np.float64) - offset  # the same numbers, centred exactly (offset is exact)
    y = (np.sin(Xc[:, 0]) + 0.5 * Xc[:, 1]).astype(np.float32)
    return X32, y


@pytest.mark.category("scale")
@pytest.mark.parametrize("offset", [1e4, 1e6])
@pytest.mark.parametrize("name", ["nystrom", "krcg"])
def test_offset_float32_matches_float64(name, offset):
    """Acceptance of issue 15: float32 data far from the origin, predictions within 1e-5
    relative of the same model fitted on the same numbers in float64."""
    X32, y = _offset_data(offset)
    est32 = ESTIMATORS[name]().fit(X32, y)
    est64 = ESTIMATORS[name]().fit(X32.astype(np.float64), y.astype(np.float64))
    p32 = est32.predict(X32).astype(np.float64)
    p64 = est64.predict(X32.astype(np.float64))
    expect_finite(p32)
    err = np.max(np.abs(p32 - p64)) / np.max(np.abs(p64))
    print(f"\n{name} offset={offset:g}: max |p32 - p64| / max |p64| = {err:.3g}")
    assert err <= 1e-5


@pytest.mark.category("scale")
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
def test_offset_float32_nystrom_features(offset, seed):
    """Features of float32 data (and their Gram matrix) match the float64 map of the same
    numbers to 1e-5 relative on entries >= 1e-3: K_CC^{-1/2} (condition number ≈ 5e4 here)
    is kept and applied in float64; a float32 one was off by ~1e-3 at every offset."""
    X32, _ = _offset_data(offset, seed=seed)
    fm32 = NystromFeatures(Gaussian(2.0), 15, seed=seed).fit(torch.from_numpy(X32))
    fm64 = NystromFeatures(Gaussian(2.0), 15, seed=seed).fit(
        torch.from_numpy(X32.astype(np.float64))
    )
    assert torch.equal(fm32.centers.double(), fm64.centers)  # the same centres
    F32 = fm32(torch.from_numpy(X32))
    assert F32.dtype == torch.float32
    F32 = F32.double()
    F64 = fm64(torch.from_numpy(X32.astype(np.float64)))
    expect_finite(F32)
    for out, ref in ((F32, F64), (F32 @ F32.T, F64 @ F64.T)):
        big = ref.abs() >= 1e-3
        err = float(((out - ref).abs()[big] / ref.abs()[big]).max())
        assert err <= 1e-5, f"offset={offset:g} seed={seed}: relative error {err:.3g}"


@pytest.mark.category("scale")
@pytest.mark.parametrize("offset", [1e4, 1e6])
@pytest.mark.parametrize("name", ["rf_ridge", "bundled_reg", "gp"])
def test_offset_float32_random_features(name, offset):
    """Random-feature models: finite, and within ``tol`` of max |prediction| of the float64
    fit: 1e-2 at offset 1e4, 5e-2 at 1e6. A random Fourier feature ``cos(w·x + b)`` of float32
    data at 1e6 carries a phase error of about ``1e6 · 6e-8 · |w|`` ≈ 0.03 rad (``ulp(1e6)``
    is 0.0625), inherent to float32 unless the map centres the data first."""
    X32, y = _offset_data(offset)
    est32 = ESTIMATORS[name]().fit(X32, y)
    est64 = ESTIMATORS[name]().fit(X32.astype(np.float64), y.astype(np.float64))
    p32 = est32.predict(X32).astype(np.float64)
    p64 = est64.predict(X32.astype(np.float64))
    expect_finite(p32)
    err = np.max(np.abs(p32 - p64)) / np.max(np.abs(p64))
    print(f"\n{name} offset={offset:g}: max |p32 - p64| / max |p64| = {err:.3g}")
    assert err <= (1e-2 if offset < 1e5 else 5e-2)


@pytest.mark.category("scale")
@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e8, 1e30])
@pytest.mark.parametrize("name", NAMES)
def test_x_scale(name, scale):
    """Tiny or huge X: finite predictions within the range of y, or a clear error."""
    est = ESTIMATORS[name]()
    X, y = _data()
    y = _target(est, y)

    def fit_predict():
        return _outputs(est.fit(scale * X, y), scale * X)

    def check(outs):
        expect_finite(outs)
        if not is_classifier(est):
            span = np.ptp(y)
            assert np.all(np.abs(outs[0] - y.mean()) <= 2 * span)

    correct_or_clear(fit_predict, check, "X", "scale", "overflow", "standardi")


@pytest.mark.category("scale")
@pytest.mark.parametrize("scale", [1e-30, 1e30])
@pytest.mark.parametrize("name", REGRESSORS)
def test_y_scale_equivariant(name, scale):
    """Scaling y scales the predictions (ridge with GCV, a GP with normalised y; CG stops at
    a relative tolerance of 1e-6, hence rtol 1e-5)."""
    X, y = _data()
    ref = ESTIMATORS[name]().fit(X, y).predict(X)
    out = ESTIMATORS[name]().fit(X, scale * y).predict(X)
    expect_finite(out)
    np.testing.assert_allclose(out / scale, ref, rtol=1e-5, atol=1e-9 * np.abs(ref).max())


@pytest.mark.category("scale")
@pytest.mark.parametrize("name", NAMES)
def test_identical_rows(name):
    est = ESTIMATORS[name]()
    rng = np.random.default_rng(3)
    X = np.tile(rng.normal(size=(1, 3)), (30, 1))
    y = _target(est, rng.normal(size=30))

    def check(outs):
        expect_finite(outs)
        if not is_classifier(est):
            assert np.all(np.abs(outs[0] - y.mean()) <= np.ptp(y)), outs[0][:3]

    correct_or_clear(lambda: _outputs(est.fit(X, y), X[:4]), check, "X", "rows", "distinct")


# -- dtypes --------
def _as(X, kind):
    if kind == "float16":
        return X.astype(np.float16)
    if kind == "int":
        return np.round(3 * X).astype(np.int64)
    if kind == "complex":
        return X.astype(np.complex128)
    if kind == "object":
        return X.astype(object)
    if kind == "string":
        return X.astype(str)
    if kind == "words":
        return np.where(X > 0, "up", "down")
    if kind == "bool":
        return X > 0
    raise AssertionError(kind)


@pytest.mark.category("dtype")
@pytest.mark.parametrize("kind", ["float16", "int", "object", "bool", "string"])
@pytest.mark.parametrize("name", NAMES)
def test_numeric_dtypes_fit(name, kind):
    """Numbers of another dtype (and strings of numbers) are converted or refused clearly."""
    est = ESTIMATORS[name]()
    X, y = _data()
    Xk = _as(X, kind)
    y = _target(est, y)
    ref = clone(est).fit(Xk.astype(np.float64), y)

    def check(outs):
        expect_finite(outs)
        for o, r in zip(outs, _outputs(ref, Xk.astype(np.float64)), strict=True):
            if o.dtype.kind == "f":
                np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(o, r)

    correct_or_clear(lambda: _outputs(est.fit(Xk, y), Xk), check, "X", "dtype")


@pytest.mark.category("dtype")
@pytest.mark.parametrize("name", PARTIAL)
def test_text_refused_in_predict_and_in_chunks(name):
    """Text reaching predict, or a chunk of a stream, gets the TypeError naming X too."""
    est = ESTIMATORS[name]()
    X, y = _data()
    y = _target(est, y)
    words = np.where(X > 0, "up", "down")
    est.fit(X, y)
    exc = expect_clear(lambda: est.predict(words), "X holds text")
    assert isinstance(exc, TypeError)
    exc = expect_clear(lambda: clone(est).fit([(X, y), (words, y)]), "chunk 1 X holds text")
    assert isinstance(exc, TypeError)


@pytest.mark.category("dtype")
@pytest.mark.parametrize("kind", ["complex", "words"])
@pytest.mark.parametrize("name", NAMES)
def test_non_numeric_dtypes_refused(name, kind):
    est = ESTIMATORS[name]()
    X, y = _data()
    expect_clear(
        lambda: est.fit(_as(X, kind), _target(est, y)), "X", "Complex", "complex", "string"
    )


@pytest.mark.category("dtype")
@pytest.mark.parametrize("name", REGRESSORS)
def test_complex_or_string_y_refused(name):
    X, y = _data()
    expect_clear(lambda: ESTIMATORS[name]().fit(X, y.astype(np.complex128)), "y", "omplex")
    words = np.where(y > 0, "up", "down")
    expect_clear(lambda: ESTIMATORS[name]().fit(X, words), "y", "string", "numeric")


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int64", torch.float16, "nope"])
@pytest.mark.parametrize("name", [n for n in NAMES if "dtype" in ESTIMATORS[n]().get_params()])
def test_dtype_parameter(name, dtype):
    est = ESTIMATORS[name]().set_params(dtype=dtype)
    X, y = _data()
    expect_clear(lambda: est.fit(X, _target(est, y)), "dtype")


# -- shapes --------
@pytest.mark.category("shape")
@pytest.mark.parametrize("name", NAMES)
def test_empty(name):
    est = ESTIMATORS[name]()
    expect_clear(lambda: est.fit(np.zeros((0, 3)), np.zeros(0)), "X", "sample")


@pytest.mark.category("shape")
@pytest.mark.parametrize("name", NAMES)
def test_one_row(name):
    est = ESTIMATORS[name]()
    X, y = _data(n=1)
    y = _target(est, y)

    def check(outs):
        expect_finite(outs)
        if not is_classifier(est):
            np.testing.assert_allclose(outs[0], y, atol=1.0 + abs(y[0]))

    correct_or_clear(lambda: _outputs(est.fit(X, y), X), check, "X", "sample", "class", "row")


@pytest.mark.category("shape")
@pytest.mark.parametrize("name", NAMES)
def test_1d_x(name):
    est = ESTIMATORS[name]()
    X, y = _data()
    expect_clear(lambda: est.fit(X[:, 0], _target(est, y)), "X", "2D")


@pytest.mark.category("shape")
@pytest.mark.parametrize("name", NAMES)
def test_y_of_wrong_length(name):
    est = ESTIMATORS[name]()
    X, y = _data()
    expect_clear(lambda: est.fit(X, _target(est, y)[:-1]), "y", "samples")


@pytest.mark.category("shape")
@pytest.mark.parametrize("name", WEIGHTED)
def test_sample_weight_of_wrong_length(name):
    est = ESTIMATORS[name]()
    X, y = _data()
    w = np.ones(len(y) - 1)
    expect_clear(lambda: est.fit(X, _target(est, y), sample_weight=w), "sample_weight")


@pytest.mark.category("shape")
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("name", NAMES)
def test_predict_other_width(name, width):
    est = ESTIMATORS[name]()
    X, y = _data()
    est.fit(X, _target(est, y))
    expect_clear(lambda: est.predict(np.zeros((3, width))), "X", "features")


# -- option values --------
BAD_OPTIONS = {
    "num_features": [-1, 0, 2.5, "many"],
    "num_centers": [-1, 0, 2.5],
    "alpha": [-1.0, math.nan, "nope"],
    "kernel": ["nope", 3],
    "lengthscale": [0.0, -1.0, math.nan, math.inf, "nope"],
    "sampler": ["x"],
    "loss": ["x"],
    "max_iter": [0, -5],
    "tol": [-1.0, math.nan],
    "block_rows": [0, -3],
    "center_selection": ["x"],
    "solver": ["x"],
    "phases": ["x"],
    "activation": ["nope"],
    "depth": [0, -1],
    "noise": [-1.0, 0.0, math.nan],
    "amplitude": [-1.0, 0.0],
    "features": ["x"],
    "optimizer": ["x"],
    "learning_rate": [-1.0],
    "max_optimize_rows": [0],
    "cache_size": [-1],
}
#: values that are bad elsewhere but valid by design here: a deep kernel machine of depth 0
#: is the NNGP-GP with one hidden layer, and max_iter=0 keeps the initial Gram matrices
VALID_HERE = {(n, p, 0) for n in ("dkm_reg", "dkm_clf") for p in ("depth", "max_iter")}
OPTION_CASES = [
    (name, param, value)
    for name in NAMES
    for param, values in BAD_OPTIONS.items()
    if param in ESTIMATORS[name]().get_params()
    for value in values
    if (name, param, value) not in VALID_HERE
]


@pytest.mark.category("options")
@pytest.mark.parametrize(
    ("name", "param", "value"), OPTION_CASES, ids=[f"{n}-{p}-{v}" for n, p, v in OPTION_CASES]
)
def test_bad_option(name, param, value):
    est = ESTIMATORS[name]().set_params(**{param: value})
    if param == "learning_rate":
        est.set_params(optimize=True, optimizer="adam", max_iter=2)
    X, y = _data()
    expect_clear(lambda: est.fit(X, _target(est, y)), param)


@pytest.mark.category("options")
@pytest.mark.parametrize("name", NAMES)
def test_file_path_as_x(name, tmp_path):
    """A CSV path: streamed by the models that read files, a clear error by the others."""
    X, y = _data()
    if name in ("rf_clf", "bundled_clf"):
        y = (y > 0).astype(float)  # a 0/1 target column
    path = tmp_path / "d.csv"
    rows = "\n".join(",".join(f"{v:.6f}" for v in (*x, t)) for x, t in zip(X, y, strict=True))
    path.write_text("a,b,c,t\n" + rows + "\n")
    est = ESTIMATORS[name]()
    target = "t"

    def check(model):
        expect_finite(_outputs(model, X))

    correct_or_clear(lambda: est.fit(str(path), target), check, "X", "file", str(path))


# -- in-place: a failed partial_fit leaves the model bit-identical --------
def _snapshot(est):
    state = {}
    for k, v in vars(est).items():
        if isinstance(v, torch.nn.Module):
            state[k] = {n: t.clone() for n, t in v.state_dict().items()}
        else:
            try:
                state[k] = copy.deepcopy(v)
            except Exception:
                state[k] = ("id", id(v))
    return state


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dict__") and type(a) is type(b) and not isinstance(a, type):
        return _same(vars(a), vars(b))
    try:
        return bool(a == b) or (a != a and b != b)
    except Exception:
        return a is b


BAD_CHUNKS = ["nan", "width", "negative_weight", "nan_weight", "string", "new_class", "empty"]


@pytest.mark.category("inplace")
@pytest.mark.parametrize("bad", BAD_CHUNKS)
@pytest.mark.parametrize("name", PARTIAL)
def test_partial_fit_bad_chunk_leaves_model(name, bad):
    est = ESTIMATORS[name]().set_params(**PARTIAL_PARAMS.get(name, {}))
    X, y = _data(seed=1)
    y = _target(est, y)
    kw = {"classes": [0, 1]} if is_classifier(est) else {}
    est.partial_fit(X[:20], y[:20], **kw)
    before = _snapshot(est)
    preds = _outputs(est, X)
    Xb, yb, w = X[20:].copy(), y[20:].copy(), None
    if bad == "nan":
        Xb[1, 1] = math.nan
    elif bad == "width":
        Xb = np.hstack([Xb, Xb[:, :1]])
    elif bad == "negative_weight":
        w = np.ones(len(yb))
        w[0] = -1.0
    elif bad == "nan_weight":
        w = np.ones(len(yb))
        w[0] = math.nan
    elif bad == "string":
        Xb = np.where(Xb > 0, "up", "down")
    elif bad == "new_class":
        if not is_classifier(est):
            pytest.skip("regressors take any target")
        yb[0] = 7
    elif bad == "empty":
        Xb, yb = Xb[:0], yb[:0]
    expect_clear(
        lambda: est.partial_fit(Xb, yb, sample_weight=w),
        "X",
        "y",
        "sample_weight",
        "class",
        "feature",
        "sample",
        "string",
        "numeric",
    )
    assert _same(_snapshot(est), before), "the failed partial_fit changed the model"
    for a, b in zip(_outputs(est, X), preds, strict=True):
        np.testing.assert_array_equal(a, b)
