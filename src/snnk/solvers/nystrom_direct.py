r"""The direct (one-pass) solver of Nyström kernel ridge regression.

With centres ``C`` (``M`` of them), ``K_MM + εI = LLᵀ`` (:class:`NystromFactor`) and the
kernel blocks ``K_b = k(X_b, C)``, one pass accumulates ``G = K_nMᵀWK_nM`` (lower block
triangle), ``K_nMᵀWY`` and ``K_nMᵀw`` in float64; the Nyström normal equations
``(G + αK_MM) β = K_nMᵀWY`` are then the ridge system of the Nyström features
``z(x) = k(x, C) L⁻ᵀ``: ``(L⁻¹GL⁻ᵀ + αI) u = L⁻¹K_nMᵀWY``, ``β = L⁻ᵀu``, well conditioned
whatever ``cond(K_MM)``. Cost ``n M²`` flops at GEMM speed plus ``O(M³)``.

The pass and the solve are separate (:func:`nystrom_statistics`,
:meth:`NystromStatistics.merge`, :func:`solve_nystrom_statistics`), so the statistics of row
chunks computed anywhere (a Dask worker, a file reader) add up to those of all the rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from snnk._utils.blocks import crossprod
from snnk.solvers.cholesky import SPDSolver, add_lower_gram
from snnk.solvers.cross_validation import ridge_gcv
from snnk.solvers.preconditioners import NystromFactor

__all__ = [
    "NystromDirectSolution",
    "NystromStatistics",
    "nystrom_direct_solve",
    "nystrom_statistics",
    "solve_nystrom_statistics",
]

F64 = torch.float64


@dataclass
class NystromDirectSolution:
    """What :func:`nystrom_direct_solve` returns."""

    beta: torch.Tensor  # (M, o) dual coefficients
    intercept: torch.Tensor  # (o,) zeros without an intercept
    alpha: float
    scores: torch.Tensor | None  # GCV score per grid point (alpha="gcv")


@dataclass
class NystromStatistics:
    r"""The sufficient statistics of Nyström kernel ridge regression over a set of rows.

    All float64 on one device: ``G = Σ_i w_i k_i k_iᵀ`` (``(M, M)``; only its lower block
    triangle is meaningful), ``B = Σ_i w_i k_i y_iᵀ`` (``(M, o)``), ``ksum = Σ_i w_i k_i``
    (``(M,)``), ``ysum = Σ_i w_i y_i`` and ``yy = Σ_i w_i y_i²`` (``(o,)``), ``wsum = Σ_i w_i``
    and the row count ``n``, with ``k_i = k(C, x_i)``. Statistics of disjoint row sets add
    (:meth:`merge`).
    """

    G: torch.Tensor
    B: torch.Tensor
    ksum: torch.Tensor
    ysum: torch.Tensor
    yy: torch.Tensor
    wsum: float
    n: int

    @classmethod
    def zeros(cls, m: int, o: int, device: torch.device | str = "cpu") -> NystromStatistics:
        """The statistics of no rows (``M = m`` centres, ``o`` outputs) on ``device``."""

        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=F64, device=device)

        return cls(z(m, m), z(m, o), z(m), z(o), z(o), 0.0, 0)

    def merge(self, other: NystromStatistics) -> NystromStatistics:
        """Add ``other``'s statistics (of other rows) into these, in place; returns ``self``."""
        if other.G.shape != self.G.shape or other.B.shape != self.B.shape:
            raise ValueError(
                f"cannot merge statistics of {other.G.shape[0]} centres and {other.B.shape[1]} "
                f"outputs into {self.G.shape[0]} centres and {self.B.shape[1]} outputs"
            )
        dev = self.G.device
        self.G += other.G.to(dev)
        self.B += other.B.to(dev)
        self.ksum += other.ksum.to(dev)
        self.ysum += other.ysum.to(dev)
        self.yy += other.yy.to(dev)
        self.wsum += other.wsum
        self.n += other.n
        return self

    def to(self, device: torch.device | str) -> NystromStatistics:
        """These statistics on ``device`` (a new object; the same when already there)."""
        t = [x.to(device) for x in (self.G, self.B, self.ksum, self.ysum, self.yy)]
        return NystromStatistics(*t, self.wsum, self.n)


def nystrom_statistics(
    blocks: Iterable[tuple[slice, torch.Tensor]],
    Y: torch.Tensor,
    w: torch.Tensor | None,
    m: int,
) -> NystromStatistics:
    r""":class:`NystromStatistics` of the rows of ``Y`` from one pass over the kernel blocks.

    Parameters
    ----------
    blocks : iterable of ``(rows, K_b)``
        The blocks of ``K_nM`` in float64 (``K_b`` of shape ``(b, M)``), rows in order,
        covering the rows of ``Y``.
    Y : Tensor of shape ``(n, o)``, float64, on the blocks' device.
    w : Tensor of shape ``(n,)`` or None
        Sample weights (float64; ones when ``None``).
    m : int
        ``M``, the number of centres (the width of every block).
    """
    stats = NystromStatistics.zeros(m, Y.shape[1], Y.device)
    # the Gram in float64: L⁻¹GL⁻ᵀ amplifies its rounding by up to cond(K_MM) (float32 sums
    # gave 5e-3 errors)
    for rows, Kb in blocks:
        Kw = Kb if w is None else Kb * w[rows, None]
        add_lower_gram(stats.G, Kw, Kb)
        stats.B += crossprod(Kw, Y[rows])
        stats.ksum += Kw.sum(0)
    Yw = Y if w is None else Y * w[:, None]
    stats.ysum += Yw.sum(0)
    stats.yy += (Yw * Y).sum(0)
    stats.wsum = float(w.sum()) if w is not None else float(Y.shape[0])
    stats.n = int(Y.shape[0])
    return stats


def solve_nystrom_statistics(
    stats: NystromStatistics,
    factor: NystromFactor,
    alpha: float | str,
    *,
    fit_intercept: bool,
) -> NystromDirectSolution:
    r"""Solve Nyström kernel ridge regression from its :class:`NystromStatistics`.

    Parameters
    ----------
    stats : NystromStatistics
        The statistics of all the training rows (on ``factor``'s device).
    factor : NystromFactor
        Factor of ``K_MM``.
    alpha : float or "gcv"
        Ridge strength (penalty ``α βᵀK_MMβ`` against the weighted *sum* of squared errors),
        or chosen by :func:`~snnk.solvers.cross_validation.ridge_gcv` on the reduced system
        (its default grid: the random-feature models' rule).
    fit_intercept : bool
        An unpenalised constant, exactly: the kernel columns and the targets are centred by
        their weighted means (``G − Σw m̄m̄ᵀ``, ``K_nMᵀWY − Σw m̄ȳᵀ``), and
        ``c = ȳ − m̄ᵀβ``.
    """
    if stats.n == 0 or not stats.wsum > 0:
        raise ValueError("no rows of positive weight: the statistics are empty")
    G = torch.tril(stats.G) + torch.tril(stats.G, -1).T
    B, wsum = stats.B.clone(), stats.wsum
    mbar = stats.ksum / wsum
    ybar = stats.ysum / wsum
    yy = stats.yy
    if fit_intercept:
        G -= wsum * torch.outer(mbar, mbar)
        B -= wsum * torch.outer(mbar, ybar)
        yy = yy - wsum * ybar.square()
    A = factor.solve_lower(G)  # L⁻¹ G
    A = factor.solve_lower(A.T)  # L⁻¹ G L⁻ᵀ (G symmetric)
    A = 0.5 * (A + A.T)
    Bl = factor.solve_lower(B)
    scores = None
    if isinstance(alpha, str):
        U, alpha, scores = ridge_gcv(A, Bl, yy, wsum, extra_dof=int(fit_intercept))
    else:
        U = SPDSolver(A, alpha)(Bl)
    beta = factor.solve_upper(U)
    intercept = ybar - mbar @ beta if fit_intercept else torch.zeros_like(ybar)
    return NystromDirectSolution(beta, intercept, float(alpha), scores)


def nystrom_direct_solve(
    blocks: Iterable[tuple[slice, torch.Tensor]],
    factor: NystromFactor,
    Y: torch.Tensor,
    w: torch.Tensor | None,
    alpha: float | str,
    *,
    fit_intercept: bool,
) -> NystromDirectSolution:
    r"""Solve Nyström kernel ridge regression from one pass over the kernel blocks:
    :func:`nystrom_statistics` then :func:`solve_nystrom_statistics`.

    Parameters
    ----------
    blocks : iterable of ``(rows, K_b)``
        The blocks of ``K_nM`` in float64 (``K_b`` of shape ``(b, M)``), rows in order.
    factor : NystromFactor
        Factor of ``K_MM``.
    Y : Tensor of shape ``(n, o)``, float64.
    w : Tensor of shape ``(n,)`` or None
        Sample weights (float64; ones when ``None``).
    alpha : float or "gcv"
        As in :func:`solve_nystrom_statistics`.
    fit_intercept : bool
        As in :func:`solve_nystrom_statistics`.
    """
    stats = nystrom_statistics(blocks, Y, w, factor.size)
    return solve_nystrom_statistics(stats, factor, alpha, fit_intercept=fit_intercept)
