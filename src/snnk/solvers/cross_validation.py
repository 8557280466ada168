r"""Choosing the ridge strength from streaming normal equations: GCV and leave-one-out.

Both criteria score a log grid of ``α`` from one eigendecomposition ``A = VΛVᵀ`` of the
centred Gram matrix ``A = Z̃ᵀWZ̃`` (``D x D``) accumulated by
:class:`~snnk.solvers.NormalEquations`. Generalised cross-validation needs nothing else
(:meth:`NormalEquations.solve_gcv`); exact leave-one-out needs one more pass over the rows
for the hat diagonal (:func:`loo_ridge`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from snnk.solvers.normal_equations import NormalEquations

#: ``(F, Y, w)`` row blocks: features ``(b, D)``, float64 targets ``(b, o)``, float64
#: weights ``(b,)`` or ``None``
RowBlocks = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]


def default_alpha_grid(evals: torch.Tensor, num: int = 29) -> torch.Tensor:
    """The ridge grid ``10^-5 … 10^2`` times the mean eigenvalue of ``A`` (``num`` points,
    float64): the grid that :meth:`NormalEquations.solve_gcv` and :func:`loo_ridge` search."""
    scale = max(float(evals.clamp_min(0.0).mean()), 1e-300)
    return scale * torch.logspace(-5, 2, num, dtype=torch.float64, device=evals.device)


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
    evals, V = torch.linalg.eigh(A)
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
