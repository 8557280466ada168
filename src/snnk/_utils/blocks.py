"""Row blocking: nothing of size n x m is held twice when a loop over blocks will do."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

#: Number of scalar elements an intermediate block may hold (about 64 MB in float32).
BLOCK_ELEMENTS = 1 << 24


def default_block_rows(row_cost: int, budget: int = BLOCK_ELEMENTS, minimum: int = 64) -> int:
    """Rows per block so that ``rows * row_cost`` stays within ``budget`` elements."""
    return max(minimum, budget // max(1, row_cost))


def iter_blocks(n: int, block_rows: int) -> Iterator[slice]:
    """Yield consecutive slices that cover ``range(n)`` in steps of ``block_rows``."""
    for start in range(0, n, block_rows):
        yield slice(start, min(n, start + block_rows))


def crossprod(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``Aᵀ B`` for a row-major ``A`` of shape ``(n, D)`` and ``B`` of shape ``(n, k)``.

    For narrow ``B`` (``k <= 32``: targets, class scores, CG directions) it is computed as
    ``(Bᵀ A)ᵀ``: the CPU BLAS runs ``Aᵀ B`` with a transposed tall operand and few columns
    4-9x slower than the same product laid out the other way (measured with torch 2.13 /
    MKL at n = 1,400-4,096, D = 2,000, k = 10). Wider ``B`` uses ``Aᵀ B`` directly. Returns a
    (possibly transposed) view; the values are the same product either way.
    """
    if B.shape[-1] <= 32:
        return (B.mT @ A).mT
    return A.mT @ B


def empty_output(shape: tuple[int, ...], dtype, device) -> torch.Tensor:
    """An uninitialised output tensor; large CPU ones come from NumPy's allocator.

    NumPy asks the kernel for transparent huge pages on large arrays, so first writes into
    the buffer fault 2 MB at a time instead of 4 KB; on this kind of machine that makes
    filling a fresh n x D output about 4x cheaper than torch's default CPU allocator. The
    tensor shares the array's memory (no copy) and behaves like any other tensor.
    """
    numel = 1
    for s in shape:
        numel *= s
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
    if torch.device(device).type == "cpu" and np_dtype is not None and numel >= (1 << 20):
        return torch.from_numpy(np.empty(shape, dtype=np_dtype))
    return torch.empty(shape, dtype=dtype, device=device)
