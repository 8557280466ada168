r"""Choosing the ridge strength from streaming normal equations: GCV and leave-one-out.

Both criteria score a log grid of ``α`` from one eigendecomposition ``A = VΛVᵀ`` of the
centred Gram matrix ``A = Z̃ᵀWZ̃`` (``D x D``) accumulated by
:class:`~snnk.solvers.NormalEquations`. Generalised cross-validation needs nothing else
(:func:`ridge_gcv`, :meth:`NormalEquations.solve_gcv`); with a few candidate ``α`` (at most
:data:`FEW_ALPHAS`) it uses one Cholesky factorisation and one triangular inverse per
candidate instead (about ``(2/3) D³`` flops each against ``≈ 9 D³`` for the
eigendecomposition). Exact leave-one-out needs one more pass over the rows for the hat
diagonal (:func:`loo_ridge`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from snnk.solvers.cholesky import symmetric_eigh

if TYPE_CHECKING:
    from snnk.solvers.normal_equations import NormalEquations

#: up to this many candidate alphas, GCV factors ``A + αI`` once per candidate instead of
#: eigendecomposing ``A`` (a Cholesky and a triangular inverse cost about 1/5 of ``eigh``
#: each at D = 2,048, float64, MKL)
FEW_ALPHAS = 4

#: ``(F, Y, w)`` row blocks: features ``(b, D)``, float64 targets ``(b, o)``, float64
#: weights ``(b,)`` or ``None``
RowBlocks = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]


def default_alpha_grid(evals: torch.Tensor, num: int = 29) -> torch.Tensor:
    """The ridge grid ``10^-5 … 10^2`` times the mean eigenvalue of ``A`` (``num`` points,
    float64): the grid that :meth:`NormalEquations.solve_gcv` and :func:`loo_ridge` search."""
    scale = max(float(evals.clamp_min(0.0).mean()), 1e-300)
    return scale * torch.logspace(-5, 2, num, dtype=torch.float64, device=evals.device)


def _gcv_score(rss: float, dof: float, n: float) -> float:
    denom = max(1.0 - dof / n, 1e-12)
    return rss / n / denom**2


def ridge_gcv(
    A: torch.Tensor,
    B: torch.Tensor,
    yy: torch.Tensor,
    n: float,
    *,
    extra_dof: int = 0,
    alphas: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, torch.Tensor]:
    r"""Ridge ``U = (A + αI)^{-1} B`` with ``α`` minimising generalised cross-validation.

    ``GCV(α) = (RSS(α)/n) / (1 − (tr H(α) + extra_dof)/n)²`` with ``tr H = tr A(A + αI)^{-1}``
    and ``RSS(α) = Σ yy − 2 tr BᵀU + tr UᵀAU``, all from the (centred) statistics
    ``A = Z̃ᵀWZ̃`` ``(D, D)``, ``B = Z̃ᵀWY`` ``(D, o)`` and ``yy = diag(ỸᵀWỸ)`` ``(o,)``;
    ``n`` is the total weight (a weight counts like a repeated row) and ``extra_dof`` the
    unpenalised parameters outside ``A`` (1 for an intercept).

    With more than :data:`FEW_ALPHAS` candidates: one eigendecomposition ``A = VΛVᵀ``, then
    ``tr H = Σ λ_i/(λ_i + α)`` and ``RSS = yy − Σ_i b_i² (λ_i + 2α)/(λ_i + α)²``
    (``b = VᵀB``) for every ``α``. With fewer: per candidate ``A + αI = LLᵀ``,
    ``U = L^{-T}L^{-1}B`` and ``tr H = D − α ‖L^{-1}‖²_F``. Both give the same scores up to
    rounding. The grid defaults to :func:`default_alpha_grid` of ``A`` (29 points).

    Returns ``(U, alpha, scores)``: ``U`` of shape ``(D, o)``, the chosen ``alpha`` and the
    score of every candidate.
    """
    if alphas is None:
        mean_eig = torch.diagonal(A).clamp_min(0.0).mean()  # the trace is the eigenvalue sum
        alphas = default_alpha_grid(mean_eig.reshape(1))
    alphas = torch.as_tensor(alphas, dtype=torch.float64, device=A.device).reshape(-1)
    if not bool((alphas > 0).all()) or not bool(torch.isfinite(alphas).all()):
        raise ValueError("GCV needs positive finite alphas")
    if alphas.numel() <= FEW_ALPHAS:
        return _gcv_by_cholesky(A, B, yy, n, extra_dof, alphas)
    return _gcv_by_eigh(A, B, yy, n, extra_dof, alphas)


def _gcv_by_eigh(A, B, yy, n, extra_dof, alphas):
    """:func:`ridge_gcv` from one eigendecomposition of ``A``."""
    evals, V = symmetric_eigh(A)
    evals = evals.clamp_min(0.0)
    VB = V.T @ B
    b2 = VB.square()  # (D, o)
    lam = evals[:, None]
    scores = []
    for a in alphas:
        rss = (yy - ((lam + 2 * a) / (lam + a).square() * b2).sum(0)).clamp_min(0.0).sum()
        dof = float((evals / (evals + a)).sum()) + extra_dof
        scores.append(_gcv_score(float(rss), dof, n))
    scores_t = torch.tensor(scores, dtype=torch.float64, device=A.device)
    best = int(torch.argmin(scores_t))
    a = float(alphas[best])
    return V @ (VB / (lam + a)), a, scores_t


def _gcv_by_cholesky(A, B, yy, n, extra_dof, alphas):
    """:func:`ridge_gcv` for a few candidates: one factorisation of ``A + αI`` each."""
    D = A.shape[0]
    eye = torch.eye(D, dtype=A.dtype, device=A.device)
    scores, sols = [], []
    for a in alphas.tolist():
        L, info = torch.linalg.cholesky_ex(A + a * eye)
        if int(info) != 0:  # A + αI numerically indefinite: all by the eigen route
            return _gcv_by_eigh(A, B, yy, n, extra_dof, alphas)
        Linv = torch.linalg.solve_triangular(L, eye, upper=False)
        U = Linv.T @ (Linv @ B)
        rss = float((yy - 2 * (B * U).sum(0) + (U * (A @ U)).sum(0)).clamp_min(0.0).sum())
        dof = D - a * float(Linv.square().sum()) + extra_dof
        scores.append(_gcv_score(rss, dof, n))
        sols.append(U)
    scores_t = torch.tensor(scores, dtype=torch.float64, device=A.device)
    best = int(torch.argmin(scores_t))
    return sols[best], float(alphas[best]), scores_t


def gcv_ridge(
    ne: NormalEquations, fit_intercept: bool = True, alphas: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    r"""Ridge with ``α`` minimising generalised cross-validation,
    ``GCV(α) = (RSS(α)/n) / (1 − tr H(α)/n)²``; see :meth:`NormalEquations.solve_gcv`.

    Returns ``(U, intercept, alpha, scores)``: ``U`` of shape ``(D, o)``, ``intercept`` of
    shape ``(o,)``, the chosen ``alpha`` and the score of every grid point.
    """
    return ne.solve_gcv(alphas, fit_intercept=fit_intercept)


def loo_ridge(
    ne: NormalEquations,
    blocks: RowBlocks,
    fit_intercept: bool = True,
    alphas: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    r"""Ridge with ``α`` minimising the exact leave-one-out error (PRESS) on a grid.

    With ``A = Z̃ᵀWZ̃ = VΛVᵀ`` (features centred by their weighted mean when
    ``fit_intercept``), the hat diagonal is
    ``h_i(α) = w_i/Σw + w_i ‖(Λ + α)^{-1/2} Vᵀz̃_i‖²`` (the first term only with an
    intercept) and the leave-one-out residual is ``e_i(α)/(1 − h_i(α))``, so one
    eigendecomposition and one more pass over the rows score every ``α``:
    ``PRESS(α) = Σ_i w_i ‖e_i(α)/(1 − h_i(α))‖² / Σw``.

    Parameters
    ----------
    ne : NormalEquations
        The statistics of all rows (``D`` features, ``o`` outputs).
    blocks : callable
        ``blocks()`` yields ``(F, Y, w)`` over the same rows: features ``(b, D)``, float64
        targets ``(b, o)``, float64 weights ``(b,)`` or ``None`` (unit weights).
    fit_intercept : bool, default True
    alphas : tensor, optional
        The grid; :func:`default_alpha_grid` of ``A``'s eigenvalues when omitted.

    Returns
    -------
    (U, intercept, alpha, scores)
        ``U`` of shape ``(D, o)``, ``intercept`` ``(o,)``, the chosen ``alpha`` and the mean
        PRESS of every grid point (shape ``(G,)``).
    """
    A, B, _ = ne.centred(fit_intercept)
    evals, V = symmetric_eigh(A)
    evals = evals.clamp_min(0.0)
    if alphas is None:
        alphas = default_alpha_grid(evals)
    alphas = torch.as_tensor(alphas, dtype=torch.float64, device=A.device).reshape(-1)
    inv = 1.0 / (evals[:, None] + alphas[None, :])  # (D, G)
    VB = V.T @ B  # (D, o)
    G, o = alphas.numel(), B.shape[1]
    C = (VB[:, None, :] * inv[:, :, None]).reshape(-1, G * o)  # (D, G*o)
    fm = ne.Fsum / ne.wsum if fit_intercept else torch.zeros_like(ne.Fsum)
    ym = ne.Ysum / ne.wsum if fit_intercept else torch.zeros_like(ne.Ysum)
    press = torch.zeros(G, dtype=torch.float64, device=A.device)
    for F, Y, w in blocks():
        P = (F.double() - fm) @ V  # (b, D)
        pred = (P @ C).reshape(-1, G, o) + ym
        w = torch.ones(P.shape[0], dtype=torch.float64, device=A.device) if w is None else w
        h = (P.square() @ inv) * w[:, None]
        if fit_intercept:
            h = h + (w / ne.wsum)[:, None]
        e = (Y[:, None, :] - pred) / (1.0 - h).clamp_min(1e-12)[:, :, None]
        press += (w[:, None, None] * e.square()).sum((0, 2))
    best = int(torch.argmin(press))
    a = float(alphas[best])
    U = V @ (VB / (evals[:, None] + a))
    return U, ne.intercept(U, fit_intercept), a, press / ne.wsum
