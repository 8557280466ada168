"""The snnk command: --version and a quick demo run end to end (table and PNG)."""

import subprocess
import sys

import snnk
from snnk.cli import main


def test_version_flag():
    out = subprocess.run(
        [sys.executable, "-m", "snnk.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"snnk {snnk.__version__}"


def test_quick_demo_prints_table_and_writes_png(tmp_path, capsys):
    png = tmp_path / "demo.png"
    assert main(["demo", "--quick", "--out", str(png)]) == 0
    text = capsys.readouterr().out
    for name in (
        "Fourier (structured)",
        "Nyström (kmeans++)",
        "Positive hyperbolic",
        "Arc-cosine (orthogonal)",
        "URF gaussian",
    ):
        assert name in text
    assert "closed form" in text and "MLP 256-256" in text
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _table(n=400, seed=0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.05 * rng.normal(size=n)
    return pd.DataFrame(X, columns=["a", "b", "c"]).assign(y=y, label=np.where(y > 0, "hi", "lo"))


def test_fit_and_predict_on_csv_round_trip(tmp_path, capsys):
    """The predictions of the saved file equal those of the same pipeline built in memory:
    the column transform learned from the training rows (every row but each 5th), the same
    model, the same seed."""
    import numpy as np

    from snnk._cli_preprocess import build_transform, learn, transform
    from snnk.models import RandomFeatureRidge

    df = _table()
    df.drop(columns="label").to_csv(tmp_path / "train.csv", index=False)
    model = tmp_path / "m.snnk"
    argv = ["fit", str(tmp_path / "train.csv"), "--target", "y", "--num-features", "256"]
    assert (
        main(
            [*argv, "--lengthscale", "1", "--alpha", "1e-3", "--chunk-rows", "64", "-o", str(model)]
        )
        == 0
    )
    text = capsys.readouterr().out
    r2 = float(text.split("R2 = ")[1].split()[0])
    assert r2 > 0.8 and "peak memory" in text and "every 5th row" in text
    assert "RMSE" in text and "MAE" in text and "lengthscale 1" in text and "alpha 0.001" in text
    assert model.read_bytes()[8:9] == b"{"  # safetensors: length prefix, then a JSON header
    df[["a", "b", "c"]].to_csv(tmp_path / "new.csv", index=False)
    assert (
        main(["predict", str(model), str(tmp_path / "new.csv"), "-o", str(tmp_path / "p.csv")]) == 0
    )
    pred = _predictions(tmp_path / "p.csv")
    train = df.drop(columns="label")[np.arange(len(df)) % 5 != 0]
    spec, _ = learn(train.drop(columns="y"), "y", "regression")
    ct = build_transform(spec)
    est = RandomFeatureRidge(num_features=256, lengthscale=1.0, alpha=1e-3, random_state=0)
    est.fit(transform(spec, ct, train), train["y"].to_numpy())
    ref = est.predict(transform(spec, ct, df))
    np.testing.assert_array_equal(pred, ref)


def test_classifier_on_parquet_with_probabilities(tmp_path):
    import numpy as np
    import pandas as pd

    df = _table(seed=1)
    df.drop(columns="y").to_parquet(tmp_path / "d.parquet", row_group_size=100)
    model, out = tmp_path / "c.snnk", tmp_path / "p.csv"
    assert (
        main(
            [
                "fit",
                str(tmp_path / "d.parquet"),
                "--target",
                "label",
                "--model",
                "classifier",
                "--num-features",
                "128",
                "--quiet",
                "-o",
                str(model),
            ]
        )
        == 0
    )
    assert (
        main(["predict", str(model), str(tmp_path / "d.parquet"), "--proba", "-o", str(out)]) == 0
    )
    p = pd.read_csv(out)
    assert list(p.columns) == ["prediction", "proba_hi", "proba_lo"]
    np.testing.assert_allclose(p[["proba_hi", "proba_lo"]].sum(axis=1), 1.0, rtol=1e-9)
    assert (p["prediction"] == df["label"]).mean() > 0.8


def test_in_memory_models_from_the_command_line(tmp_path):
    df = _table(n=200)
    df.drop(columns="label").to_csv(tmp_path / "t.csv", index=False)
    for kind in ("gp", "nystrom"):
        argv = ["fit", str(tmp_path / "t.csv"), "--target", "y", "--model", kind, "--quiet"]
        assert main([*argv, "--num-features", "32", "-o", str(tmp_path / f"{kind}.snnk")]) == 0


def test_bad_input_gives_a_message_and_exit_code_2(tmp_path, capsys):
    df = _table(n=50)
    df.to_csv(tmp_path / "t.csv", index=False)
    base = ["fit", str(tmp_path / "t.csv"), "--quiet", "-o", str(tmp_path / "m.snnk")]
    base += ["--num-features", "32"]
    assert main([*base, "--target", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([*base, "--target", "y", "--categorical", "error"]) == 2  # "label" is text
    err = capsys.readouterr().err
    assert "label" in err and "--categorical" in err
    assert main([*base, "--target", "y", "--categorical", "drop"]) == 0
    assert main([*base, "--target", "y"]) == 0  # one-hot by default
    assert main([*base, "--target", "y", "--alpha", "lots"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.csv"), "--target", "y", "-o", "x.snnk"]) == 2
    (tmp_path / "junk.snnk").write_bytes(b"\x00not a model")
    out = str(tmp_path / "p.csv")
    assert main(["predict", str(tmp_path / "junk.snnk"), str(tmp_path / "t.csv"), "-o", out]) == 2
    assert "snnk predict: error" in capsys.readouterr().err


def test_predict_writes_the_format_of_the_suffix(tmp_path):
    import pandas as pd

    df = _table()
    df.drop(columns="label").to_csv(tmp_path / "train.csv", index=False)
    model = tmp_path / "m.snnk"
    argv = ["fit", str(tmp_path / "train.csv"), "--target", "y", "--num-features", "64"]
    assert main([*argv, "--quiet", "-o", str(model)]) == 0
    df[["a", "b", "c"]].to_csv(tmp_path / "new.csv", index=False)
    new = str(tmp_path / "new.csv")
    assert main(["predict", str(model), new, "-o", str(tmp_path / "p.csv")]) == 0
    assert main(["predict", str(model), new, "-o", str(tmp_path / "p.parquet")]) == 0
    raw = (tmp_path / "p.csv").read_bytes()
    assert b"\r\n" not in raw and raw.startswith(b"prediction\n")
    from_csv = pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy()
    from_parquet = pd.read_parquet(tmp_path / "p.parquet")["prediction"].to_numpy()
    assert len(from_parquet) == len(df) and (from_csv == from_parquet).all()
    # an unknown suffix: a clear error naming --output, and no file left behind
    assert main(["predict", str(model), new, "-o", str(tmp_path / "p.xlsx")]) == 2
    assert not (tmp_path / "p.xlsx").exists()


def test_predict_carries_id_columns_through(tmp_path):
    import pandas as pd

    df = _table()
    df.drop(columns="label").to_csv(tmp_path / "train.csv", index=False)
    model = tmp_path / "m.snnk"
    argv = ["fit", str(tmp_path / "train.csv"), "--target", "y", "--num-features", "64"]
    assert main([*argv, "--quiet", "-o", str(model)]) == 0
    new = df[["a", "b", "c"]].assign(key=[f"r{i}" for i in range(len(df))], n=range(len(df)))
    new.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "p.parquet"
    cmd = ["predict", str(model), str(tmp_path / "new.csv"), "--chunk-rows", "7"]
    assert main([*cmd, "--id", "key", "--id", "n", "-o", str(out)]) == 0
    got = pd.read_parquet(out)
    assert list(got.columns) == ["key", "n", "prediction"]
    assert got["key"].tolist() == new["key"].tolist() and got["n"].tolist() == list(range(len(df)))
    plain = tmp_path / "q.csv"
    assert main([*cmd, "-o", str(plain)]) == 0  # the same chunks: the same predictions
    np_pred = pd.read_csv(plain)["prediction"].to_numpy()
    assert (got["prediction"].to_numpy() == np_pred).all()
    # an id that is a feature of the model, or that is missing: a clear error, no file
    assert main([*cmd, "--id", "a", "-o", str(tmp_path / "x.csv")]) == 2
    assert main([*cmd, "--id", "nope", "-o", str(tmp_path / "y.csv")]) == 2
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()


def _predictions(path):
    """The prediction column of a CSV written by snnk predict, parsed exactly."""
    import numpy as np

    return np.loadtxt(path, delimiter=",", skiprows=1, usecols=0, ndmin=1)
