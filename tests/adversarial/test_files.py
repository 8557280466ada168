"""Model files (``snnk.io.save_model`` / ``load_model``, ``snnk fit`` / ``snnk predict``) on
hostile input: truncated, random or tampered files must give a clear error naming the file
and the field, never a wrong model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from snnk.cli import main
from snnk.io import load_model, save_model
from snnk.models import (
    BundledClassifier,
    BundledRegressor,
    DeepKernelMachineClassifier,
    DeepKernelMachineRegressor,
    KernelRidgeCG,
    NystromRidge,
    NystromTransformer,
    OptimalWeightedLeastSquares,
    RandomFeatureClassifier,
    RandomFeatureGP,
    RandomFeatureRidge,
    RandomFeatureTransformer,
)
from tests.adversarial.harness import expect_error

ESTIMATORS = {
    "rf_ridge": lambda: RandomFeatureRidge(num_features=16, random_state=0),
    "rf_clf": lambda: RandomFeatureClassifier(num_features=16, random_state=0),
    "bundled_reg": lambda: BundledRegressor(num_features=16, random_state=0),
    "bundled_clf": lambda: BundledClassifier(num_features=16, random_state=0),
    "nystrom": lambda: NystromRidge(num_centers=10, lengthscale=2.0, alpha=1e-2, random_state=0),
    "krcg": lambda: KernelRidgeCG(num_centers=10, lengthscale=2.0, alpha=1e-2, random_state=0),
    "gp": lambda: RandomFeatureGP(num_features=16, optimize=False, random_state=0),
    "dkm_reg": lambda: DeepKernelMachineRegressor(
        depth=1, num_inducing=8, max_iter=3, random_state=0
    ),
    "dkm_clf": lambda: DeepKernelMachineClassifier(
        depth=1, num_inducing=8, max_iter=3, random_state=0
    ),
    "owls": lambda: OptimalWeightedLeastSquares(degree=2, random_state=0),
    "rf_transformer": lambda: RandomFeatureTransformer(num_features=16, random_state=0),
    "nystrom_transformer": lambda: NystromTransformer(num_centers=8, random_state=0),
}
NAMES = sorted(ESTIMATORS)
_FITTED: dict[str, object] = {}


def _fitted(name):
    if name not in _FITTED:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(30, 3))
        y = X[:, 0] + 0.1 * rng.normal(size=30)
        est = ESTIMATORS[name]()
        if name.endswith("clf"):
            y = np.where(y > 0, "up", "down")
        _FITTED[name] = est.fit(X, y)
    return _FITTED[name]


@pytest.fixture
def saved(request, tmp_path):
    path = save_model(_fitted(request.param), tmp_path / "m.snnk")
    return request.param, path


def _rewrite(path, doc=None, tensors=None):
    """Write ``path`` again with a changed header document and/or tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    old = load_file(str(path))
    save_file(
        old if tensors is None else tensors,
        str(path),
        metadata={"snnk": json.dumps(json.loads(meta["snnk"]) if doc is None else doc)},
    )


def _doc(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["snnk"])


def _load_fails(path, *names):
    expect_error(lambda: load_model(path), str(path))
    expect_error(lambda: load_model(path), *names)


# -- the file itself --------
@pytest.mark.category("files")
@pytest.mark.parametrize("saved", NAMES, indirect=True)
@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.99])
def test_truncated(saved, keep):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data))])
    _load_fails(path, "snnk model", "safetensors")


@pytest.mark.category("files")
@pytest.mark.parametrize("seed", range(3))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "r.snnk"
    path.write_bytes(np.random.default_rng(seed).bytes(2000))
    _load_fails(path, "snnk model", "safetensors")


@pytest.mark.category("files")
def test_other_safetensors_file(tmp_path):
    path = tmp_path / "o.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    _load_fails(path, "snnk")


@pytest.mark.category("files")
def test_missing_file(tmp_path):
    expect_error(lambda: load_model(tmp_path / "nope.snnk"), "nope.snnk")


@pytest.mark.category("files")
def test_save_into_missing_folder(tmp_path):
    target = tmp_path / "no" / "such" / "m.snnk"
    expect_error(lambda: save_model(_fitted("rf_ridge"), target), str(target.parent))
    assert not (tmp_path / "no").exists()


@pytest.mark.category("files")
def test_save_unfitted(tmp_path):
    expect_error(lambda: save_model(RandomFeatureRidge(), tmp_path / "m.snnk"), "fit")


# -- the header, field by field --------
@pytest.mark.category("files")
@pytest.mark.parametrize("saved", NAMES, indirect=True)
@pytest.mark.parametrize(
    "key", ["format", "format_version", "class", "params", "state", "state.arrays"]
)
def test_missing_header_key(saved, key):
    _, path = saved
    doc = _doc(path)
    parent = doc
    *head, last = key.split(".")
    for part in head:
        parent = parent[part]
    del parent[last]
    _rewrite(path, doc)
    _load_fails(path, key, "format")


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", NAMES, indirect=True)
@pytest.mark.parametrize("other", NAMES)
def test_class_swapped(saved, other):
    name, path = saved
    cls = type(_fitted(other)).__name__
    if cls == type(_fitted(name)).__name__:
        pytest.skip("the same class")
    doc = _doc(path)
    doc["class"] = cls
    _rewrite(path, doc)
    _load_fails(path, "params", "state", "tensors")


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", NAMES, indirect=True)
def test_unknown_class(saved):
    _, path = saved
    doc = _doc(path)
    doc["class"] = "os.system"
    _rewrite(path, doc)
    _load_fails(path, "class")


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", NAMES, indirect=True)
@pytest.mark.parametrize("bad", [[1, 2], {"x": 1}, "many", -5, 0, 1e300, True])
def test_param_of_wrong_type_or_range(saved, bad):
    """Every numeric hyper-parameter replaced by a value of another type or range."""
    _, path = saved
    doc = _doc(path)
    key = next(
        k for k in ("num_features", "num_centers", "num_inducing", "degree") if k in doc["params"]
    )
    if key == "degree" and bad == 0:
        pytest.skip("degree 0 is valid: the constant basis")
    doc["params"][key] = bad
    _rewrite(path, doc)
    _load_fails(path, key)


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", NAMES, indirect=True)
@pytest.mark.parametrize("method", ["fit", "predict", "__class__", "__init__", "_reset"])
def test_method_name_injected(saved, method):
    _, path = saved
    for part in ("params", "values"):
        doc = _doc(path)
        if part == "params":
            doc["params"][method] = 1
        else:
            doc["state"]["values"][method] = 1
        _rewrite(path, doc)
        _load_fails(path, method)


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", NAMES, indirect=True)
def test_tensor_dtype_changed_to_int64(saved):
    _, path = saved
    tensors = load_file(str(path))
    key = sorted(k for k, t in tensors.items() if t.is_floating_point())[0]
    tensors[key] = tensors[key].round().to(torch.int64)
    _rewrite(path, tensors=tensors)
    _load_fails(path, key)


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", NAMES, indirect=True)
@pytest.mark.parametrize("change", ["drop_row", "add_axis", "drop"])
def test_tensor_shape_changed(saved, change):
    _, path = saved
    tensors = load_file(str(path))
    for key in sorted(tensors):
        t = tensors[key]
        if t.numel() < 2:
            continue
        changed = dict(tensors)
        if change == "drop_row":
            changed[key] = t[:-1].clone()
        elif change == "add_axis":
            changed[key] = t.unsqueeze(0).clone()
        else:
            del changed[key]
        _rewrite(path, tensors=changed)
        _load_fails(path, key, "tensors.")  # or the tensor whose size disagrees with it


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", ["rf_clf", "bundled_clf"], indirect=True)
@pytest.mark.parametrize("classes", [["up"], ["up", "down", "left"], ["up", "up"], [], 3])
def test_classes_changed(saved, classes):
    _, path = saved
    doc = _doc(path)
    value = doc["state"]["values"]["classes_"]
    value["__array__"] = classes
    if not isinstance(classes, list):
        doc["state"]["values"]["classes_"] = classes
    _rewrite(path, doc)
    _load_fails(path, "classes_")


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", ["gp"], indirect=True)
@pytest.mark.parametrize("field", ["noise_", "amplitude_", "lengthscale_"])
@pytest.mark.parametrize("bad", [-0.5, 0.0, float("nan")])
def test_gp_hyperparameters_out_of_range(saved, field, bad):
    _, path = saved
    doc = _doc(path)
    if field not in doc["state"]["values"]:
        pytest.skip(f"{field} is not a saved value")
    doc["state"]["values"][field] = bad
    _rewrite(path, doc)
    _load_fails(path, field)


# -- the command line --------
def _csv(path, n=30):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 2))
    rows = "\n".join(f"{a:.5f},{b:.5f},{a + 0.1 * b:.5f}" for a, b in X)
    path.write_text("a,b,t\n" + rows + "\n")
    return path


@pytest.mark.category("files")
def test_cli_fit_into_missing_folder(tmp_path, capsys):
    data = _csv(tmp_path / "d.csv")
    out = tmp_path / "missing" / "m.snnk"
    assert main(["fit", str(data), "--target", "t", "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out.parent) in err
    assert not out.exists()


@pytest.mark.category("files")
def test_cli_fit_failure_writes_no_file(tmp_path, capsys):
    data = _csv(tmp_path / "d.csv")
    out = tmp_path / "m.snnk"
    assert main(["fit", str(data), "--target", "nope", "-o", str(out), "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.category("files")
@pytest.mark.parametrize("saved", ["rf_ridge"], indirect=True)
def test_cli_predict_on_tampered_file(saved, tmp_path, capsys):
    _, path = saved
    doc = _doc(path)
    doc["params"]["num_features"] = "many"
    _rewrite(path, doc)
    data = _csv(tmp_path / "d.csv")
    out = tmp_path / "p.csv"
    assert main(["predict", str(path), str(data), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "num_features" in err
    assert not out.exists()
