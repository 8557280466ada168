r"""Nyström factors and the preconditioners built on them (Falkon; Nyström + diagonal).

All three work on the kernel matrix of ``M`` centres ``K_CC`` (``M x M``), factored once by
:func:`~snnk.solvers.jittered_cholesky`, and cost ``O(M³)`` to set up; applying a
preconditioner costs ``M x M`` triangular solves (plus, for the Nyström + diagonal one, two
blockwise products with ``K_nC``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from snnk.solvers.cholesky import SPDSolver, cholesky_solve, jittered_cholesky, lower_gram

if TYPE_CHECKING:
    from snnk.kernels import KernelMatrix

__all__ = ["FalkonPreconditioner", "NystromDiagonalPreconditioner", "NystromFactor"]


class NystromFactor:
    r"""The Nyström factor of the centres' kernel matrix: ``K_CC + ε s I = L Lᵀ``.

    ``L`` comes from :func:`~snnk.solvers.jittered_cholesky` (``jitter="roundoff"`` by
    default: kernel matrices of smooth kernels are numerically singular as a rule, and a
    round-off jitter keeps ``L⁻¹`` accurate). With ``N = L⁻ᵀ``, the Nyström features of
    points ``x`` are ``z(x) = k(x, C) N`` and ``z(x)ᵀ z(y) = k(x, C) (K_CC + εI)⁻¹ k(C, y)``,
    the Nyström approximation of ``k(x, y)``.

    Parameters
    ----------
    Kcc : Tensor of shape ``(M, M)``
        Symmetric positive semi-definite (symmetrised here as ``(K + Kᵀ)/2`` when
        ``symmetrize=True``). Differentiable: gradients flow through ``L`` and :attr:`inv_T`.
    name : str, default "K_CC"
        Name used in warnings and errors.
    jitter, max_jitter, warn, upcast
        As in :func:`~snnk.solvers.jittered_cholesky` (``warn=False`` here: for centres the
        jitter is part of the method).
    symmetrize : bool, default False

    Attributes
    ----------
    L : Tensor of shape ``(M, M)``, lower triangular (float64 for float32 input when
        ``upcast``).
    """

    def __init__(
        self,
        Kcc: torch.Tensor,
        *,
        name: str = "K_CC",
        jitter: float | str = "roundoff",
        max_jitter: float = 1e-2,
        warn: bool = False,
        symmetrize: bool = False,
        upcast: bool = True,
    ):
        if symmetrize:
            Kcc = 0.5 * (Kcc + Kcc.T)
        self.L = jittered_cholesky(
            Kcc,
            name=name,
            jitter=jitter,
            max_jitter=max_jitter,
            warn=warn,
            upcast=upcast,
            hint="check the kernel's hyper-parameters (a lengthscale far larger than the data "
            "spread makes every centre look alike) or use fewer centres",
        )
        self._inv_T: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.L.shape[0]

    def solve_lower(self, B: torch.Tensor) -> torch.Tensor:
        """``L⁻¹ B`` for ``B`` of shape ``(M, k)``."""
        return torch.linalg.solve_triangular(self.L, B, upper=False)

    def solve_upper(self, B: torch.Tensor) -> torch.Tensor:
        """``L⁻ᵀ B`` for ``B`` of shape ``(M, k)``."""
        return torch.linalg.solve_triangular(self.L.T, B, upper=True)

    @property
    def inv_T(self) -> torch.Tensor:
        """``N = L⁻ᵀ`` of shape ``(M, M)`` (upper triangular), computed once."""
        if self._inv_T is None:
            eye = torch.eye(self.size, dtype=self.L.dtype, device=self.L.device)
            self._inv_T = torch.linalg.solve_triangular(self.L, eye, upper=False).T
        return self._inv_T

    def features(self, Knc: torch.Tensor) -> torch.Tensor:
        """Nyström features ``z = K_nC L⁻ᵀ``: ``(n, M) -> (n, M)`` in ``Knc``'s dtype."""
        return Knc @ self.inv_T.to(Knc.dtype)


class FalkonPreconditioner:
    r"""Falkon's preconditioner of the Nyström normal equations.

    For ``H = K_nMᵀ W K_nM + α K_MM`` (``Σw`` the total weight), with ``K_MM + εI = T Tᵀ``
    (``T = L``, a :class:`NystromFactor`) and ``A Aᵀ = TᵀT / M + (α / Σw) I``, the matrix

    .. math:: P = (Σw / M) K_{MM}^2 + α K_{MM} = Σw · T A Aᵀ Tᵀ

    is what ``H`` would be if every centre stood for ``Σw / M`` training rows, and

    .. math:: P^{-1} R = T^{-ᵀ} (A Aᵀ)^{-1} T^{-1} R / Σw

    costs four triangular solves (Rudi, Carratino & Rosasco, NeurIPS 2017). Set-up: one
    ``lauum`` and one Cholesky of ``M x M`` (float64).

    Parameters
    ----------
    factor : NystromFactor
        Factor of ``K_MM``.
    alpha : float
        Ridge strength (scikit-learn ``KernelRidge`` convention, against the weighted sum).
    total_weight : float
        ``Σw`` (``n`` without weights).
    """

    def __init__(self, factor: NystromFactor, alpha: float, total_weight: float):
        self.factor = factor
        self.total_weight = float(total_weight)
        m = factor.size
        inner = lower_gram(factor.L) / m
        inner.diagonal().add_(alpha / self.total_weight)
        self.LA = jittered_cholesky(inner, name="T Tᵀ/M + λI", jitter="roundoff", warn=False)

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        """``P⁻¹ R`` for ``R`` of shape ``(M, k)``."""
        V = self.factor.solve_lower(R)
        V = cholesky_solve(self.LA, V)
        return self.factor.solve_upper(V) / self.total_weight


class NystromDiagonalPreconditioner:
    r"""Nyström + diagonal preconditioner of ``S K S + αI`` (exact kernel ridge by CG).

    With ``M`` centres ``C``, ``G = K_nC`` (an operator), ``K_CC + εI = L Lᵀ`` and
    ``F = L⁻¹ Gᵀ`` (so ``FᵀF`` is the Nyström approximation of ``K``), and
    ``S = diag(√w)``:

    .. math:: P = S FᵀF S + D, \qquad D = diag(w ⊙ (diag K − diag FᵀF)) + α I,

    applied by the Woodbury identity
    ``P⁻¹ = D⁻¹ − D⁻¹ S Fᵀ (I + F S D⁻¹ S Fᵀ)⁻¹ F S D⁻¹``. The ``M x M`` inner matrix is formed
    in one pass over ``G`` (``O(n M²)``); each application costs two blockwise products with
    ``G`` (``O(n M d)``) and ``M x M`` triangular solves. The diagonal keeps the part of ``K``
    the centres miss, which clusters the preconditioned spectrum further than ``αI`` alone.

    All products run in float64 whatever ``G``'s dtype: ``u`` comes through ``L⁻ᵀ`` (entries
    up to ``cond(K_CC)`` larger than the result) and cancels in ``R_d − G u``; float32
    products made ``P⁻¹`` inexact and CG stall near 1e-2 (n = 20,000, M = 4,000). The blocks
    of ``G`` are the same values in the inner matrix and every application, so ``P⁻¹`` is one
    fixed SPD map.

    Parameters
    ----------
    Knc : KernelMatrix
        ``G = k(X, C)``, ``(n, M)``.
    factor : NystromFactor
        Factor of ``K_CC`` (float64).
    kdiag : Tensor of shape ``(n,)``
        ``diag K`` (float64).
    alpha : float
    sqrt_weight : Tensor of shape ``(n,)``, optional
        ``√w`` (float64); ones when ``None``.
    """

    def __init__(
        self,
        Knc: KernelMatrix,
        factor: NystromFactor,
        kdiag: torch.Tensor,
        alpha: float,
        sqrt_weight: torch.Tensor | None = None,
    ):
        n = Knc.shape[0]
        m = factor.size
        f64, dev = torch.float64, kdiag.device
        s = torch.ones(n, dtype=f64, device=dev) if sqrt_weight is None else sqrt_weight
        d = torch.empty(n, dtype=f64, device=dev)
        Q = torch.zeros(m, m, dtype=f64, device=dev)
        for rows, Gb in Knc.blocks(f64):
            Fb = factor.solve_lower(Gb.T)
            resid = (kdiag[rows] - Fb.square().sum(0)).clamp_min(0.0)
            d[rows] = s[rows].square() * resid + alpha
            Fs = Fb * (s[rows] / d[rows].sqrt())
            Q += Fs @ Fs.T
        Q.diagonal().add_(1.0)
        self.inner = SPDSolver(Q)
        self.Knc, self.factor, self.s, self.d = Knc, factor, s, d

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        """``P⁻¹ R`` for ``R`` of shape ``(n, k)`` (float64)."""
        s, d = self.s, self.d
        Rd = R / d[:, None]
        t = self.Knc.rmatmul(s[:, None] * Rd, dtype=torch.float64)
        u = self.factor.solve_upper(self.inner(self.factor.solve_lower(t)))
        return Rd - (s[:, None] / d[:, None]) * self.Knc.matmul(u, dtype=torch.float64)
