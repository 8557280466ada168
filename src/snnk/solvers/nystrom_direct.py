r"""The direct (one-pass) solver of Nyström kernel ridge regression.

With centres ``C`` (``M`` of them), ``K_MM + εI = LLᵀ`` (:class:`NystromFactor`) and the
kernel blocks ``K_b = k(X_b, C)``, one pass accumulates ``G = K_nMᵀWK_nM`` (lower block
triangle), ``K_nMᵀWY`` and ``K_nMᵀw`` in float64; the Nyström normal equations
``(G + αK_MM) β = K_nMᵀWY`` are then the ridge system of the Nyström features
``z(x) = k(x, C) L⁻ᵀ``: ``(L⁻¹GL⁻ᵀ + αI) u = L⁻¹K_nMᵀWY``, ``β = L⁻ᵀu``, well conditioned
whatever ``cond(K_MM)``. Cost ``n M²`` flops at GEMM speed plus ``O(M³)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from snnk._utils.blocks import crossprod
from snnk.solvers.cholesky import SPDSolver, add_lower_gram
from snnk.solvers.cross_validation import ridge_gcv
from snnk.solvers.preconditioners import NystromFactor

__all__ = ["NystromDirectSolution", "nystrom_direct_solve"]


@dataclass
class NystromDirectSolution:
    """What :func:`nystrom_direct_solve` returns."""

    beta: torch.Tensor  # (M, o) dual coefficients
    intercept: torch.Tensor  # (o,) zeros without an intercept
    alpha: float
    scores: torch.Tensor | None  # GCV score per grid point (alpha="gcv")


def nystrom_direct_solve(
    blocks: Iterable[tuple[slice, torch.Tensor]],
    factor: NystromFactor,
    Y: torch.Tensor,
    w: torch.Tensor | None,
    alpha: float | str,
    *,
    fit_intercept: bool,
) -> NystromDirectSolution:
    r"""Solve Nyström kernel ridge regression from one pass over the kernel blocks.

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
        Ridge strength (penalty ``α βᵀK_MMβ`` against the weighted *sum* of squared errors),
        or chosen by :func:`~snnk.solvers.cross_validation.ridge_gcv` on the reduced system
        (its default grid: the random-feature models' rule).
    fit_intercept : bool
        An unpenalised constant, exactly: the kernel columns and the targets are centred by
        their weighted means (``G − Σw m̄m̄ᵀ``, ``K_nMᵀWY − Σw m̄ȳᵀ``), and
        ``c = ȳ − m̄ᵀβ``.
    """
    m, o = factor.size, Y.shape[1]
    f64 = torch.float64
    G = torch.zeros(m, m, dtype=f64)
    B = torch.zeros(m, o, dtype=f64)
    ksum = torch.zeros(m, dtype=f64)
    # the Gram in float64: L⁻¹GL⁻ᵀ amplifies its rounding by up to cond(K_MM) (float32 sums
    # gave 5e-3 errors)
    for rows, Kb in blocks:
        Kw = Kb if w is None else Kb * w[rows, None]
        add_lower_gram(G, Kw, Kb)
        B += crossprod(Kw, Y[rows])
        ksum += Kw.sum(0)
    G = torch.tril(G) + torch.tril(G, -1).T
    Yw = Y if w is None else Y * w[:, None]
    wsum = float(w.sum()) if w is not None else float(Y.shape[0])
    yy = (Yw * Y).sum(0)
    mbar = ksum / wsum
    ybar = Yw.sum(0) / wsum
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
    intercept = ybar - mbar @ beta if fit_intercept else torch.zeros(o, dtype=f64)
    return NystromDirectSolution(beta, intercept, float(alpha), scores)
