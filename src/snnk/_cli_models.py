"""``snnk fit`` and ``snnk predict``: kernel machines on CSV / Parquet files."""

from __future__ import annotations

import csv
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

from snnk._utils.files import atomic_write
from snnk._utils.tabular import CATEGORICAL_CHOICES, iter_table

MODELS = {
    "ridge": "RandomFeatureRidge",
    "classifier": "RandomFeatureClassifier",
    "gp": "RandomFeatureGP",
    "nystrom": "NystromRidge",
}
#: models fitted from a stream of chunks; the others load the file into memory
STREAMING = ("ridge", "classifier")


def add_parsers(sub) -> None:
    fit = sub.add_parser(
        "fit",
        help="fit a kernel machine on a CSV or Parquet file and save it (safetensors + JSON)",
        description="Fit a kernel machine on a CSV/Parquet file. Ridge and classifier models "
        "stream the file in chunks (memory independent of the number of rows); gp and "
        "nystrom read it into memory. A held-out split (every k-th row) is scored.",
    )
    fit.add_argument("data", help="training data: .csv (optionally .gz/.bz2) or .parquet")
    fit.add_argument("--target", required=True, help="name of the target column")
    fit.add_argument("--model", choices=sorted(MODELS), default="ridge")
    fit.add_argument("--kernel", default="gaussian", help="gaussian, laplace, matern, ...")
    fit.add_argument(
        "--lengthscale", default=None, help="a positive number, or 'scale' (ridge/classifier)"
    )
    fit.add_argument(
        "--num-features",
        type=int,
        default=None,
        help="random features D (centres M for nystrom); model default if omitted",
    )
    fit.add_argument("--alpha", default=None, help="ridge strength, or 'gcv' / 'loo'")
    fit.add_argument(
        "--categorical",
        choices=CATEGORICAL_CHOICES,
        default="error",
        help="what to do with non-numeric feature columns (default: error)",
    )
    fit.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="fraction of rows held out for the summary metric (0 to skip)",
    )
    fit.add_argument("--chunk-rows", type=int, default=65_536)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    fit.add_argument("-o", "--output", required=True, help="model file to write")

    pred = sub.add_parser("predict", help="predict with a saved model, chunk by chunk")
    pred.add_argument("model", help="a model file written by 'snnk fit'")
    pred.add_argument("data", help=".csv or .parquet with the model's feature columns")
    pred.add_argument(
        "-o", "--output", required=True, help="predictions: .csv (LF line endings) or .parquet"
    )
    pred.add_argument("--chunk-rows", type=int, default=65_536)
    pred.add_argument("--proba", action="store_true", help="also write class probabilities")
    pred.add_argument(
        "--id",
        action="append",
        default=[],
        metavar="COLUMN",
        help="a column copied to the output before the predictions (repeatable)",
    )


def _number_or_word(value: str | None, words: tuple[str, ...], name: str):
    if value is None or value in words:
        return value
    try:
        out = float(value)
    except ValueError:
        raise ValueError(
            f"--{name} must be a number or one of {list(words)}, got {value!r}"
        ) from None
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"--{name} must be a non-negative finite number, got {value!r}")
    return out


def _estimator(args):
    import snnk.models as models

    name = MODELS[args.model]
    if not hasattr(models, name):
        raise ValueError(f"model {args.model!r} ({name}) is not available in this snnk build")
    cls = getattr(models, name)
    params = {"kernel": args.kernel, "random_state": args.seed}
    ls = _number_or_word(args.lengthscale, ("scale",), "lengthscale")
    if ls is not None:
        params["lengthscale"] = ls
    alpha = _number_or_word(args.alpha, ("gcv", "loo"), "alpha")
    if alpha is not None:
        params["alpha"] = alpha
    if args.num_features is not None:
        params["num_centers" if args.model == "nystrom" else "num_features"] = args.num_features
    if args.model == "nystrom":
        params["fit_intercept"] = True  # file targets (prices, delays) rarely have zero mean
    accepted = cls().get_params()
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise ValueError(f"--model {args.model} does not take {unknown}")
    if "verbose" in accepted:
        params["verbose"] = not args.quiet
    return cls(**params)


class _Split:
    """Re-iterable ``(X, y)`` chunks of a file, keeping (or dropping) every k-th row."""

    def __init__(self, path, target, every: int, keep_holdout: bool, args):
        self.path, self.target, self.every, self.keep, self.args = (
            path,
            target,
            every,
            keep_holdout,
            args,
        )
        self.names: list[str] | None = None

    def __iter__(self):
        start = 0
        for X, y, names in iter_table(
            self.path,
            self.target,
            chunk_rows=self.args.chunk_rows,
            categorical=self.args.categorical,
        ):
            self.names = names
            idx = np.arange(start, start + len(X))
            start += len(X)
            held = (idx % self.every == 0) if self.every else np.zeros(len(X), dtype=bool)
            mask = held if self.keep else ~held
            if mask.any():
                yield X[mask], y[mask]


def _named(est, X):
    """``X`` as a DataFrame with the model's column names (scikit-learn checks they match)."""
    import pandas as pd

    names = getattr(est, "feature_names_in_", None)
    return X if names is None else pd.DataFrame(X, columns=names, copy=False)


def _metric(est, chunks) -> tuple[str, float, int]:
    from sklearn.base import is_classifier

    n, right, sse, sy, syy = 0, 0, 0.0, 0.0, 0.0
    for X, y in chunks:
        p = est.predict(_named(est, X))
        n += len(y)
        if is_classifier(est):
            right += int(np.sum(p == y))
        else:
            y = y.astype(np.float64)
            sse += float(np.sum((p - y) ** 2))
            sy += float(y.sum())
            syy += float(np.sum(y**2))
    if n == 0:
        return "", math.nan, 0
    if is_classifier(est):
        return "accuracy", right / n, n
    tss = syy - sy * sy / n
    return "R2", (1.0 - sse / tss) if tss > 0 else math.nan, n


def run_fit(args) -> int:
    if not 0 <= args.holdout < 1:
        raise ValueError(f"--holdout must be in [0, 1), got {args.holdout}")
    every = 0 if args.holdout == 0 else max(2, round(1 / args.holdout))
    est = _estimator(args)
    train = _Split(args.data, args.target, every, False, args)
    start = time.perf_counter()
    if args.model in STREAMING:
        est.fit(train)
    else:
        parts = list(train)
        if not parts:
            raise ValueError(f"{args.data} has no training rows")
        est.fit(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    seconds = time.perf_counter() - start
    est.feature_names_in_ = np.asarray(train.names, dtype=object)
    est.save(args.output)
    if not args.quiet:
        name, value, n = _metric(est, _Split(args.data, args.target, every, True, args))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"model   {type(est).__name__} ({est.n_features_in_} features) -> {args.output}")
        print(f"fit     {seconds:.2f} s, peak memory {peak:.0f} MB")
        if n:
            print(f"holdout {name} = {value:.4f} on {n} rows (every {every}th row)")
    return 0


def run_predict(args) -> int:
    from snnk.io import load_model

    est = load_model(args.model)
    names = getattr(est, "feature_names_in_", None)
    features = None if names is None else [str(c) for c in names]
    out = Path(args.output)
    proba = args.proba and hasattr(est, "predict_proba")
    if args.proba and not proba:
        raise ValueError(f"{type(est).__name__} has no class probabilities (--proba)")
    kind = _output_kind(out)
    rows = 0
    ids = list(args.id)
    if features is not None and (clash := [c for c in ids if c in features]):
        raise ValueError(f"--id {clash} are feature columns of the model; pass other columns")
    header = ids + ["prediction"] + ([f"proba_{c}" for c in est.classes_] if proba else [])

    def records():
        nonlocal rows
        chunks = iter_table(args.data, ids or None, features=features, chunk_rows=args.chunk_rows)
        for X, idv, _ in chunks:  # the id columns come back as the "target" of the table
            X = _named(est, X)
            pred = est.predict(X).tolist()
            scores = est.predict_proba(X).tolist() if proba else [[]] * len(pred)
            keys = [[]] * len(pred) if not ids else np.asarray(idv).reshape(len(pred), -1).tolist()
            yield from ([*k, p, *q] for k, p, q in zip(keys, pred, scores, strict=True))
            rows += len(X)

    def write(tmp: Path) -> None:
        if kind == "parquet":  # one table (predictions are one small column per class)
            import pandas as pd

            pd.DataFrame(list(records()), columns=header).to_parquet(tmp, index=False)
            return
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")  # LF, not csv's default CRLF
            writer.writerow(header)
            writer.writerows(records())

    atomic_write(out, write)
    print(f"wrote {rows} predictions to {out}", file=sys.stderr)
    return 0


def _output_kind(path: Path) -> str:
    """``"csv"`` or ``"parquet"`` from the suffix of ``-o`` (a clear error otherwise)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"--output {str(path)!r}: the suffix says the format; use .csv or .parquet")


def run(args) -> int:
    """Run ``fit`` or ``predict``; bad input prints one clear line and returns 2."""
    try:
        return run_fit(args) if args.command == "fit" else run_predict(args)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        print(f"snnk {args.command}: error: {exc}", file=sys.stderr)
        return 2
