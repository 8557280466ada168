"""Model files: safetensors + JSON, bit-exact round trips, clear errors, never unpickle."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from snnk.io import load_model, save_model
from snnk.models import BundledClassifier, BundledRegressor


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 4))
    return X, X[:, 0] - 2 * X[:, 1] ** 2


def test_round_trip_is_bit_exact(tmp_path):
    X, y = _data()
    labels = np.where(y > np.median(y), "high", "low")
    clf = BundledClassifier(num_features=32, depth=2, random_state=3).fit(X, labels)
    reg = BundledRegressor(num_features=32, random_state=3, dtype="float32").fit(X, y)
    for est, out in ((clf, "predict_proba"), (reg, "predict")):
        path = save_model(est, tmp_path / "model.snnk")
        back = load_model(path)
        assert type(back) is type(est) and back.get_params() == est.get_params()
        np.testing.assert_array_equal(getattr(back, out)(X), getattr(est, out)(X))
    assert list(load_model(tmp_path / "model.snnk").predict(X[:2]).shape) == [2]


def test_multi_output_regression_keeps_its_shape(tmp_path):
    X, y = _data()
    reg = BundledRegressor(num_features=16, random_state=0).fit(X, np.c_[y, -y])
    back = load_model(reg.save(tmp_path / "m.snnk"))
    assert back.predict(X).shape == (200, 2)


def test_torch_device_parameter_is_saved_as_its_name(tmp_path):
    X, y = _data()
    est = BundledRegressor(num_features=8, random_state=0, device=torch.device("cpu")).fit(X, y)
    back = load_model(save_model(est, tmp_path / "m.snnk"))
    assert back.get_params()["device"] == "cpu"
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


def test_unfitted_and_unsaveable(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        save_model(BundledRegressor(), tmp_path / "m.snnk")
    X, y = _data()
    est = BundledRegressor(num_features=8, random_state=np.random.RandomState(0)).fit(X, y)
    with pytest.raises(TypeError, match="random_state as an int"):
        save_model(est, tmp_path / "m.snnk")
    assert not (tmp_path / "m.snnk").exists()


def test_bad_files_are_rejected_without_unpickling(tmp_path):
    bad = tmp_path / "pickle.snnk"
    bad.write_bytes(b"\x80\x04\x95 not a safetensors file")
    with pytest.raises(ValueError, match="not an snnk model"):
        load_model(bad)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.snnk")
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="no 'snnk' header"):
        load_model(plain)
    doc = {"format": "snnk-model", "format_version": 1, "class": "os.system", "params": {}}
    forged = tmp_path / "forged.snnk"
    save_file({"a": torch.zeros(2)}, str(forged), metadata={"snnk": json.dumps(doc)})
    with pytest.raises(ValueError, match="unknown estimator class"):
        load_model(forged)
