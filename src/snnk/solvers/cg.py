r"""Preconditioned conjugate gradients on operators (many right-hand sides at once)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CGInfo", "conjugate_gradient"]


@dataclass
class CGInfo:
    """What :func:`conjugate_gradient` did.

    Attributes
    ----------
    n_iter : int
        Iterations run (products with ``H``).
    residuals : Tensor of shape ``(k,)``
        Final relative preconditioned residual norm of every column.
    tol : float
        The tolerance asked for.
    """

    n_iter: int
    residuals: torch.Tensor
    tol: float

    @property
    def converged(self) -> bool:
        """Whether every column reached ``tol``."""
        return bool((self.residuals <= self.tol).all())


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    B: torch.Tensor,
    *,
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tol: float = 1e-6,
    max_iter: int = 100,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, CGInfo]:
    r"""Solve ``H X = B`` by preconditioned conjugate gradients, every column on its own.

    ``H`` (symmetric positive definite, ``(n, n)``) is given by ``matvec: (n, k) -> (n, k)``
    (a dense matrix's ``__matmul__``, a :class:`snnk.kernels.KernelMatrix` or any blockwise
    product) and the preconditioner ``P⁻¹ ≈ H⁻¹`` by ``precond`` (identity when ``None``);
    both act on all ``k`` columns at once, so one pass over the data serves every right-hand
    side. With ``r_j`` the residual of column ``j``, the column stops moving once its
    preconditioned residual norm ``sqrt(r_jᵀ P⁻¹ r_j)`` falls below ``tol`` times its initial
    value; the loop ends when every column has, or after ``max_iter`` iterations. Starts from
    ``X = 0``.

    Parameters
    ----------
    matvec : callable
        ``V -> H V`` for ``V`` of shape ``(n, k)``.
    B : Tensor of shape ``(n, k)``
    precond : callable, optional
        ``R -> P⁻¹ R`` (symmetric positive definite).
    tol : float, default 1e-6
        Relative preconditioned residual at which a column stops (``0``: run ``max_iter``).
    max_iter : int, default 100
    callback : callable, optional
        ``callback(n_iter, residuals)`` after every iteration (a progress bar).

    Returns
    -------
    X : Tensor of shape ``(n, k)``
    info : CGInfo
    """
    if precond is None:

        def precond(R: torch.Tensor) -> torch.Tensor:
            return R.clone()

    X = torch.zeros_like(B)
    R = B.clone()
    Z = precond(R)
    rz = (R * Z).sum(0)
    rz0 = torch.where(rz > 0, rz, 1.0)
    P = Z.clone()
    n_iter = 0
    rel = torch.sqrt(rz.clamp_min(0) / rz0)
    while n_iter < max_iter and bool((rel > tol).any()):
        active = (rel > tol).to(B.dtype)
        HP = matvec(P)
        pHp = (P * HP).sum(0)
        step = torch.where(pHp > 0, rz / torch.where(pHp > 0, pHp, 1.0), 0.0) * active
        X += step * P
        R -= step * HP
        Z = precond(R)
        rz_new = (R * Z).sum(0)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        P = Z + beta * P
        rz = rz_new
        rel = torch.sqrt(rz.clamp_min(0) / rz0)
        n_iter += 1
        if callback is not None:
            callback(n_iter, rel)
    return X, CGInfo(n_iter, rel, float(tol))
