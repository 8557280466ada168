"""Table reading on hostile files."""

import numpy as np
import pytest

from snnk._utils.tabular import iter_table


def test_header_only_csv_is_reported_as_empty(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("a,b,y\n")
    with pytest.raises(ValueError, match="no data rows"):
        list(iter_table(p, "y"))


def test_chunks_cover_every_row(tmp_path):
    p = tmp_path / "t.csv"
    rows = np.arange(30, dtype=float).reshape(10, 3)
    p.write_text("a,b,y\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    parts = list(iter_table(p, "y", chunk_rows=4))
    X = np.concatenate([x for x, _, _ in parts])
    y = np.concatenate([t for _, t, _ in parts])
    np.testing.assert_array_equal(X, rows[:, :2])
    np.testing.assert_array_equal(y, rows[:, 2])
    assert parts[0][2] == ["a", "b"]


def test_missing_file_and_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        list(iter_table(tmp_path / "nope.csv", "y"))
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column"):
        list(iter_table(p, "y"))
