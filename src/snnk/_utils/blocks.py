"""Row blocking: nothing of size n x m is held twice when a loop over blocks will do."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

# -- the memory budget -------------------------------------------------------------------------
# Every blocked loop in snnk sizes its blocks from one of these element counts (not bytes:
# the same budget serves float32 and float64). They are the library's one memory budget;
# change a value here and every loop that uses it follows.

#: Elements an intermediate block may hold: feature blocks, streamed statistics, softmax
#: probabilities kept by the logistic solver (about 64 MB in float32).
BLOCK_ELEMENTS = 1 << 24
#: Elements of one kernel block ``k(X[rows], Y)`` (rows x columns) in the kernel operator and
#: the Nyström / kernel-ridge models (about 32 MB in float64).
KERNEL_BLOCK_ELEMENTS = 1 << 22
#: Elements a model may keep cached across passes over the data (features of every row,
#: about 512 MB in float32).
CACHE_ELEMENTS = 1 << 27
#: Elements of one chunk of an attention computation (query rows x features x heads).
ATTENTION_CHUNK_ELEMENTS = 1 << 17
#: Elements of one block of a structured (Hadamard) random projection.
STRUCTURED_BLOCK_ELEMENTS = 1 << 18
#: Elements of one block of a dense random projection ``X W``.
PROJECTION_BLOCK_ELEMENTS = 1 << 22


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


#: default of a deprecated estimator parameter (scikit-learn's convention)
DEPRECATED = "deprecated"


def resolve_block_rows(
    block_rows: int | None, batch_size: Any = DEPRECATED, *, owner: str = "", warn: bool = True
) -> int | None:
    """An estimator's rows per compute block, honouring the deprecated ``batch_size`` alias.

    ``batch_size`` (``"deprecated"`` or ``None`` when not given), when given, takes precedence
    over ``block_rows`` (as it did before the rename) and emits a ``FutureWarning`` naming
    ``block_rows`` (``warn=True``, at fit time; files saved before the rename load and predict
    without a warning). Returns
    ``None`` when neither is given (the caller's memory-budget default applies).
    """
    given = batch_size is not None and not (
        isinstance(batch_size, str) and batch_size == DEPRECATED
    )
    if given and warn:
        warnings.warn(
            f"{owner + ': ' if owner else ''}batch_size is deprecated and will be removed; use "
            f"block_rows={batch_size!r} (rows per compute block) instead",
            FutureWarning,
            stacklevel=3,
        )
    value = batch_size if given else block_rows
    if value is None:
        return None
    name = "batch_size" if given else "block_rows"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)
