"""``snnk fit`` and ``snnk predict``: kernel machines on CSV / Parquet tables.

``fit`` reads the table once to hold out every k-th row and learn the column transform
(:mod:`snnk._cli_preprocess`: standardised numbers, one-hot or ordinal text, imputed gaps)
from the training rows (:mod:`snnk._cli_data`), fits the model on the transformed rows (in
memory, or streamed chunk by chunk for ridge / classifier on large files), scores the
hold-out rows, writes the model and its column transform to one safetensors + JSON file
(atomically: a failed fit leaves no file) and prints a summary
(:mod:`snnk._cli_summary`). ``predict`` applies the saved transform and model chunk by
chunk, and scores the predictions when the table holds the target column.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import numpy as np

from snnk._cli_data import Rows, choose_model, numbered_frames, scan, target_values
from snnk._cli_preprocess import (
    CATEGORICAL,
    MISSING,
    Drift,
    build_transform,
    feature_columns,
    learn,
    output_names,
    transform,
)
from snnk._cli_schema import check_spec
from snnk._cli_summary import ClassificationScore, RegressionScore, describe_model
from snnk._persist import load_model_and_preprocessing, save_model
from snnk._utils.files import atomic_write, check_writable_path
from snnk._utils.tabular import table_columns

MODELS = {
    "ridge": "RandomFeatureRidge",
    "classifier": "RandomFeatureClassifier",
    "gp": "RandomFeatureGP",
    "nystrom": "NystromRidge",
}
#: models that can be fitted from a stream of chunks; the others take the training sample
STREAMING = ("ridge", "classifier")
#: predictions further than this fraction of the target range beyond it are reported
BEYOND = 0.1


def add_parsers(sub) -> None:
    fit = sub.add_parser(
        "fit",
        help="fit a kernel machine on a CSV or Parquet table and save it (safetensors + JSON)",
        description="Fit a kernel machine on a CSV/Parquet table: numeric columns are "
        "standardised, text columns one-hot encoded, missing values imputed (flags below), "
        "every k-th row is held out and scored, and the model is saved with its column "
        "transform in one file (no pickle). Tables of more than --memory-rows training rows "
        "are streamed (ridge, classifier).",
    )
    fit.add_argument("data", help="training data: .csv (optionally .gz/.bz2) or .parquet")
    fit.add_argument("--target", required=True, help="name of the target column")
    fit.add_argument(
        "--model",
        choices=["auto", *sorted(MODELS)],
        default="auto",
        help="auto (default): classifier for a text target or one of two values, else ridge",
    )
    fit.add_argument("--kernel", default="gaussian", help="gaussian, laplace, matern, ...")
    fit.add_argument("--lengthscale", default=None, help="a positive number, or 'scale'")
    fit.add_argument(
        "--num-features",
        type=int,
        default=None,
        help="random features D (centres M for nystrom); model default if omitted",
    )
    fit.add_argument("--alpha", default=None, help="ridge strength, or 'gcv' / 'loo'")
    fit.add_argument(
        "--categorical",
        choices=CATEGORICAL,
        default="onehot",
        help="text columns: one-hot (default), ordinal codes, drop them, or stop with an error",
    )
    fit.add_argument(
        "--max-categories",
        type=int,
        default=100,
        help="most frequent categories kept per text column (default 100); a column whose "
        "kept categories cover under half of the rows is ignored as an identifier",
    )
    fit.add_argument(
        "--missing",
        choices=MISSING,
        default="impute",
        help="missing feature values: impute (median / most frequent, default) or error",
    )
    fit.add_argument(
        "--ignore", action="append", default=[], metavar="COLUMN", help="a column not to use"
    )
    fit.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="fraction of rows held out and scored (every k-th row; 0 to skip)",
    )
    fit.add_argument(
        "--memory-rows",
        type=int,
        default=200_000,
        help="training rows held in memory; beyond, the column transform is learned from a "
        "uniform sample of this many rows and ridge / classifier stream the file",
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
    pred.add_argument("--quiet", action="store_true", help="no report")


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


def _estimator(args, model: str):
    import snnk.models as models

    name = MODELS[model]
    if not hasattr(models, name):
        raise ValueError(f"model {model!r} ({name}) is not available in this snnk build")
    cls = getattr(models, name)
    params = {"kernel": args.kernel, "random_state": args.seed}
    ls = _number_or_word(args.lengthscale, ("scale",), "lengthscale")
    if ls is not None:
        params["lengthscale"] = ls
    alpha = _number_or_word(args.alpha, ("gcv", "loo"), "alpha")
    if alpha is not None:
        params["alpha"] = alpha
    if args.num_features is not None:
        params["num_centers" if model == "nystrom" else "num_features"] = args.num_features
    if model == "nystrom":
        params["fit_intercept"] = True  # file targets (prices, delays) rarely have zero mean
    accepted = cls().get_params()
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise ValueError(f"--model {model} does not take {unknown}")
    if "verbose" in accepted:
        params["verbose"] = not args.quiet
    return cls(**params)


def _check_fit_args(args) -> int:
    """The hold-out period ``k`` (0: no hold-out); bad flags raise naming the flag."""
    if not 0 <= args.holdout < 1:
        raise ValueError(f"--holdout must be in [0, 1), got {args.holdout}")
    for flag in ("max_categories", "memory_rows", "chunk_rows"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    columns = table_columns(args.data)
    missing = [c for c in [args.target, *args.ignore] if c not in columns]
    if missing:
        raise ValueError(f"{args.data!r} has no column(s) {missing}; its columns are {columns}")
    if len(columns) == 1:
        raise ValueError(f"{args.data!r} has only the target column {args.target!r}")
    return 0 if args.holdout == 0 else max(2, round(1 / args.holdout))


def run_fit(args) -> int:
    import pandas as pd

    start = time.perf_counter()
    every = _check_fit_args(args)
    out = check_writable_path(args.output, "--output")
    sc = scan(args.data, None, args.target, every, args.memory_rows, args.chunk_rows, args.seed)
    model, why = choose_model(args.model, sc.sample[args.target])
    task = "classification" if model == "classifier" else "regression"
    spec, notes = learn(
        sc.sample.drop(columns=args.target),
        args.target,
        task,
        categorical=args.categorical,
        missing=args.missing,
        max_categories=args.max_categories,
        ignore=args.ignore,
        where=repr(args.data),
    )
    numeric_labels = bool(pd.api.types.is_numeric_dtype(sc.sample[args.target].dtype))
    y = target_values(sc.sample[args.target], task, numeric_labels)
    spec["target_range"] = [float(y.min()), float(y.max())] if task == "regression" else None
    ct = build_transform(spec)
    est = _estimator(args, model)
    columns = [*feature_columns(spec), args.target]
    rows = Rows(args.data, spec, ct, columns, every, False, args.chunk_rows, numeric_labels)
    fit_start = time.perf_counter()
    if not sc.complete:
        notes.append(
            f"more training rows than --memory-rows: the column transform was learned from a "
            f"uniform sample of {len(y):,} rows; "
            + (
                f"the model streamed all {sc.train:,}"
                if model in STREAMING
                else f"--model {model} was fitted on that sample"
            )
        )
    if sc.complete or model not in STREAMING:
        est.fit(transform(spec, ct, sc.sample, where=repr(args.data)), y)
    else:
        est.fit(rows)
    fit_seconds = time.perf_counter() - fit_start
    drift = Drift()
    score = _score_holdout(est, rows, task, drift) if sc.holdout else None
    save_model(est, out, preprocessing=spec)
    if not args.quiet:
        lines = _fit_summary(args, est, spec, sc, every, why, notes)
        total = time.perf_counter() - start
        lines.append(f"time      fit {fit_seconds:.2f} s, total {total:.2f} s{_peak_memory()}")
        warnings = []
        if score is not None:
            lines += score.lines("hold-out")
            warnings = drift.warnings(spec, "hold-out rows")
            if isinstance(score, RegressionScore):
                warnings += score.warnings("hold-out", args.target)
        lines += [f"warning   {w}" for w in warnings]
        print("\n".join(lines))
    return 0


def _peak_memory() -> str:
    """``", peak memory N MB"`` where the platform reports it (not on Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return ""
    return f", peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"


def _score_holdout(est, rows: Rows, task: str, drift: Drift):
    """Score the hold-out rows of ``rows``' file (their ``Drift`` goes to ``drift``)."""
    held = Rows(**{**vars(rows), "holdout": True, "drift": drift})
    if task == "regression":
        score = RegressionScore()
        for X, y, idx, outside in held.scored():
            score.update(y, est.predict(X), idx, outside)
        return score
    score = ClassificationScore(est.classes_)
    proba = hasattr(est, "predict_proba")
    for X, y, _, _ in held.scored():
        score.update(y, est.predict(X), est.predict_proba(X) if proba else None)
    return score


def _fit_summary(args, est, spec, sc, every: int, why: str, notes: list[str]) -> list[str]:
    size = Path(args.output).stat().st_size / 1e6 if Path(args.output).exists() else 0.0
    split = f"every {every}th row" if every else "none"
    lines = [
        f"model     {type(est).__name__} -> {args.output} ({size:.1f} MB)",
        f"data      {args.data}: {sc.rows:,} rows; target {args.target!r}: {why}",
        f"rows      {sc.train:,} training, {sc.holdout:,} held out ({split})"
        + (f", {sc.no_target:,} without a target skipped" if sc.no_target else ""),
    ]
    kinds = [f"{len(spec['numeric'])} numeric (standardised)"]
    for kind in ("onehot", "ordinal"):
        if spec[kind]:
            cats = ", ".join(f"{e['name']} {len(e['categories'])}" for e in spec[kind][:6])
            more = ", ..." if len(spec[kind]) > 6 else ""
            kinds.append(f"{len(spec[kind])} {kind} ({cats}{more})")
    lines.append(f"columns   {', '.join(kinds)} -> {len(output_names(spec))} model inputs")
    for name, reason in spec["ignored"].items():
        lines.append(f"          ignored {name!r}: {reason}")
    lines += [f"          {n}" for n in notes]
    lines.append(f"settings  {describe_model(est)}")
    return lines


def _named(est, X):
    """``X`` as a DataFrame with the model's column names (scikit-learn checks they match)."""
    import pandas as pd

    names = getattr(est, "feature_names_in_", None)
    return X if names is None else pd.DataFrame(X, columns=names, copy=False)


def run_predict(args) -> int:
    est, spec = load_model_and_preprocessing(args.model, check=check_spec)
    out = Path(args.output)
    kind = _output_kind(out)
    proba = args.proba and hasattr(est, "predict_proba")
    if args.proba and not proba:
        raise ValueError(f"{type(est).__name__} has no class probabilities (--proba)")
    if spec is not None:
        features, ct = feature_columns(spec), build_transform(spec)
    else:  # a model file of an earlier snnk fit: numeric columns, as they are
        names = getattr(est, "feature_names_in_", None)
        if names is None:
            raise ValueError(f"{args.model} has no column names: it was not written by snnk fit")
        features, ct = [str(c) for c in names], None
    ids = list(args.id)
    if clash := [c for c in ids if c in features]:
        raise ValueError(f"--id {clash} are feature columns of the model; pass other columns")
    target = spec["target"] if spec is not None else None
    scored = target is not None and target in table_columns(args.data)
    header = ids + ["prediction"] + ([f"proba_{c}" for c in est.classes_] if proba else [])
    drift, counts = Drift(), {"rows": 0, "beyond": 0}
    score = None
    if scored:
        is_clf = spec["task"] == "classification"
        score = ClassificationScore(est.classes_) if is_clf else RegressionScore()

    def records():
        columns = features + ids + ([target] if scored else [])
        for frame in numbered_frames(args.data, columns, args.chunk_rows):
            if ct is None:
                X = _named(est, frame[features].to_numpy(dtype=np.float64))
            else:
                X = transform(spec, ct, frame, drift, where=repr(args.data))
            pred = est.predict(X)
            scores = est.predict_proba(X) if proba else None
            if scored:
                _score_chunk(score, frame, target, spec, pred, est, X, counts, drift)
            if spec is not None and spec.get("target_range"):
                counts["beyond"] += _beyond(pred, spec["target_range"])
            keys = frame[ids].to_numpy().tolist() if ids else [[]] * len(pred)
            rest = scores.tolist() if proba else [[]] * len(pred)
            yield from ([*k, p, *q] for k, p, q in zip(keys, pred.tolist(), rest, strict=True))
            counts["rows"] += len(frame)

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
    if not args.quiet:
        lines = [f"wrote {counts['rows']:,} predictions to {out}"]
        if score is not None:
            lines += score.lines(f"{target!r}")
        warnings = drift.warnings(spec, "rows") if spec is not None else []
        if isinstance(score, RegressionScore):
            warnings += score.warnings("scored", target)
        if counts["beyond"]:
            lo, hi = spec["target_range"]
            warnings.append(
                f"{counts['beyond']} predictions lie more than {BEYOND:.0%} of the training "
                f"range of {target!r} ({lo:.6g} to {hi:.6g}) beyond it: extrapolations"
            )
        lines += [f"warning   {w}" for w in warnings]
        print("\n".join(lines))
    return 0


def _beyond(pred, target_range) -> int:
    lo, hi = target_range
    margin = BEYOND * (hi - lo)
    p = np.asarray(pred, dtype=np.float64)
    return int(np.sum((p < lo - margin) | (p > hi + margin)))


def _score_chunk(score, frame, target, spec, pred, est, X, counts, drift) -> None:
    """Add the rows of a chunk that have a target to the prediction-time score."""
    import pandas as pd

    has = frame[target].notna().to_numpy()
    if not has.any():
        return
    if isinstance(score, RegressionScore):
        y = target_values(frame[target][has], "regression", True)
        outside = drift.last_outside[has] if drift.last_outside is not None else None
        score.update(y, np.asarray(pred)[has], frame.index.to_numpy()[has], outside)
        return
    numeric = pd.api.types.is_numeric_dtype(np.asarray(est.classes_).dtype)
    y = target_values(frame[target][has], "classification", numeric)
    p = est.predict_proba(X[has]) if hasattr(est, "predict_proba") else None
    score.update(y, np.asarray(pred)[has], p)


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
    except (ValueError, TypeError, KeyError, OSError) as exc:
        print(f"snnk {args.command}: error: {exc}", file=sys.stderr)
        return 2
