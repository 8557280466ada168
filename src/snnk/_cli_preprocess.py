r"""The column transform of ``snnk fit`` / ``snnk predict``: a table's columns -> model inputs.

It is learned once from the training rows with scikit-learn (``SimpleImputer`` for the
medians, ``StandardScaler`` for the means and scales), stored as plain JSON inside the model
file (under the header key ``"preprocessing"``; no pickle), checked field by field when the
file is read (:func:`check_spec`), and applied by one scikit-learn ``ColumnTransformer``
built from that JSON (:func:`build_transform`), at fit time and at predict time alike, so
both apply exactly the same transform. Per column:

- numeric (numbers, booleans): ``(x - mean) / scale`` with the mean and standard deviation
  of the training rows; a missing value is first replaced by the training median;
- one-hot (text, the default): one 0/1 input per kept category, the ``max_categories``
  most frequent ones (sorted); a missing value counts as the most frequent category; a
  category not kept (unknown at predict time, or rare) is all zeros;
- ordinal (text, ``--categorical ordinal``): the category's position in the sorted kept
  categories, standardised like a numeric column; unknown or rare categories are the mean
  position (0 after standardising).

- dates/times (text that reads as timestamps, e.g. ``2017-01-01T06:00:42Z``): three numeric
  inputs, days since 1970-01-01 UTC, the hour of the day and the weekday, each standardised
  like a numeric column (constant ones dropped).

Columns whose every value is missing, constant columns and text columns whose kept
categories cover less than half of the rows (identifiers, free text) are ignored, with the
reason recorded in the spec. Every row passes :func:`prepare` first, which counts what the
transform papers over: missing values filled, unknown categories and numbers outside the
training range (:class:`Drift`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPEC_VERSION = 1
CATEGORICAL = ("onehot", "ordinal", "drop", "error")
MISSING = ("impute", "error")
TASKS = ("regression", "classification")

#: the fields of one column entry of each kind and what each holds
ENTRY_FIELDS: dict[str, dict[str, str]] = {
    "numeric": {
        "name": "name",
        "fill": "real",
        "mean": "real",
        "scale": "positive",
        "low": "real",
        "high": "real",
    },
    "onehot": {"name": "name", "fill": "text", "categories": "texts"},
    "ordinal": {
        "name": "name",
        "fill": "text",
        "categories": "texts",
        "mean": "real",
        "scale": "positive",
    },
}
#: a numeric input derived from a column of dates/times: the column and the part
OPTIONAL_FIELDS: dict[str, dict[str, str]] = {"numeric": {"source": "name", "part": "part"}}
KINDS = tuple(ENTRY_FIELDS)
#: the numbers taken from a date/time: days since 1970-01-01 UTC, hour of the day (with
#: minutes and seconds as its fraction), day of the week (Monday 0)
TIME_PARTS = ("days", "hour", "weekday")
_DATE_LIKE = r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}"


# -- learning ------------------------------------------------------------------------------------
def _is_number_column(col) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(col.dtype))


def _as_text(col):
    """A column as object strings, missing values kept as NaN."""
    import pandas as pd

    missing = col.isna().to_numpy()
    out = col.astype(object).to_numpy(copy=True)
    out[~missing] = [str(v) for v in out[~missing]]
    out[missing] = np.nan
    return pd.Series(out, index=col.index, dtype=object)


def _numbers_if_numbers(name: str, col, where: str):
    """A text column whose every value reads as a number (a file read in chunks of different
    types) as numbers; one with a few values that do not, a clear error."""
    import pandas as pd

    if _is_number_column(col):
        return col
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if not bad.any():
        return values.astype(np.float64)
    if bad.sum() <= 0.05 * col.notna().sum():
        raise ValueError(
            f"column {name!r} of {where} holds numbers and {int(bad.sum())} other value(s) "
            f"such as {col[bad].iloc[0]!r}: correct or blank them (blanks are imputed), or "
            f"--ignore {name}"
        )
    return col


def _numeric_entries(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Median, mean and scale of each numeric column with scikit-learn (on the column divided
    by a power of two near its largest magnitude, which is exact and keeps squares finite)."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    names = list(columns)
    A = np.asfortranarray(np.stack([columns[n] for n in names], axis=1))  # as pandas gives
    with np.errstate(divide="ignore"):
        top = np.nanmax(np.abs(A), axis=0)
        unit = np.where(top > 0, 2.0 ** np.floor(np.log2(np.where(top > 0, top, 1.0))), 1.0)
    U = A / unit
    fill = SimpleImputer(strategy="median", keep_empty_features=True).fit(U).statistics_
    scaler = StandardScaler().fit(np.where(np.isnan(U), fill, U))
    low, high = np.nanmin(A, axis=0), np.nanmax(A, axis=0)
    return [
        {
            "name": name,
            "fill": float(fill[j] * unit[j]),
            "mean": float(scaler.mean_[j] * unit[j]),
            "scale": float(scaler.scale_[j] * unit[j]),
            "low": float(low[j]),
            "high": float(high[j]),
        }
        for j, name in enumerate(names)
    ]


def _parse_times(text):
    """UTC timestamps of a column of strings (``NaT`` where a value does not read as one)."""
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.to_datetime(text, errors="coerce", utc=True, format="mixed")


def _time_part(times, part: str) -> np.ndarray:
    """One of :data:`TIME_PARTS` of parsed timestamps, float64 (NaN where ``NaT``)."""
    import pandas as pd

    if part == "days":
        out = (times - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(days=1)
    elif part == "hour":
        out = times.dt.hour + times.dt.minute / 60 + times.dt.second / 3600
    else:
        out = times.dt.day_of_week
    return out.to_numpy(dtype=np.float64, na_value=np.nan)


def _time_columns(col) -> dict[str, np.ndarray]:
    """The :data:`TIME_PARTS` of a text column of dates/times (at least 90 % of its first
    1,000 values look like ``y-m-d`` / ``d/m/y`` and read as timestamps), else ``{}``."""
    text = _as_text(col)
    sample = text.dropna().iloc[:1000]
    if not len(sample) or sample.str.contains(_DATE_LIKE).mean() < 0.9:
        return {}
    if _parse_times(sample).notna().mean() < 0.9:
        return {}
    times = _parse_times(text)
    return {part: _time_part(times, part) for part in TIME_PARTS}


def _text_entry(name: str, col, encoding: str, max_categories: int) -> tuple[dict | None, str]:
    """The entry of a text column, or ``(None, reason)`` when it is ignored."""
    counts = _as_text(col).dropna().value_counts()
    present = int(counts.sum())
    if len(counts) < 2:
        return None, f"one value ({counts.index[0]!r}) in every row that has one"
    # most frequent first; ties broken by the category, so the choice is reproducible
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = ranked[:max_categories]
    covered = sum(c for _, c in kept)
    if len(ranked) > max_categories and covered < 0.5 * present:
        return None, (
            f"{len(ranked):,} distinct values in {present:,} rows, the {max_categories} most "
            f"frequent cover {covered / present:.0%} (an identifier or free text?); raise "
            f"--max-categories to use it"
        )
    categories = sorted(c for c, _ in kept)
    entry: dict[str, Any] = {"name": name, "fill": ranked[0][0], "categories": categories}
    if encoding == "ordinal":  # moments of the positions over the rows of kept categories
        pos = np.array([categories.index(c) for c, _ in kept], dtype=float)
        w = np.array([n for _, n in kept], dtype=float) / covered
        mean = float(w @ pos)
        std = math.sqrt(float(w @ (pos - mean) ** 2))
        entry.update(mean=mean, scale=std if std > 0 else 1.0)
    note = ""
    if len(ranked) > max_categories:
        note = (
            f"{name}: the {max_categories} most frequent of {len(ranked)} categories kept "
            f"({covered / present:.1%} of rows); the others are encoded like unknown ones"
        )
    return entry, note


def learn(
    frame,
    target: str,
    task: str,
    *,
    categorical: str = "onehot",
    missing: str = "impute",
    max_categories: int = 100,
    ignore: Sequence[str] = (),
    where: str = "the data",
) -> tuple[dict[str, Any], list[str]]:
    """The spec of the column transform learned from the training rows ``frame`` (a pandas
    DataFrame of the feature columns; ``target`` and ``ignore`` columns are skipped), and
    notes for the user. Raises ``ValueError`` naming the column and the flag that changes
    the behaviour (``--categorical``, ``--missing``)."""
    spec: dict[str, Any] = {
        "version": SPEC_VERSION,
        "target": target,
        "task": task,
        "missing": missing,
        "numeric": [],
        "onehot": [],
        "ordinal": [],
        "ignored": {c: "--ignore" for c in ignore},
    }
    notes: list[str] = []
    numeric: dict[str, np.ndarray] = {}
    derived: dict[str, dict[str, str]] = {}
    for name in frame.columns:
        if name == target or name in ignore:
            continue
        col = frame[name]
        gaps = int(col.isna().sum())
        if gaps == len(col):
            spec["ignored"][name] = "every value is missing"
            continue
        if gaps and missing == "error":
            raise ValueError(
                f"column {name!r} of {where} has {gaps} missing value(s) in {len(col)} training "
                f"rows; fill them first, or pass --missing impute (median / most frequent)"
            )
        col = _numbers_if_numbers(name, col, where)
        if not _is_number_column(col) and (parts := _time_columns(col)):
            used = []
            for part, values in parts.items():
                if np.nanmin(values, initial=np.inf) < np.nanmax(values, initial=-np.inf):
                    numeric[f"{name}:{part}"] = values
                    derived[f"{name}:{part}"] = {"source": name, "part": part}
                    used.append(part)
            notes.append(f"{name}: dates/times, used as numbers: {', '.join(used) or 'none'}")
            continue
        if _is_number_column(col):
            values = col.to_numpy(dtype=np.float64)
            if np.isinf(values).any():
                raise ValueError(
                    f"column {name!r} of {where} holds infinite values "
                    f"({int(np.isinf(values).sum())} rows); replace them or pass --ignore {name}"
                )
            if np.nanmin(values) == np.nanmax(values):
                spec["ignored"][name] = f"constant ({np.nanmin(values):g})"
                continue
            numeric[name] = values
        elif categorical == "error":
            raise ValueError(
                f"column {name!r} of {where} is text: encode it (--categorical onehot or "
                f"ordinal), drop it (--categorical drop) or --ignore {name}"
            )
        elif categorical == "drop":
            spec["ignored"][name] = "text (--categorical drop)"
        else:
            entry, note = _text_entry(name, col, categorical, max_categories)
            if entry is None:
                spec["ignored"][name] = note
            else:
                spec[categorical].append(entry)
                notes += [note] if note else []
    spec["numeric"] = _numeric_entries(numeric) if numeric else []
    for entry in spec["numeric"]:
        entry.update(derived.get(entry["name"], {}))
    if not any(spec[k] for k in KINDS):
        raise ValueError(
            f"no usable feature column in {where}: ignored {spec['ignored'] or 'none'}"
        )
    return spec, notes


# -- applying ------------------------------------------------------------------------------------
def _standardise(X, fill, mean, scale):
    A = np.asarray(X, dtype=np.float64)
    return (np.where(np.isnan(A), fill, A) - mean) / scale


def _fill_text(X, fill):
    return X.fillna(dict(zip(X.columns, fill, strict=True)))


def feature_columns(spec: dict[str, Any]) -> list[str]:
    """The table columns the transform reads, in the order of the model's inputs."""
    return list(dict.fromkeys(e.get("source", e["name"]) for k in KINDS for e in spec[k]))


def output_names(spec: dict[str, Any]) -> list[str]:
    """One name per model input: ``column`` (numeric, ordinal) or ``column=category``."""
    names = [e["name"] for e in spec["numeric"]]
    names += [f"{e['name']}={c}" for e in spec["onehot"] for c in e["categories"]]
    return names + [e["name"] for e in spec["ordinal"]]


def _example(spec: dict[str, Any]):
    """A one-row frame of fill values: what the parameter-free pieces are 'fitted' on."""
    import pandas as pd

    row = {e["name"]: [float(e["fill"])] for e in spec["numeric"]}
    for kind in ("onehot", "ordinal"):
        row.update({e["name"]: pd.Series([e["fill"]], dtype=object) for e in spec[kind]})
    return pd.DataFrame(row)


def build_transform(spec: dict[str, Any]):
    """The scikit-learn ``ColumnTransformer`` of ``spec`` (a spec that passed
    :func:`check_spec`, or from :func:`learn`), ready to ``transform``.

    Every piece is determined by the spec alone (a ``FunctionTransformer`` with the saved
    fill values, means and scales; encoders with the saved categories), so fitting it on the
    one-row frame of fill values reproduces the transform of the fit exactly.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder

    def scaler(entries, fill=None):
        kw = {
            "fill": np.array([e["fill"] for e in entries] if fill is None else fill, dtype=float),
            "mean": np.array([e["mean"] for e in entries], dtype=float),
            "scale": np.array([e["scale"] for e in entries], dtype=float),
        }
        return FunctionTransformer(_standardise, kw_args=kw, feature_names_out="one-to-one")

    def filler(entries):
        kw = {"fill": [e["fill"] for e in entries]}
        return FunctionTransformer(_fill_text, kw_args=kw, feature_names_out="one-to-one")

    parts = []
    if num := spec["numeric"]:
        parts.append(("numeric", scaler(num), [e["name"] for e in num]))
    if hot := spec["onehot"]:
        encoder = OneHotEncoder(
            categories=[list(e["categories"]) for e in hot],
            handle_unknown="ignore",
            sparse_output=False,
            dtype=np.float64,
        )
        parts.append(("onehot", make_pipeline(filler(hot), encoder), [e["name"] for e in hot]))
    if ordi := spec["ordinal"]:
        encoder = OrdinalEncoder(
            categories=[list(e["categories"]) for e in ordi],
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            dtype=np.float64,
        )
        # unknown categories -> NaN -> the mean position (0 after standardising)
        pipe = make_pipeline(filler(ordi), encoder, scaler(ordi, [e["mean"] for e in ordi]))
        parts.append(("ordinal", pipe, [e["name"] for e in ordi]))
    ct = ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)
    return ct.fit(_example(spec))


def _share(k: int, n: int) -> str:
    """``k/n`` as a percentage with two significant digits (``0.037%``, ``12%``)."""
    return f"{100 * k / n:.2g}%" if n else "-"


@dataclass
class Drift:
    """What the transform papered over, per column: missing values filled (``filled``),
    unknown or rare categories (``unknown``), numbers below / above the training range, and
    the rows with any number outside it (``rows_outside``) out of ``rows``."""

    rows: int = 0
    rows_outside: int = 0
    #: the rows of the last chunk with a number outside the training range
    last_outside: np.ndarray | None = None
    filled: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)
    below: Counter = field(default_factory=Counter)
    above: Counter = field(default_factory=Counter)

    def warnings(self, spec: dict[str, Any], what: str = "rows") -> list[str]:
        """Sentences for the user, most important first (empty when there is nothing)."""
        out = []
        if self.rows_outside:
            low = {e["name"]: e["low"] for e in spec["numeric"]}
            high = {e["name"]: e["high"] for e in spec["numeric"]}
            parts = []
            for c, _ in (self.below + self.above).most_common(4):
                sides = [
                    (self.below[c], f"below {low[c]:.6g}"),
                    (self.above[c], f"above {high[c]:.6g}"),
                ]
                parts.append(f"{c} " + " and ".join(f"{n:,} {side}" for n, side in sides if n))
            out.append(
                f"{self.rows_outside:,} of {self.rows:,} {what} "
                f"({_share(self.rows_outside, self.rows)}) lie outside the training range "
                f"({'; '.join(parts)}): their predictions are extrapolations, less reliable"
            )
        if self.unknown:
            detail = ", ".join(f"{c} {n:,}" for c, n in self.unknown.most_common(4))
            out.append(
                f"categories unseen in training (or rarer than the kept ones) in {detail} "
                f"{what}: encoded as no category (one-hot all zeros / ordinal mean)"
            )
        if self.filled:
            detail = ", ".join(f"{c} {n:,}" for c, n in self.filled.most_common(4))
            out.append(
                f"missing values filled with the training median / most frequent value: "
                f"{detail} {what}"
            )
        return out


def prepare(spec: dict[str, Any], frame, drift: Drift | None = None, where: str = "the data"):
    """The feature columns of ``frame`` in the types the transform takes (float numbers,
    object strings), checked: missing columns, text in a numeric column, infinite values and
    (with ``missing="error"``) missing values raise ``ValueError`` naming the column.
    Counts go to ``drift``."""
    import pandas as pd

    absent = [c for c in feature_columns(spec) if c not in frame.columns]
    if absent:
        raise ValueError(f"{where} has no column(s) {absent}, which the model was fitted on")
    out = {}
    outside = np.zeros(len(frame), dtype=bool)
    times = {}  # parsed once per column of dates/times
    for e in spec["numeric"]:
        name = e["name"]
        if "source" in e:
            if e["source"] not in times:
                times[e["source"]] = _parse_times(_as_text(frame[e["source"]]))
            col = pd.Series(_time_part(times[e["source"]], e["part"]), index=frame.index)
        else:
            col = frame[name]
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        text = np.isnan(values) & col.notna().to_numpy()
        if text.any():
            raise ValueError(
                f"column {name!r} of {where} is numeric in the model but holds "
                f"{col[text].iloc[0]!r} (row {int(np.flatnonzero(text)[0])} of a chunk)"
            )
        if np.isinf(values).any():
            raise ValueError(f"column {name!r} of {where} holds infinite values")
        below, above = values < e["low"], values > e["high"]
        outside |= below | above
        if drift is not None:
            drift.below[name] += int(below.sum())
            drift.above[name] += int(above.sum())
        _count_missing(spec, name, np.isnan(values), drift, where)
        out[name] = values
    for kind in ("onehot", "ordinal"):
        for e in spec[kind]:
            name = e["name"]
            text = _as_text(frame[name])
            gaps = _count_missing(spec, name, text.isna().to_numpy(), drift, where)
            if drift is not None:
                drift.unknown[name] += int((~text.isin(e["categories"]) & ~gaps).sum())
            out[name] = text
    if drift is not None:
        drift.rows += len(frame)
        drift.rows_outside += int(outside.sum())
        drift.last_outside = outside
        for counter in (drift.below, drift.above, drift.unknown, drift.filled):
            for key in [k for k, v in counter.items() if not v]:
                del counter[key]
    return pd.DataFrame(out, index=frame.index)


def _count_missing(spec, name: str, gaps: np.ndarray, drift: Drift | None, where: str):
    n = int(gaps.sum())
    if n and spec["missing"] == "error":
        raise ValueError(
            f"column {name!r} of {where} has {n} missing value(s), and the model was fitted "
            f"with --missing error; fill them first"
        )
    if drift is not None and n:
        drift.filled[name] += n
    return gaps


def transform(spec: dict[str, Any], ct, frame, drift: Drift | None = None, where="the data"):
    """Model inputs ``(rows, n_inputs)`` float64 of a table chunk: :func:`prepare`, then the
    ``ColumnTransformer`` ``ct`` of :func:`build_transform`."""
    return np.ascontiguousarray(ct.transform(prepare(spec, frame, drift, where)), dtype=float)
