"""snnk._persist: a registry that needs no import of the models, headers checked against a
schema before anything is built, atomic writes, and files of earlier versions."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from snnk import _persist
from snnk._persist import (
    HEADER_SCHEMA,
    Field,
    check_header,
    load_model,
    registered_class,
    save_model,
)
from snnk.models import BundledClassifier, BundledRegressor, RandomFeatureRidge


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, np.sin(X[:, 0]) + X[:, 1] * X[:, 2]


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["snnk"]), {k: f.get_tensor(k) for k in f.keys()}


def _write(path, doc, tensors):
    save_file(tensors, str(path), metadata={"snnk": json.dumps(doc)})
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    X, y = _data()
    est = BundledRegressor(num_features=8, depth=2, random_state=0).fit(X, y)
    return save_model(est, tmp_path_factory.mktemp("m") / "model.snnk")


def _set(*keys, value):
    def edit(doc, tensors):
        target = doc
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return edit


def _pop(*keys):
    def edit(doc, tensors):
        target = doc
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]

    return edit


def _tensor(key, fn):
    def edit(doc, tensors):
        if fn is None:
            del tensors[key]
        else:
            tensors[key] = fn(tensors.get(key))

    return edit


BAD_FILES = {
    "no params": (_pop("params"), "params", "missing"),
    "params a list": (_set("params", value=[]), "params", "expected object"),
    "version a bool": (_set("format_version", value=True), "format_version", "expected integer"),
    "class a number": (_set("class", value=3), "class", "expected string"),
    "unknown parameter": (_set("params", "evil", value=1), "params.evil", "not a parameter"),
    "arrays kind": (
        _set("state", "arrays", "coef_", value="pickle"),
        "state.arrays.coef_",
        "one of",
    ),
    "modules not names": (_set("state", "modules", value=[1]), "state.modules.0", "string"),
    "a method as state": (
        _set("state", "values", "predict", value=1),
        "state.values.predict",
        "not a fitted",
    ),
    "a dunder as state": (
        _set("state", "values", "__class__", value=1),
        "state.values.__class__",
        "not a fitted",
    ),
    "a property as state": (
        _set("state", "values", "num_parameters_", value=1),
        "state.values.num_parameters_",
        "not a fitted",
    ),
    "label array dtype": (
        _set("state", "values", "classes_", value={"__array__": [1], "dtype": "V8"}),
        "state.values.classes_",
        "label array",
    ),
    "kernel config": (_set("params", "dtype", value={"__kernel__": 3}), "params.dtype", "kernel"),
    "missing tensor": (_tensor("attr.coef_", None), "tensors.attr.coef_", "missing"),
    "stray tensor": (_tensor("evil", lambda t: torch.zeros(2)), "tensors.evil", "no array"),
    "coef_ 1-D": (_tensor("attr.coef_", lambda t: t[0]), "tensors.attr.coef_", "dimensions"),
    "int coef_": (_tensor("attr.coef_", lambda t: t.long()), "tensors.attr.coef_", "kinds"),
    "outputs disagree": (
        _tensor("attr.intercept_", lambda t: torch.zeros(3, dtype=t.dtype)),
        "tensors.attr.intercept_",
        "n_outputs",
    ),
    "width disagrees": (
        _set("params", "num_features", value=7),
        "tensors.attr.coef_",
        "num_features",
    ),
    "mean_ of other width": (
        _tensor("attr.mean_", lambda t: torch.zeros(5, dtype=t.dtype)),
        "tensors.attr.mean_",
        "n_features_in_",
    ),
    "module tensor dtype": (
        _tensor("module.network_.weight", lambda t: t.float()),
        "tensors.module.network_.weight",
        "expected torch.float64",
    ),
    "module tensor missing": (
        _tensor("module.network_.bias", None),
        "tensors.module.network_.bias",
        "missing",
    ),
}


@pytest.mark.parametrize("edit, field, problem", BAD_FILES.values(), ids=list(BAD_FILES))
def test_bad_headers_name_the_file_and_the_field(saved, tmp_path, edit, field, problem):
    doc, tensors = _read(saved)
    edit(doc, tensors)
    bad = _write(tmp_path / "bad.snnk", doc, tensors)
    with pytest.raises(ValueError) as info:
        load_model(bad)
    message = str(info.value)
    assert str(bad) in message and field in message and problem in message, message


def test_the_schema_is_data():
    assert {f.path for f in HEADER_SCHEMA} >= {"format", "class", "params", "state"}
    extended = (*HEADER_SCHEMA, Field("notes", (str,)))
    with pytest.raises(_persist.HeaderError, match="notes: missing"):
        check_header(
            {
                "format": "snnk-model",
                "format_version": 1,
                "class": "X",
                "params": {},
                "state": {"arrays": {}, "modules": [], "values": {}},
            },
            extended,
        )


def test_save_into_a_missing_folder_names_it(tmp_path):
    X, y = _data()
    est = RandomFeatureRidge(num_features=8, random_state=0).fit(X, y)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        save_model(est, tmp_path / "nope" / "m.snnk")
    save_model(est, tmp_path / "m.snnk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.snnk"]  # no temporary left


def test_preprocessing_travels_in_the_header(tmp_path):
    """A JSON object saved beside the estimator (snnk fit's column transform): returned by
    load_model_and_preprocessing, ignored by load_model, finite values only, and checked by
    the reader's ``check`` with errors naming the file and the field."""
    X, y = _data()
    est = RandomFeatureRidge(num_features=8, random_state=0).fit(X, y)
    spec = {"columns": ["a", "b", "c"], "scale": [1.5, 2.0, 0.25], "note": None}
    path = save_model(est, tmp_path / "m.snnk", preprocessing=spec)
    loaded, got = _persist.load_model_and_preprocessing(path)
    assert got == spec and np.array_equal(loaded.predict(X), est.predict(X))
    assert np.array_equal(load_model(path).predict(X), est.predict(X))
    assert _persist.load_model_and_preprocessing(save_model(est, tmp_path / "n.snnk"))[1] is None

    def check(value, estimator):
        if value["scale"][2] <= 0:
            raise _persist.HeaderError("preprocessing.scale.2", "must be positive")

    doc, tensors = _read(path)
    doc["preprocessing"]["scale"][2] = -1.0
    bad = _write(tmp_path / "bad.snnk", doc, tensors)
    with pytest.raises(ValueError, match=r"bad\.snnk: field 'preprocessing\.scale\.2'"):
        _persist.load_model_and_preprocessing(bad, check=check)
    doc["preprocessing"] = [1, 2]
    bad = _write(tmp_path / "bad.snnk", doc, tensors)
    with pytest.raises(ValueError, match="field 'preprocessing': expected object, got list"):
        load_model(bad)
    with pytest.raises(ValueError, match="finite"):
        save_model(est, tmp_path / "x.snnk", preprocessing={"mean": float("nan")})
    with pytest.raises(TypeError, match="preprocessing must be a dict"):
        save_model(est, tmp_path / "x.snnk", preprocessing=[1])
    assert not (tmp_path / "x.snnk").exists()


def test_registry_needs_no_import_of_the_models(saved):
    code = (
        "import sys, snnk.io\n"
        "assert 'snnk.models' not in sys.modules, 'snnk.io imported the models'\n"
        f"est = snnk.io.load_model({str(saved)!r})\n"
        "print(type(est).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "BundledRegressor"


def test_subclasses_register_themselves(tmp_path):
    class MyRidge(RandomFeatureRidge):
        pass

    assert registered_class("MyRidge") is MyRidge
    assert registered_class("os.system") is None and registered_class("_RandomFeatureModel") is None
    X, y = _data()
    est = MyRidge(num_features=8, alpha=0.1, random_state=0).fit(X, y)
    back = load_model(save_model(est, tmp_path / "mine.snnk"))
    assert type(back) is MyRidge
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


# Files written by snnk before this refactor (HEAD a82c072): RandomFeatureRidge(num_features=8,
# alpha=0.1, random_state=0) fitted on float32 data, and BundledClassifier(num_features=8,
# orthogonal=False, batch_size=7, random_state=0); with the outputs that code computed on
# _data(20) (ridge: predict; bundled: predict_proba).

_OLD_RIDGE = (
    "4AMAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJzbm5rIjoie1wiZm9ybWF0XCI6IFwic25uay1tb2RlbFwiLCBcImZv"
    "cm1hdF92ZXJzaW9uXCI6IDEsIFwic25ua192ZXJzaW9uXCI6IFwiMC4xLjBcIiwgXCJjbGFzc1wiOiBcIlJhbmRv"
    "bUZlYXR1cmVSaWRnZVwiLCBcInBhcmFtc1wiOiB7XCJhbHBoYVwiOiAwLjEsIFwiYmF0Y2hfc2l6ZVwiOiA0MDk2"
    "LCBcImR0eXBlXCI6IG51bGwsIFwiZml0X2ludGVyY2VwdFwiOiB0cnVlLCBcImtlcm5lbFwiOiBcImdhdXNzaWFu"
    "XCIsIFwibGVuZ3Roc2NhbGVcIjogXCJzY2FsZVwiLCBcIm51bV9mZWF0dXJlc1wiOiA4LCBcInBoYXNlc1wiOiBc"
    "InJhbmRvbVwiLCBcInJhbmRvbV9zdGF0ZVwiOiAwLCBcInNhbXBsZXJcIjogXCJvcnRob2dvbmFsXCIsIFwidmVy"
    "Ym9zZVwiOiBmYWxzZX0sIFwic3RhdGVcIjoge1wiYXJyYXlzXCI6IHtcImNvZWZfXCI6IFwibnVtcHlcIiwgXCJp"
    "bnRlcmNlcHRfXCI6IFwibnVtcHlcIn0sIFwibW9kdWxlc1wiOiBbXCJmZWF0dXJlX21hcF9cIl0sIFwidmFsdWVz"
    "XCI6IHtcIm5fZmVhdHVyZXNfaW5fXCI6IDMsIFwiY29tcHV0ZV9kdHlwZV9cIjogXCJmbG9hdDMyXCIsIFwibGVu"
    "Z3Roc2NhbGVfXCI6IDEuMDk5MTUzNDQxMDkzMzc3NiwgXCJhbHBoYV9cIjogMC4xLCBcIm5fc2FtcGxlc19zZWVu"
    "X1wiOiAyMCwgXCJfeV8xZFwiOiB0cnVlfX19In0sImF0dHIuY29lZl8iOnsiZHR5cGUiOiJGNjQiLCJzaGFwZSI6"
    "WzEsOF0sImRhdGFfb2Zmc2V0cyI6WzAsNjRdfSwiYXR0ci5pbnRlcmNlcHRfIjp7ImR0eXBlIjoiRjY0Iiwic2hh"
    "cGUiOlsxXSwiZGF0YV9vZmZzZXRzIjpbNjQsNzJdfSwibW9kdWxlLmZlYXR1cmVfbWFwXy5vZmZzZXQiOnsiZHR5"
    "cGUiOiJGMzIiLCJzaGFwZSI6WzhdLCJkYXRhX29mZnNldHMiOls3MiwxMDRdfSwibW9kdWxlLmZlYXR1cmVfbWFw"
    "Xy5wcm9qZWN0aW9uLndlaWdodCI6eyJkdHlwZSI6IkYzMiIsInNoYXBlIjpbOCwzXSwiZGF0YV9vZmZzZXRzIjpb"
    "MTA0LDIwMF19fcEwv5uwLtq/KIhmyDddsT9tmpy89okBwB1pbz4qCui/q//f5uK197/Vc/C7tuDfP/zXpDHxB+Y/"
    "hAJtOIyAl79b+BGwZILpP6AJuEDz0Lw/JciuPhZ/HUCXj4tA2lBjPiBYVEBnhFtAG840v1Fhkz6Er1m/cNgPQLLA"
    "Gj/EwdS/hcSBPJrZr7882fS+UvfMP1nkFb+6Yq2+5l0Dv/IKub/HnpU9JQsAvo+OWjwTRR2/oXjSvm4lbD+6JAw/"
    "gxKPv9Yg3j4bAsm/"
)
_OLD_RIDGE_OUT = [
    0.04701566696166992,
    0.03556734323501587,
    0.29535973072052,
    -0.9141699075698853,
    -0.6967931985855103,
    -0.32873666286468506,
    1.0011082887649536,
    0.33276116847991943,
    0.4667205214500427,
    -0.871228814125061,
    -0.8466529846191406,
    0.4989452064037323,
    -0.7193108797073364,
    0.01225292682647705,
    0.8307917714118958,
    2.47537899017334,
    1.0012738704681396,
    -1.0340663194656372,
    -0.4601045846939087,
    1.050655722618103,
]
_OLD_BUNDLED = (
    "CAUAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJzbm5rIjoie1wiZm9ybWF0XCI6IFwic25uay1tb2RlbFwiLCBcImZv"
    "cm1hdF92ZXJzaW9uXCI6IDEsIFwic25ua192ZXJzaW9uXCI6IFwiMC4xLjBcIiwgXCJjbGFzc1wiOiBcIkJ1bmRs"
    "ZWRDbGFzc2lmaWVyXCIsIFwicGFyYW1zXCI6IHtcImFjdGl2YXRpb25cIjogXCJyZWx1XCIsIFwiYWxwaGFcIjog"
    "XCJnY3ZcIiwgXCJiYXRjaF9zaXplXCI6IDcsIFwiZGVwdGhcIjogMSwgXCJkdHlwZVwiOiBcImZsb2F0NjRcIiwg"
    "XCJmaXRfaW50ZXJjZXB0XCI6IHRydWUsIFwibG9zc1wiOiBcImxvZ1wiLCBcIm1heF9pdGVyXCI6IDEwMCwgXCJu"
    "dW1fZmVhdHVyZXNcIjogOCwgXCJvcnRob2dvbmFsXCI6IGZhbHNlLCBcInJhbmRvbV9zdGF0ZVwiOiAwLCBcInN0"
    "YW5kYXJkaXplXCI6IHRydWUsIFwidG9sXCI6IDFlLTEwLCBcInZlcmJvc2VcIjogZmFsc2V9LCBcInN0YXRlXCI6"
    "IHtcImFycmF5c1wiOiB7XCJtZWFuX1wiOiBcIm51bXB5XCIsIFwic2NhbGVfXCI6IFwibnVtcHlcIiwgXCJjb2Vm"
    "X1wiOiBcIm51bXB5XCIsIFwiaW50ZXJjZXB0X1wiOiBcIm51bXB5XCJ9LCBcIm1vZHVsZXNcIjogW1wibmV0d29y"
    "a19cIl0sIFwidmFsdWVzXCI6IHtcIm5fZmVhdHVyZXNfaW5fXCI6IDMsIFwiY2xhc3Nlc19cIjoge1wiX19hcnJh"
    "eV9fXCI6IFtcIm5lZ1wiLCBcInBvc1wiXSwgXCJkdHlwZVwiOiBcIjxVM1wifSwgXCJuX2l0ZXJfXCI6IDYsIFwi"
    "YWxwaGFfXCI6IDAuMTA5MTk2MTUyMDA5NzU3N319fSJ9LCJhdHRyLmNvZWZfIjp7ImR0eXBlIjoiRjY0Iiwic2hh"
    "cGUiOlsyLDhdLCJkYXRhX29mZnNldHMiOlswLDEyOF19LCJhdHRyLmludGVyY2VwdF8iOnsiZHR5cGUiOiJGNjQi"
    "LCJzaGFwZSI6WzJdLCJkYXRhX29mZnNldHMiOlsxMjgsMTQ0XX0sImF0dHIubWVhbl8iOnsiZHR5cGUiOiJGNjQi"
    "LCJzaGFwZSI6WzNdLCJkYXRhX29mZnNldHMiOlsxNDQsMTY4XX0sImF0dHIuc2NhbGVfIjp7ImR0eXBlIjoiRjY0"
    "Iiwic2hhcGUiOlszXSwiZGF0YV9vZmZzZXRzIjpbMTY4LDE5Ml19LCJtb2R1bGUubmV0d29ya18uYmlhcyI6eyJk"
    "dHlwZSI6IkY2NCIsInNoYXBlIjpbMl0sImRhdGFfb2Zmc2V0cyI6WzE5MiwyMDhdfSwibW9kdWxlLm5ldHdvcmtf"
    "LnRvd2VyLjAubWFwcy5wcm9qZWN0aW9uLndlaWdodCI6eyJkdHlwZSI6IkY2NCIsInNoYXBlIjpbOCw0XSwiZGF0"
    "YV9vZmZzZXRzIjpbMjA4LDQ2NF19LCJtb2R1bGUubmV0d29ya18ud2VpZ2h0Ijp7ImR0eXBlIjoiRjY0Iiwic2hh"
    "cGUiOlsyLDhdLCJkYXRhX29mZnNldHMiOls0NjQsNTkyXX19ICAgICAgnRD6DriL2z/jhqE5X8DEv6uguWcQVuA/"
    "rn826oKRBkDkCxI0y1DzvxnH4IaKy/8/QpfBWFPS5j+AdKoowMv/P50Q+g64i9u/44ahOV/AxD+roLlnEFbgv65/"
    "NuqCkQbA5AsSNMtQ8z8Zx+CGisv/v0KXwVhT0ua/gHSqKMDL/7/SyqoaojL2v9LKqhqiMvY/cY3kXyQ6kz8wVIuV"
    "xR6NP5seb4hNdck/SrIn7n5p/z+OHYP9rer0P+SIZLyJW/Q/0sqqGqIy9r/SyqoaojL2PxeuIdjPP6s/URsSTuz+"
    "3r/3Jdmod3bxv8s2QHJ7nec/lpzntINV779hdylqFaXjv+6Z/TsnVfU/hiT3RVG18r9hvgs8C8/wP7nMebgEpOi/"
    "QhSZkLWsyT+/zPmV44Hxv2DOpduCjvm/KlPg1M3v2D/Pbe+1OOnav/Zm5awiu+Y/FUWxkL9F6T9lgJJvI7a6v6wt"
    "eCBAQfc/xQ+ocviDl7+phDG7+pTiv6FXWwLJYOO/1rUBsHNQ8D93Ttzee2rSP5m1CwAk2/2/o+BSd9Cl4L/rlJsH"
    "euPGv6I00w20N+u/ZdnRxAPDlD+LN20yDLrxvwX7qWD7AfQ/5VHouSxnhL+dEPoOuIvbP+OGoTlfwMS/q6C5ZxBW"
    "4D+ufzbqgpEGQOQLEjTLUPO/GcfghorL/z9Cl8FYU9LmP4B0qijAy/8/nRD6DriL27/jhqE5X8DEP6uguWcQVuC/"
    "rn826oKRBsDkCxI0y1DzPxnH4IaKy/+/QpfBWFPS5r+AdKoowMv/vw=="
)
_OLD_BUNDLED_OUT = [
    [0.37368931505285274, 0.6263106849471473],
    [0.47091102726871376, 0.5290889727312862],
    [0.12694393133501838, 0.8730560686649818],
    [0.9420529005405054, 0.05794709945949453],
    [0.9910969354610271, 0.008903064538972856],
    [0.7035192570681833, 0.2964807429318167],
    [0.27473527853896923, 0.7252647214610307],
    [0.16269270062406233, 0.8373072993759376],
    [0.16030923108031442, 0.8396907689196855],
    [0.8747648048636123, 0.1252351951363878],
    [0.8111403801796955, 0.18885961982030444],
    [0.11016341742738198, 0.889836582572618],
    [0.8033393192695248, 0.19666068073047518],
    [0.7454713389217836, 0.2545286610782163],
    [0.043498025869547804, 0.9565019741304522],
    [0.4147983300167163, 0.5852016699832837],
    [0.03286274901450815, 0.9671372509854919],
    [0.9312669343644432, 0.06873306563555685],
    [0.8821534682521454, 0.11784653174785475],
    [0.14459063756859497, 0.855409362431405],
]


@pytest.mark.parametrize(
    "blob, expected, method",
    [(_OLD_RIDGE, _OLD_RIDGE_OUT, "predict"), (_OLD_BUNDLED, _OLD_BUNDLED_OUT, "predict_proba")],
    ids=["ridge", "bundled"],
)
def test_files_of_the_previous_version_load(tmp_path, blob, expected, method):
    path = tmp_path / "old.snnk"
    path.write_bytes(base64.b64decode(blob))
    est = load_model(path)
    X, _ = _data(20)
    got = getattr(est, method)(X)
    if isinstance(est, RandomFeatureRidge):
        # float32 features: the same arithmetic as the version that wrote it, up to the last
        # bit that BLAS/NumPy builds may round differently (3.6e-7 seen on a fresh install)
        np.testing.assert_allclose(got, np.array(expected), rtol=1e-5, atol=1e-6)
    else:  # scores now in torch (was NumPy): the last bit of a float64 product may differ
        assert isinstance(est, BundledClassifier) and est.sampler == "iid" and est.block_rows == 7
        np.testing.assert_allclose(got, np.array(expected), rtol=1e-13, atol=1e-15)
    # the saved tensors come back bit for bit, and a re-save keeps them
    doc, tensors = _read(path)
    again = _read(save_model(est, tmp_path / "again.snnk"))[1]
    for key, t in tensors.items():
        assert torch.equal(again[key], t), key
    assert doc["params"].keys() - {"batch_size", "orthogonal"} <= est.get_params().keys()


# -- the value schema: parameters, fitted values and arrays (issue #15 item 7) ------------------
def test_every_class_schema_names_a_class_of_the_library():
    import importlib

    from snnk._persist_schema import CLASS_SCHEMAS

    for qualified in CLASS_SCHEMAS:
        module, _, name = qualified.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), qualified


def _variants():
    from snnk.models import KernelRidgeCG, NystromRidge, RandomFeatureClassifier, RandomFeatureGP

    X, y = _data(30)
    Y2 = np.c_[y, -y]
    labels = np.digitize(y, [-0.5, 0.5])
    return {
        "gp nystrom float32": (
            RandomFeatureGP(num_features=12, features="nystrom", dtype="float32", max_iter=20),
            X,
            y,
        ),
        "ridge arccosine float32, 2 outputs": (
            RandomFeatureRidge(num_features=16, kernel="arccosine", random_state=0),
            X.astype(np.float32),
            Y2,
        ),
        "classifier of 3 integer labels": (
            RandomFeatureClassifier(num_features=16, loss="squared", random_state=0),
            X,
            labels,
        ),
        "bundled cos depth 2, loo, 2 outputs": (
            BundledRegressor(num_features=16, depth=2, activation="cos", alpha="loo"),
            X,
            Y2,
        ),
        "nystrom float32, intercept, 2 outputs": (
            NystromRidge(num_centers=10, fit_intercept=True, random_state=0),
            X.astype(np.float32),
            Y2,
        ),
        "krcg 2 outputs": (KernelRidgeCG(num_centers=10, random_state=0), X, Y2),
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_valid_files_of_every_kind_pass_the_schema(name, tmp_path):
    est, X, y = _variants()[name]
    est.set_params(random_state=0).fit(X, y)
    back = load_model(save_model(est, tmp_path / "m.snnk"))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


def _edit_values(name, value):
    return _set("state", "values", name, value=value)


SCHEMA_VIOLATIONS = {
    "1-D y but 2 outputs": (
        _tensor("attr.intercept_", lambda t: torch.zeros(2, dtype=t.dtype)),
        "tensors.attr.intercept_",
        "n_outputs is 1",
    ),
    "a scale of 0": (
        _tensor("attr.scale_", lambda t: torch.zeros_like(t)),
        "tensors.attr.scale_",
        "> 0",
    ),
    "NaN in coef_": (
        _tensor("attr.coef_", lambda t: torch.full_like(t, float("nan"))),
        "tensors.attr.coef_",
        "NaN",
    ),
    "NaN in a module tensor": (
        _tensor("module.network_.weight", lambda t: torch.full_like(t, float("nan"))),
        "tensors.module.network_.weight",
        "NaN",
    ),
    "n_features_in_ 0": (_edit_values("n_features_in_", 0), "n_features_in_", ">= 1"),
    "n_features_in_ a string": (_edit_values("n_features_in_", "3"), "n_features_in_", "int"),
    "alpha_ negative": (_edit_values("alpha_", -1.0), "alpha_", ">= 0"),
    "compute dtype unknown": (_edit_values("compute_dtype_", "int8"), "compute_dtype_", "one of"),
    "_y_1d missing": (_pop("state", "values", "_y_1d"), "_y_1d", "missing"),
    "depth a bool": (_set("params", "depth", value=True), "params.depth", "expected a number"),
    "depth 0": (_set("params", "depth", value=0), "params.depth", "range"),
    "activation unknown": (_set("params", "activation", value="tanh"), "activation", "tanh"),
    "a value given as an array": (
        _tensor("attr.alpha_", lambda t: torch.zeros(2)),
        "tensors.attr.alpha_",
        "no array",
    ),
}


@pytest.mark.parametrize(
    "edit, field, problem", SCHEMA_VIOLATIONS.values(), ids=list(SCHEMA_VIOLATIONS)
)
def test_values_out_of_schema_name_the_file_and_the_field(saved, tmp_path, edit, field, problem):
    doc, tensors = _read(saved)
    edit(doc, tensors)
    bad = _write(tmp_path / "bad.snnk", doc, tensors)
    with pytest.raises(ValueError) as info:
        load_model(bad)
    message = str(info.value)
    assert str(bad) in message and field in message and problem in message, message


def test_integer_classes_must_be_sorted_and_unique(tmp_path):
    from snnk.models import RandomFeatureClassifier

    X, y = _data(30)
    est = RandomFeatureClassifier(num_features=8, loss="squared", random_state=0)
    path = save_model(est.fit(X, np.digitize(y, [-0.5, 0.5])), tmp_path / "c.snnk")
    doc, tensors = _read(path)
    for classes in ([2, 1, 0], [0, 0, 1]):
        tensors["attr.classes_"] = torch.tensor(classes)
        bad = _write(tmp_path / "bad.snnk", doc, tensors)
        with pytest.raises(ValueError, match=r"classes_.*sorted and unique"):
            load_model(bad)


def test_gp_kernel_config_that_does_not_build(tmp_path):
    from snnk.models import RandomFeatureGP

    X, y = _data(30)
    est = RandomFeatureGP(num_features=8, optimize=False, random_state=0).fit(X, y)
    doc, tensors = _read(save_model(est, tmp_path / "g.snnk"))
    doc["state"]["values"]["kernel_"] = {"__kernel__": {"name": "gaussian", "lengthscale": -1}}
    bad = _write(tmp_path / "bad.snnk", doc, tensors)
    with pytest.raises(ValueError, match=r"kernel_.*not a valid kernel"):
        load_model(bad)
