"""Row blocking: nothing of size n x m is held twice when a loop over blocks will do."""

from __future__ import annotations

from collections.abc import Iterator

#: Number of scalar elements an intermediate block may hold (about 64 MB in float32).
BLOCK_ELEMENTS = 1 << 24


def default_block_rows(row_cost: int, budget: int = BLOCK_ELEMENTS, minimum: int = 64) -> int:
    """Rows per block so that ``rows * row_cost`` stays within ``budget`` elements."""
    return max(minimum, budget // max(1, row_cost))


def iter_blocks(n: int, block_rows: int) -> Iterator[slice]:
    """Yield consecutive slices that cover ``range(n)`` in steps of ``block_rows``."""
    for start in range(0, n, block_rows):
        yield slice(start, min(n, start + block_rows))
