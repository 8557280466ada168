"""Reading a table for ``snnk fit``: the hold-out split, the training sample that the column
transform is learned from, the task, and chunks of model inputs for streaming fits and scores.

Rows are numbered from 0 in file order; with ``every = k`` the rows ``0, k, 2k, …`` are held
out (a systematic 1/k sample; ``every = 0``: none). Rows whose target is missing are skipped
and counted. The training sample is every training row when there are at most
``memory_rows`` of them, else a uniform sample of ``memory_rows`` rows without replacement
(the rows with the smallest of seeded uniform keys), in file order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from snnk._cli_preprocess import Drift, transform
from snnk._utils.tabular import iter_frames


def held_out(rows: np.ndarray, every: int) -> np.ndarray:
    """Mask of the hold-out rows among file row numbers ``rows``."""
    return rows % every == 0 if every else np.zeros(len(rows), dtype=bool)


def numbered_frames(path, columns, chunk_rows: int) -> Iterator[Any]:
    """Chunks of the file whose index is the file row number (from 0)."""
    start = 0
    for frame in iter_frames(path, columns, chunk_rows=chunk_rows):
        frame.index = np.arange(start, start + len(frame))
        start += len(frame)
        yield frame


@dataclass
class Scan:
    """The first pass over a file: the training sample and the row counts."""

    sample: Any  # DataFrame: training rows with a target (all, or a uniform sample)
    rows: int  # data rows of the file
    train: int  # training rows with a target
    holdout: int  # hold-out rows with a target
    no_target: int  # rows whose target is missing (skipped)

    @property
    def complete(self) -> bool:
        """Whether the sample holds every training row."""
        return len(self.sample) == self.train


def scan(path, columns, target: str, every: int, memory_rows: int, chunk_rows: int, seed: int):
    """One pass over the file: row counts and the training sample (see the module)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    kept, keys = None, np.empty(0)
    rows = train = holdout = no_target = 0
    for frame in numbered_frames(path, columns, chunk_rows):
        rows += len(frame)
        has_y = frame[target].notna().to_numpy()
        hold = held_out(frame.index.to_numpy(), every)
        no_target += int((~has_y).sum())
        holdout += int((hold & has_y).sum())
        part = frame[~hold & has_y]
        train += len(part)
        kept = part if kept is None else pd.concat([kept, part])
        keys = np.concatenate([keys, rng.random(len(part))])
        if len(kept) > memory_rows:
            top = np.sort(np.argpartition(keys, memory_rows - 1)[:memory_rows])
            kept, keys = kept.iloc[top], keys[top]
    if not rows:
        raise ValueError(f"{str(path)!r} has a header but no data rows")
    if not train:
        raise ValueError(
            f"{str(path)!r} has no training rows with a value of {target!r} ({rows} rows, "
            f"{no_target} without a target, {holdout} held out)"
        )
    return Scan(kept, rows, train, holdout, no_target)


#: text targets with more distinct values than this are refused by ``--model auto``
MAX_AUTO_CLASSES = 100


def choose_model(model: str, y) -> tuple[str, str]:
    """The model for ``--model`` (``"auto"``: a classifier for a text or boolean target or
    one of two values, else ridge regression) and the reason, for the summary."""
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(y.dtype) and not pd.api.types.is_bool_dtype(y.dtype)
    values = y.nunique()
    if model == "auto":
        if not numeric and values > MAX_AUTO_CLASSES:
            raise ValueError(
                f"the target {y.name!r} is text with {values:,} distinct values: too many "
                f"classes for --model auto (is it the right column?); --model classifier "
                f"fits them anyway"
            )
        if not numeric or values <= 2:
            kind = "text" if not numeric else f"{values} distinct values"
            return "classifier", f"classification ({kind}; --model ridge to regress)"
        return "ridge", f"regression ({values:,} distinct numbers)"
    if model != "classifier" and not numeric:
        raise ValueError(
            f"the target {y.name!r} is not numeric ({y.dropna().iloc[0]!r}): use --model "
            f"classifier (or auto) to classify it"
        )
    task = "classification" if model == "classifier" else "regression"
    return model, f"{task} (--model {model})"


def target_values(col, task: str, numeric_labels: bool) -> np.ndarray:
    """The target of some rows: float64 for regression; class labels (numbers when the
    training labels were numbers, else strings) for classification."""
    import pandas as pd

    if task == "regression":
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(values).any() or np.isinf(values).any():
            bad = col[~np.isfinite(values)].iloc[0]
            raise ValueError(f"the target {col.name!r} holds {bad!r}, not a finite number")
        return values
    if numeric_labels:
        return col.to_numpy()
    return np.array([str(v) for v in col.tolist()], dtype=object).astype(str)


@dataclass
class Rows:
    """Re-iterable model inputs of the training (``holdout=False``) or hold-out rows of a
    file with a target: ``(X, y)`` chunks for a streaming fit; :meth:`scored` also gives the
    row numbers and which rows lie outside the training range."""

    path: Any
    spec: dict
    ct: Any
    columns: list
    every: int
    holdout: bool
    chunk_rows: int
    numeric_labels: bool
    drift: Drift | None = None

    def scored(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        target, task = self.spec["target"], self.spec["task"]
        for frame in numbered_frames(self.path, self.columns, self.chunk_rows):
            hold = held_out(frame.index.to_numpy(), self.every)
            keep = (hold if self.holdout else ~hold) & frame[target].notna().to_numpy()
            if not keep.any():
                continue
            frame = frame[keep]
            drift = self.drift if self.drift is not None else Drift()
            X = transform(self.spec, self.ct, frame, drift, where=str(self.path))
            y = target_values(frame[target], task, self.numeric_labels)
            yield X, y, frame.index.to_numpy(), drift.last_outside

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for X, y, _, _ in self.scored():
            yield X, y
