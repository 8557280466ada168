r"""Inverses of small symmetric positive definite matrices, with an analytic gradient.

Attention's landmark methods need ``B⁻¹`` of an ``m x m`` regularised Gram matrix inside a
differentiable forward pass: :func:`spd_inverse` computes it exactly (Cholesky, float64) or by
Newton–Schulz iterations (:func:`newton_schulz_inverse`) and back-propagates the analytic
gradient ``−B⁻¹ Ḡ B⁻¹`` once, never through the iterations.
"""

from __future__ import annotations

import math

import torch

from snnk._utils import check_in

#: the ways :func:`spd_inverse` can invert
SPD_INVERSE_METHODS = ("solve", "newton")


def newton_schulz_inverse(
    B: torch.Tensor, max_iter: int = 100, tol: float = 1e-10
) -> tuple[torch.Tensor, int, float]:
    r"""Inverse of symmetric positive definite ``B`` (``(..., m, m)``) by Newton–Schulz.

    ``V₀ = I / ‖B‖_∞`` (``‖B‖_∞ ≥ λ_max``) and ``V_{k+1} = V_k (2I − B V_k)``. The residual
    ``E_k = I − B V_k`` satisfies ``E_{k+1} = E_k²`` with ``E₀`` having eigenvalues in
    ``[0, 1)``, so ``‖E_k‖₂`` decreases monotonically to 0: more iterations never make the
    result worse. Stops when ``‖E_k‖_F / √m <= tol`` (the largest over the batch).

    Parameters
    ----------
    B : Tensor of shape ``(..., m, m)``
        Symmetric positive definite; any leading batch shape.
    max_iter : int, default 100
        Most iterations.
    tol : float, default 1e-10
        Target of the normalised Frobenius residual.

    Returns
    -------
    inverse : Tensor of shape ``(..., m, m)``
        Symmetrised after every step, in ``B``'s dtype.
    iterations : int
        Iterations used.
    residual : float
        Final ``max_batch ‖I − B V‖_F / √m`` (above ``tol`` when ``max_iter`` was reached).
    """
    m = B.shape[-1]
    eye = torch.eye(m, dtype=B.dtype, device=B.device)
    norm = B.abs().sum(-1).amax(-1, keepdim=True).unsqueeze(-1)
    V = eye / norm
    res = float("inf")
    for it in range(1, max_iter + 1):
        V = V @ (2.0 * eye - B @ V)
        V = 0.5 * (V + V.mT)
        res = float(torch.linalg.matrix_norm(eye - B @ V).amax()) / math.sqrt(m)
        if res <= tol:
            return V, it, res
    return V, max_iter, res


class _SPDInverse(torch.autograd.Function):
    """``B⁻¹`` for SPD ``B`` with the analytic gradient ``−B⁻¹ Ḡ B⁻¹`` (computed once)."""

    @staticmethod
    def forward(ctx, B, method, max_iter, tol):
        B64 = B.double()
        B64 = 0.5 * (B64 + B64.mT)  # kernel Gram matrices are symmetric only up to rounding
        if method == "solve":
            inv = torch.cholesky_inverse(torch.linalg.cholesky(B64))
        else:
            inv, it, res = newton_schulz_inverse(B64, max_iter, tol)
            if res > tol:
                raise RuntimeError(
                    f"Newton–Schulz did not converge: residual {res:.2e} > tol={tol:g} after "
                    f"{it} iterations; raise max_iter, raise jitter, or use pinv='solve'"
                )
        inv = inv.to(B.dtype)
        ctx.save_for_backward(inv)
        return inv

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return -(inv.mT @ grad @ inv.mT), None, None, None


def spd_inverse(
    B: torch.Tensor, method: str = "solve", max_iter: int = 100, tol: float = 1e-10
) -> torch.Tensor:
    r"""``B⁻¹`` of a symmetric positive definite ``B``, differentiable with ``−B⁻¹ Ḡ B⁻¹``.

    ``B`` is symmetrised (``(B + Bᵀ)/2``) and inverted in float64, then cast back to its
    dtype. The backward pass applies the analytic gradient of the inverse,
    ``∂L/∂B = −B⁻ᵀ (∂L/∂B⁻¹) B⁻ᵀ``, once: it never differentiates through iterations.
    The caller adds any regularisation (``B = A + λI``); nothing is added here.

    Parameters
    ----------
    B : Tensor of shape ``(..., m, m)``
        Symmetric positive definite (up to rounding); any leading batch shape.
    method : {"solve", "newton"}, default "solve"
        ``"solve"``: Cholesky factorisation and its inverse (exact). ``"newton"``:
        :func:`newton_schulz_inverse`, raising ``RuntimeError`` if the residual does not
        reach ``tol`` within ``max_iter`` iterations.
    max_iter : int, default 100
        Newton–Schulz iterations at most (``"newton"`` only).
    tol : float, default 1e-10
        Newton–Schulz residual target (``"newton"`` only).

    Returns
    -------
    Tensor of shape ``(..., m, m)`` in ``B``'s dtype.
    """
    check_in(method, "method", SPD_INVERSE_METHODS)
    if not isinstance(B, torch.Tensor) or B.ndim < 2 or B.shape[-1] != B.shape[-2]:
        raise ValueError(
            f"B must be a tensor of square matrices (..., m, m), got "
            f"{tuple(B.shape) if isinstance(B, torch.Tensor) else type(B).__name__}"
        )
    return _SPDInverse.apply(B, method, max_iter, tol)
