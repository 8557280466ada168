r"""The kernel operator: products with ``K = k(X, Y)`` in row blocks, never forming ``K``.

In the spirit of GPyTorch's lazy operators and Falkon's blockwise products: a
:class:`KernelMatrix` knows its kernel and its two point sets, and evaluates ``K`` one block of
rows at a time inside the library's memory budget (``snnk._utils.blocks``). Blocks are
recomputed on every pass unless they fit in an optional cache budget, in which case they are
kept the first time they are computed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from snnk._utils.blocks import (
    KERNEL_BLOCK_ELEMENTS,
    crossprod,
    default_block_rows,
    iter_blocks,
)
from snnk.kernels._base import Kernel

__all__ = ["KernelMatrix"]


class KernelMatrix:
    r"""``K = k(X, Y)`` of shape ``(n, m)`` as an operator evaluated in row blocks.

    ``K @ B`` (``(m, k) -> (n, k)``), ``K.T @ B`` (``(n, k) -> (m, k)``), the fused
    ``K.gram_matmul(U, weight)`` ``= Kᵀ W K U`` (one pass), ``diag()`` and ``to_dense()``
    evaluate one block ``k(X[rows], Y)`` of ``block_rows x m`` entries at a time, so memory
    stays at ``O(block_rows · m)`` whatever ``n``.

    Products are formed in a product dtype (the kernel's dtype by default, or the ``dtype``
    argument: blocks and operands are cast to it) and returned in (or, over blocks,
    accumulated in) the promotion of that dtype and the operand's: a float32 kernel with a
    float64 operand runs float32 GEMMs and sums the blocks of ``Kᵀ B`` in float64.

    Parameters
    ----------
    kernel : Kernel
    X : Tensor of shape ``(n, d)``
    Y : Tensor of shape ``(m, d)``, optional
        Defaults to ``X`` (a symmetric ``n x n`` Gram matrix).
    block_rows : int, optional
        Rows of ``X`` per block; default ``KERNEL_BLOCK_ELEMENTS // m`` (at least 64).
    cache_bytes : float, default 0
        When the whole of ``K`` (``n · m · itemsize`` bytes) fits, blocks are kept the first
        time they are computed and reused afterwards. Values are the same either way.

    Examples
    --------
    >>> import torch
    >>> from snnk.kernels import Gaussian, KernelMatrix
    >>> X = torch.randn(1000, 3, dtype=torch.float64)
    >>> K = KernelMatrix(Gaussian(), X, block_rows=128)
    >>> v = K @ torch.ones(1000, 1, dtype=torch.float64)   # (1000, 1), K never formed
    """

    def __init__(
        self,
        kernel: Kernel,
        X: torch.Tensor,
        Y: torch.Tensor | None = None,
        *,
        block_rows: int | None = None,
        cache_bytes: float = 0,
    ):
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a snnk.kernels.Kernel, got {kernel!r}")
        if X.ndim != 2 or (Y is not None and (Y.ndim != 2 or Y.shape[1] != X.shape[1])):
            raise ValueError(
                f"X and Y must be (n, d) and (m, d) tensors with the same d, got "
                f"{tuple(X.shape)} and {None if Y is None else tuple(Y.shape)}"
            )
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes!r}")
        self.kernel = kernel
        self.X = X
        self.Y = X if Y is None else Y
        self.symmetric = Y is None or Y is X
        m = self.Y.shape[0]
        if block_rows is None:
            block_rows = default_block_rows(m, KERNEL_BLOCK_ELEMENTS)
        if isinstance(block_rows, bool) or int(block_rows) != block_rows or block_rows < 1:
            raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
        self.block_rows = int(block_rows)
        self.cache_bytes = float(cache_bytes)
        self._cache: dict[int, torch.Tensor] | None = {} if self.nbytes <= cache_bytes else None

    # -- description --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.X.shape[0], self.Y.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the kernel blocks (that of ``k(X, Y)``)."""
        return torch.promote_types(self.X.dtype, self.Y.dtype)

    @property
    def device(self) -> torch.device:
        return self.X.device

    @property
    def nbytes(self) -> int:
        """Bytes of the whole matrix in :attr:`dtype`."""
        return self.shape[0] * self.shape[1] * (torch.finfo(self.dtype).bits // 8)

    @property
    def cached(self) -> bool:
        """Whether blocks are kept once computed (the matrix fits in ``cache_bytes``)."""
        return self._cache is not None

    @property
    def T(self) -> _Transposed:
        """``Kᵀ`` as an operator: ``K.T @ B`` is :meth:`rmatmul`."""
        return _Transposed(self)

    def __repr__(self) -> str:
        return (
            f"KernelMatrix({self.kernel!r}, shape={self.shape}, block_rows={self.block_rows}, "
            f"cached={self.cached})"
        )

    # -- blocks -------------------------------------------------------------------------------
    def block(self, rows: slice) -> torch.Tensor:
        """``k(X[rows], Y)``: ``(len(rows), m)`` in :attr:`dtype` (from the cache if kept)."""
        cache = self._cache
        if (
            cache is not None
            and rows.start in cache
            and len(cache[rows.start]) == len(range(*rows.indices(self.shape[0])))
        ):
            return cache[rows.start]
        Kb = self.kernel(self.X[rows], self.Y, block_rows=self.block_rows)
        if cache is not None:
            cache[rows.start] = Kb
        return Kb

    def blocks(self, dtype: torch.dtype | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(rows, K[rows])`` over consecutive row blocks, cast to ``dtype`` if given."""
        for rows in iter_blocks(self.shape[0], self.block_rows):
            Kb = self.block(rows)
            yield rows, (Kb if dtype is None else Kb.to(dtype))

    # -- products -----------------------------------------------------------------------------
    def matmul(self, B: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``K B`` for ``B`` of shape ``(m, k)`` (or ``(m,)``): ``(n, k)``.

        Each block's product runs in ``dtype`` (default :attr:`dtype`); the result has the
        promotion of ``dtype`` and ``B.dtype``.
        """
        dt = self.dtype if dtype is None else dtype
        vec = B.ndim == 1
        B2 = B[:, None] if vec else B
        self._check_operand(B2, self.shape[1], "K @ B")
        Bc = B2.to(dt)
        out = torch.empty(
            self.shape[0], B2.shape[1], dtype=torch.promote_types(dt, B.dtype), device=B.device
        )
        for rows, Kb in self.blocks(dt):
            out[rows] = Kb @ Bc
        return out[:, 0] if vec else out

    __matmul__ = matmul

    def rmatmul(self, B: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``Kᵀ B`` for ``B`` of shape ``(n, k)`` (or ``(n,)``): ``(m, k)``.

        Each block's product runs in ``dtype`` (default :attr:`dtype`) and the blocks are
        summed in the promotion of ``dtype`` and ``B.dtype``.
        """
        dt = self.dtype if dtype is None else dtype
        vec = B.ndim == 1
        B2 = B[:, None] if vec else B
        self._check_operand(B2, self.shape[0], "K.T @ B")
        acc = torch.promote_types(dt, B.dtype)
        out = torch.zeros(self.shape[1], B2.shape[1], dtype=acc, device=B.device)
        for rows, Kb in self.blocks(dt):
            out += crossprod(Kb, B2[rows].to(dt)).to(acc)
        return out[:, 0] if vec else out

    def gram_matmul(
        self,
        U: torch.Tensor,
        weight: torch.Tensor | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        r"""``Kᵀ W K U`` in one pass (each block used twice): ``(m, k)`` for ``U`` ``(m, k)``.

        ``W = diag(weight)`` (identity when ``None``), ``weight`` of shape ``(n,)``. Products
        run in ``dtype`` (default :attr:`dtype`); blocks are summed in the promotion of
        ``dtype`` and ``U.dtype``. This is the matrix-vector product of the Nyström normal
        equations (Falkon's ``K_nMᵀ K_nM v``).
        """
        dt = self.dtype if dtype is None else dtype
        self._check_operand(U, self.shape[1], "Kᵀ W K U")
        acc = torch.promote_types(dt, U.dtype)
        out = torch.zeros(self.shape[1], U.shape[1], dtype=acc, device=U.device)
        Ud = U.to(dt)
        for rows, Kb in self.blocks(dt):
            V = Kb @ Ud
            if weight is not None:
                V = V * weight[rows, None].to(dt)
            out += crossprod(Kb, V).to(acc)
        return out

    def diag(self) -> torch.Tensor:
        """``k(x_i, x_i)``, shape ``(n,)``, for a square ``K = k(X, X)``."""
        if not self.symmetric:
            raise ValueError(
                f"diag() needs a square kernel matrix k(X, X), this one is k(X, Y) of shape "
                f"{self.shape}"
            )
        return self.kernel.diag(self.X)

    def to_dense(self) -> torch.Tensor:
        """The whole matrix, ``(n, m)`` in :attr:`dtype` (for tests and small problems)."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        for rows, Kb in self.blocks():
            out[rows] = Kb
        return out

    def _check_operand(self, B: torch.Tensor, rows: int, what: str) -> None:
        if B.ndim != 2 or B.shape[0] != rows:
            raise ValueError(
                f"{what}: the operand must have {rows} rows (K is {self.shape[0]} x "
                f"{self.shape[1]}), got shape {tuple(B.shape)}"
            )


class _Transposed:
    """``Kᵀ`` of a :class:`KernelMatrix`: ``@`` is its ``rmatmul``."""

    def __init__(self, parent: KernelMatrix):
        self._parent = parent

    @property
    def shape(self) -> tuple[int, int]:
        n, m = self._parent.shape
        return (m, n)

    @property
    def dtype(self) -> torch.dtype:
        return self._parent.dtype

    @property
    def T(self) -> KernelMatrix:
        return self._parent

    def matmul(self, B: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._parent.rmatmul(B, dtype=dtype)

    __matmul__ = matmul

    def to_dense(self) -> torch.Tensor:
        return self._parent.to_dense().T
