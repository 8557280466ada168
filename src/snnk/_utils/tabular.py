"""Read CSV and Parquet tables in row chunks (for streaming fits and the command line)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
CATEGORICAL_CHOICES = ("error", "drop")


def table_format(path: str | Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file name; a clear error otherwise."""
    p = Path(path)
    suffixes = "".join(p.suffixes[-2:]).lower()
    if p.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    if p.suffix.lower() == ".csv" or suffixes.startswith(".csv"):
        return "csv"  # also .csv.gz / .csv.bz2, which pandas decompresses
    raise ValueError(
        f"cannot tell the format of {str(path)!r}: name a .csv (optionally compressed) or "
        f".parquet file"
    )


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such data file: {str(path)!r}")
    return p


def table_columns(path: str | Path) -> list[str]:
    """Column names of a CSV or Parquet file (reads the header / schema only)."""
    p = _check_file(path)
    fmt = table_format(p)
    if p.stat().st_size == 0:
        raise ValueError(f"{str(path)!r} is an empty file: a header row and data rows are needed")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(p).schema_arrow.names)
        import pandas as pd

        return list(pd.read_csv(p, nrows=0).columns)
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not read {str(path)!r} as {fmt}: {exc}") from exc


def iter_frames(
    path: str | Path, columns: Sequence[str] | None = None, *, chunk_rows: int = 65_536
) -> Iterator[pd.DataFrame]:
    """Yield the rows of a CSV or Parquet file as pandas DataFrames of at most ``chunk_rows``
    rows, with the ``columns`` named (all when ``None``), as pandas parses them.

    Empty chunks are skipped, so a file with a header and no rows yields nothing. Peak
    memory is one chunk.
    """
    import pandas as pd

    p = _check_file(path)
    fmt = table_format(p)
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    if columns is not None:
        present = table_columns(p)
        missing = [c for c in columns if c not in present]
        if missing:
            raise ValueError(f"{str(path)!r} has no column(s) {missing}; its columns are {present}")
        columns = list(dict.fromkeys(columns))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(p).iter_batches(batch_size=chunk_rows, columns=columns)
        frames = (b.to_pandas() for b in batches)
    else:
        frames = pd.read_csv(p, chunksize=chunk_rows, usecols=columns)
    try:
        for frame in frames:
            if frame.shape[0]:
                yield frame
    except (OSError, ValueError) as exc:  # a malformed line, a truncated compressed file
        raise ValueError(f"could not read {str(path)!r} as {fmt}: {exc}") from exc


def iter_table(
    path: str | Path,
    target: str | Sequence[str] | None,
    *,
    features: Sequence[str] | None = None,
    chunk_rows: int = 65_536,
    categorical: str = "error",
) -> Iterator[tuple[np.ndarray, np.ndarray | None, list[str]]]:
    """Yield ``(X, y, feature_names)`` row chunks of a CSV or Parquet file.

    ``X`` is float64 of shape ``(rows, p)``; ``y`` is the target column(s) as a NumPy array
    (numbers or labels), or ``None`` when ``target`` is ``None`` (prediction). Features are
    ``features`` when given, else every column except the target. A non-numeric feature
    column raises unless ``categorical="drop"`` drops it. Peak memory is one chunk.
    """
    import pandas as pd

    p = _check_file(path)
    table_format(p)
    if categorical not in CATEGORICAL_CHOICES:
        raise ValueError(f"categorical must be one of {CATEGORICAL_CHOICES}, got {categorical!r}")
    if not isinstance(chunk_rows, int) or chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    columns = table_columns(p)
    targets = [] if target is None else [target] if isinstance(target, str) else list(target)
    missing = [c for c in targets + list(features or []) if c not in columns]
    if missing:
        raise ValueError(f"{str(path)!r} has no column(s) {missing}; its columns are {columns}")
    names = list(features) if features is not None else [c for c in columns if c not in targets]
    if not names:
        raise ValueError(f"{str(path)!r} has no feature columns besides the target {targets}")

    frames = iter_frames(p, names + targets, chunk_rows=chunk_rows)
    kept: list[str] | None = None
    for frame in frames:
        if frame.shape[0] == 0:
            continue
        if kept is None:
            bad = [c for c in names if not pd.api.types.is_numeric_dtype(frame[c])]
            if bad and categorical == "error":
                raise ValueError(
                    f"non-numeric feature column(s) {bad} in {str(path)!r}: encode them "
                    f"numerically first, or drop them (categorical='drop', --categorical drop)"
                )
            kept = [c for c in names if c not in bad]
            if not kept:
                raise ValueError(f"no numeric feature columns left in {str(path)!r}")
        try:
            X = frame[kept].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"a later chunk of {str(path)!r} has non-numeric values in {kept}: {exc}"
            ) from exc
        if not targets:
            y = None
        elif len(targets) == 1:
            y = frame[targets[0]].to_numpy()
        else:
            y = frame[targets].to_numpy()
        yield X, y, kept
    if kept is None:
        raise ValueError(
            f"{str(path)!r} has a header ({len(columns)} columns) but no data rows; at least "
            f"one row is needed"
        )
