r"""Multinomial logistic regression on fixed features by truncated Newton."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from snnk._utils.blocks import BLOCK_ELEMENTS, crossprod
from snnk.solvers.cholesky import SPDSolver

__all__ = ["LogisticResult", "multinomial_logistic"]


@dataclass
class LogisticResult:
    """Solution of :func:`multinomial_logistic`."""

    coef: torch.Tensor  # (D, K)
    intercept: torch.Tensor  # (K,)
    n_iter: int
    converged: bool
    loss: float


class _Problem:
    """The penalised softmax loss on ``[F 1]`` with weights, and its derivatives.

    ``Uc`` stacks the coefficients and the intercept, shape ``(D + 1, K)``.
    """

    def __init__(self, features_fn, Y, gram, Fsum, alpha, sample_weight, fit_intercept):
        D, K = gram.shape[0], Y.shape[1]
        dev = gram.device
        f64 = torch.float64
        self.features_fn, self.Y, self.alpha, self.D, self.K = features_fn, Y, alpha, D, K
        self.w = (
            torch.ones(Y.shape[0], dtype=f64, device=dev)
            if sample_weight is None
            else sample_weight.to(f64)
        )
        G = torch.zeros(D + 1, D + 1, dtype=f64, device=dev)
        G[:D, :D], G[:D, D], G[D, :D], G[D, D] = gram, Fsum, Fsum, float(self.w.sum())
        self.reg = torch.full((D + 1, 1), float(alpha), dtype=f64, device=dev)
        self.reg[D] = 0.0
        if not fit_intercept:  # pin the intercept at 0: decouple its row, never move it
            G[:D, D] = G[D, :D] = 0.0
            G[D, D] = 1.0
        self.P = torch.eye(K, dtype=f64, device=dev) - 1.0 / K
        self.G = 0.5 * (G + G.T)
        self.mask = torch.ones(D + 1, 1, dtype=f64, device=dev)
        if not fit_intercept:
            self.mask[D] = 0.0
        # softmax probabilities of the current iterate, kept per block for the Hessian-vector
        # products of one Newton step when they are small (n·K <= BLOCK_ELEMENTS numbers)
        self.keep_probs = Y.shape[0] * K <= BLOCK_ELEMENTS

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """Remove the softmax shift direction (and the pinned intercept)."""
        return (V @ self.P) * self.mask

    def loss_grad(self, Uc: torch.Tensor, want_grad: bool = True):
        """``(loss, gradient, Σ w p(1 − p), per-block probabilities or None)``."""
        D, w, Y = self.D, self.w, self.Y
        total, curv = 0.0, 0.0
        grad = torch.zeros_like(Uc) if want_grad else None
        probs = [] if want_grad and self.keep_probs else None
        for F, rows in self.features_fn():
            F = F.to(torch.float64)
            logp = torch.log_softmax(F @ Uc[:D] + Uc[D], dim=1)
            wr, Yr = w[rows], Y[rows]
            total -= float((wr[:, None] * Yr * logp).sum())
            if want_grad:
                p = torch.exp(logp)
                R = wr[:, None] * (p - Yr)
                grad[:D] += crossprod(F, R)
                grad[D] += R.sum(0)
                curv += float((wr[:, None] * p * (1.0 - p)).sum())
                if probs is not None:
                    probs.append(p)
        total += 0.5 * self.alpha * float(Uc[:D].square().sum())
        if want_grad:
            grad += self.reg * Uc
        return total, grad, curv, probs

    def hess_vec(self, Uc: torch.Tensor, V: torch.Tensor, probs) -> torch.Tensor:
        """Projected Hessian-vector product ``H V`` at ``Uc`` (one pass over the data)."""
        D, w = self.D, self.w
        out = torch.zeros_like(V)
        for i, (F, rows) in enumerate(self.features_fn()):
            F = F.to(torch.float64)
            p = probs[i] if probs is not None else torch.softmax(F @ Uc[:D] + Uc[D], dim=1)
            z = F @ V[:D] + V[D]
            jz = w[rows][:, None] * (p * z - p * (p * z).sum(1, keepdim=True))
            out[:D] += crossprod(F, jz)
            out[D] += jz.sum(0)
        return self.project(out + self.reg * V)

    def newton_direction(self, Uc, g, curv, probs, max_cg: int) -> torch.Tensor:
        """Truncated preconditioned CG on ``H s = −g``.

        Preconditioner ``c·[F 1]ᵀW[F 1] + diag(α)`` on the class-centred subspace, with ``c``
        the mean curvature ``Σ w p(1 − p) / (K Σ w)`` of the current iterate: the Hessian's
        ``diag(p) − ppᵀ`` weights replaced by their average (at the uniform start it is the
        exact Hessian; Böhning's fixed bound ½ overestimates it K/2 times there).
        """
        wtot = max(float(self.w.sum()), 1e-300)
        c = max(curv / (self.K * wtot), 1e-6)
        precond = SPDSolver(c * self.G + torch.diag(self.reg[:, 0]))
        s = torch.zeros_like(g)
        r = -g
        z = self.project(precond(r))
        d = z.clone()
        rz = float((r * z).sum())
        gnorm = float(g.square().sum().sqrt())
        for _ in range(max_cg):
            Hd = self.hess_vec(Uc, d, probs)
            dHd = float((d * Hd).sum())
            if dHd <= 0:
                break
            a = rz / dHd
            s += a * d
            r -= a * Hd
            if float(r.square().sum().sqrt()) <= 0.1 * min(0.5, gnorm**0.5) * gnorm:
                break
            z = self.project(precond(r))
            rz_new = float((r * z).sum())
            d = z + (rz_new / rz) * d
            rz = rz_new
        return s

    def line_search(self, Uc, s, loss: float, slope: float) -> float:
        """Backtracking (Armijo) step length along ``s``."""
        step = 1.0
        while True:
            new_loss = self.loss_grad(Uc + step * s, want_grad=False)[0]
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-8:
                return step
            step *= 0.5


def multinomial_logistic(
    features_fn: Callable[[], Iterable[tuple[torch.Tensor, slice]]],
    Y: torch.Tensor,
    gram: torch.Tensor,
    Fsum: torch.Tensor,
    alpha: float,
    *,
    sample_weight: torch.Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-10,
    fit_intercept: bool = True,
    max_cg: int = 200,
) -> LogisticResult:
    r"""Multinomial logistic regression on fixed features by truncated Newton.

    Minimises ``L(U, c) = −Σ_i w_i log softmax(F_i U + c)_{y_i} + (α/2)‖U‖²`` (intercept not
    penalised). Each Newton step solves ``H s = −g`` by conjugate gradients with exact
    Hessian-vector products (one pass over the data each; the softmax probabilities of the
    iterate are kept per block when ``n·K <= 2^24``), preconditioned by
    ``(I − 11ᵀ/K) ⊗ c[F 1]ᵀW[F 1] + αI`` with ``c = Σ w p(1 − p) / (K Σ w)`` the mean
    curvature of the current iterate (refactored each Newton step from the accumulated Gram
    matrix; exact at the uniform start), followed by a backtracking line search; stops when
    the largest gradient entry falls below ``tol`` times its initial value (Newton converges
    quadratically, so a tight ``tol`` costs only an iteration or two). Directions along
    ``1`` on the class axis (softmax shift invariance) are projected out.

    Parameters
    ----------
    features_fn : callable
        ``features_fn()`` yields ``(F_block, rows)`` over the data in row blocks.
    Y : (n, K) one-hot targets (float64).
    gram, Fsum : the weighted ``FᵀWF`` and ``FᵀW1`` (float64).
    """
    prob = _Problem(features_fn, Y, gram, Fsum, alpha, sample_weight, fit_intercept)
    Uc = torch.zeros(prob.D + 1, prob.K, dtype=torch.float64, device=gram.device)
    loss, grad, curv, probs = prob.loss_grad(Uc)
    g0 = max(float(prob.project(grad).abs().max()), 1e-300)
    converged, n_iter = False, 0
    while n_iter < max_iter:
        g = prob.project(grad)
        if float(g.abs().max()) <= tol * max(1.0, g0):
            converged = True
            break
        n_iter += 1
        s = prob.newton_direction(Uc, g, curv, probs, max_cg)
        slope = float((g * s).sum())
        if -slope <= 1e-15 * max(1.0, abs(loss)):  # Newton decrement at round-off level
            converged = True
            break
        step = prob.line_search(Uc, s, loss, slope)
        Uc = Uc + step * s
        loss, grad, curv, probs = prob.loss_grad(Uc)
    D = prob.D
    return LogisticResult(Uc[:D], Uc[D], n_iter, converged, loss)
