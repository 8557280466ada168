"""The pieces under every estimator: dtype table, seeds, progress, chunk validation,
pooled moments, and the feature-model base through a minimal subclass."""

from typing import ClassVar

import numpy as np
import pytest
import torch

from snnk._utils.blocks import BLOCK_ELEMENTS
from snnk.io import load_model, save_model
from snnk.models import (
    BundledClassifier,
    RandomFeatureClassifier,
    RandomFeatureGP,
    RandomFeatureRidge,
)
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
from snnk.models._device import as_output, block_elements, on_cpu, state_device, to_device
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


# -- the device plumbing (snnk.models._device) -------------------------------------------------
def test_device_helpers_round_trip_numpy_and_tensors():
    X = np.arange(6.0).reshape(3, 2)
    t = to_device(X, "cpu", torch.float32)
    assert t.dtype == torch.float32 and t.device.type == "cpu"
    ro = X.copy()
    ro.flags.writeable = False  # a read-only array (e.g. a memory map) is copied, not shared
    assert torch.equal(to_device(ro[:, ::-1], "cpu"), torch.from_numpy(X[:, ::-1].copy()))
    out = as_output(np.ones(3, dtype=np.float32), like=torch.zeros(1))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert isinstance(as_output(torch.ones(2), like=X), np.ndarray)
    labels = np.array(["a", "b"])
    assert as_output(labels, like=torch.zeros(1)) is labels  # text has no tensor form
    assert block_elements("cpu") == BLOCK_ELEMENTS
    assert state_device(None, torch.nn.Linear(2, 2)).type == "cpu"
    with torch.device("meta"):  # modules drawn on the CPU whatever the default device
        with on_cpu():
            lin = torch.nn.Linear(2, 2)
    assert state_device(lin).type == "cpu"


@pytest.mark.parametrize(
    ("device", "error", "match"),
    [
        ("meta", ValueError, "device='meta'"),
        ("tpu", ValueError, "device='tpu'"),
        ("gpu", ValueError, "device='gpu' is not a device"),
        # scikit-learn's constraint check (InvalidParameterError is also a TypeError) or
        # check_device (the GP): either names device and what it must be
        (3, TypeError, "device.* must be .*str"),
        (torch.zeros(1), TypeError, "device.* must be"),
    ],
)
def test_bad_devices_are_refused_before_any_work(device, error, match):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20.0)
    for est in (
        RandomFeatureRidge(num_features=8),
        BundledClassifier(num_features=8),
        RandomFeatureGP(num_features=8),
    ):
        target = y if not hasattr(est, "loss") else (y > 9).astype(int)
        with pytest.raises(error, match=match):
            est.set_params(device=device).fit(X, target)
        assert not hasattr(est, "coef_")


@pytest.mark.parametrize(
    "est",
    [
        RandomFeatureRidge(num_features=16, random_state=0),
        RandomFeatureClassifier(num_features=16, random_state=0),
        BundledClassifier(num_features=16, random_state=0),
        RandomFeatureGP(num_features=16, random_state=0),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_model_saved_with_a_cuda_device_loads_and_predicts_on_the_cpu(est, tmp_path):
    """``device`` is a parameter, not state: a file written by a GPU fit (simulated here by
    the parameter, since the saved tensors are CPU copies either way) loads on a machine
    without a GPU, keeps ``device="cuda"`` for a refit there, and predicts on the CPU."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X[:, 0] if not hasattr(est, "loss") else (X[:, 0] > 0).astype(int)
    ref = est.fit(X, y)
    est.set_params(device="cuda")
    back = load_model(save_model(est, tmp_path / "m.snnk"))
    assert back.get_params()["device"] == "cuda"
    np.testing.assert_array_equal(back.predict(X), ref.set_params(device="cpu").predict(X))
    got = back.predict(torch.as_tensor(X, dtype=torch.float32))
    assert isinstance(got, torch.Tensor) and got.device.type == "cpu"


def test_meta_tensors_and_bfloat16_tensors_as_input():
    """A meta tensor has no values: a TypeError that says so, not torch's copy error. A
    bfloat16 / float16 tensor is read as float64 (NumPy has no bfloat16) and the output is
    a tensor; a model fitted under a meta default device predicts like a plain one."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    m = RandomFeatureRidge(num_features=8, alpha=1.0, random_state=0).fit(X, X[:, 0])
    with pytest.raises(TypeError, match="meta device"):
        m.predict(torch.empty(4, 3, device="meta"))
    for half in (torch.float16, torch.bfloat16):
        Xh = torch.as_tensor(X, dtype=half)
        got = m.predict(Xh)
        # float16 is read as float64; bfloat16 as float32 (exact widening, float32 compute)
        want = torch.float64 if half == torch.float16 else torch.float32
        assert isinstance(got, torch.Tensor) and got.dtype == want
        np.testing.assert_allclose(got.numpy(), m.predict(Xh.double().numpy()), atol=1e-5)
    bf = RandomFeatureRidge(num_features=8, alpha=1.0, random_state=0)
    assert np.isfinite(bf.fit(torch.as_tensor(X, dtype=torch.bfloat16), X[:, 0]).coef_).all()
    with pytest.raises(TypeError, match="meta device"):
        RandomFeatureRidge(num_features=8).fit(torch.empty(4, 3, device="meta"), np.ones(4))
