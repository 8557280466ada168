r"""Multinomial logistic regression on fixed features by truncated Newton."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from snnk._utils.blocks import BLOCK_ELEMENTS, crossprod
from snnk.solvers.cholesky import symmetric_eigh

__all__ = ["LogisticResult", "multinomial_logistic"]


@dataclass
class LogisticResult:
    """Solution of :func:`multinomial_logistic`."""

    coef: torch.Tensor  # (D, K)
    intercept: torch.Tensor  # (K,)
    n_iter: int
    converged: bool
    loss: float
    #: Hessian-vector products (passes over the data inside the CG solves)
    n_hess: int = 0


def _softmax_ce(logits: torch.Tensor, Y: torch.Tensor, w: torch.Tensor) -> float:
    """``−Σ_i w_i Σ_k Y_ik log softmax(logits_i)_k`` (float)."""
    return -float((w[:, None] * Y * torch.log_softmax(logits, dim=1)).sum())


class _Problem:
    """The penalised softmax loss on ``[F 1]`` with weights, and its derivatives.

    ``Uc`` stacks the coefficients and the intercept, shape ``(D + 1, K)``. The loss and the
    gradient are computed in float64 whatever the features' dtype (they decide convergence);
    Hessian-vector products, which only shape the Newton direction, run in the features'
    own dtype (float32 features: half the memory traffic and no float64 copy of them).
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
        self.wsum = max(float(self.w.sum()), 1e-300)
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
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None
        self.n_hess = 0

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """Remove the softmax shift direction (and the pinned intercept)."""
        return (V @ self.P) * self.mask

    def logits(self, Uc: torch.Tensor) -> Iterable[tuple[torch.Tensor, slice, torch.Tensor]]:
        """``(F, rows, F U + c)`` per block, the scores in float64."""
        D = self.D
        for F, rows in self.features_fn():
            F64 = F.to(torch.float64)
            yield F64, rows, F64 @ Uc[:D] + Uc[D]

    def loss_grad(self, Uc: torch.Tensor, want_grad: bool = True):
        """``(loss, gradient, C, per-block probabilities or None)``.

        ``C = Σ_i w_i (diag p_i − p_i p_iᵀ) / Σw`` is the mean ``K x K`` curvature of the
        softmax at the iterate (for the preconditioner).
        """
        D, w, Y = self.D, self.w, self.Y
        total = 0.0
        grad = torch.zeros_like(Uc) if want_grad else None
        C = torch.zeros(self.K, self.K, dtype=torch.float64, device=Uc.device)
        probs = [] if want_grad and self.keep_probs else None
        for F, rows, s in self.logits(Uc):
            logp = torch.log_softmax(s, dim=1)
            wr, Yr = w[rows], Y[rows]
            total -= float((wr[:, None] * Yr * logp).sum())
            if want_grad:
                p = torch.exp(logp)
                R = wr[:, None] * (p - Yr)
                grad[:D] += crossprod(F, R)
                grad[D] += R.sum(0)
                wp = wr[:, None] * p
                C += torch.diag(wp.sum(0)) - wp.T @ p
                if probs is not None:
                    probs.append(p)
        total += 0.5 * self.alpha * float(Uc[:D].square().sum())
        if want_grad:
            grad += self.reg * Uc
        return total, grad, C / self.wsum, probs

    def hess_vec(self, Uc: torch.Tensor, V: torch.Tensor, probs) -> torch.Tensor:
        """Projected Hessian-vector product ``H V`` at ``Uc`` (one pass over the data, the
        products with the features in their dtype, everything else in float64)."""
        D, w = self.D, self.w
        out = torch.zeros_like(V)
        self.n_hess += 1
        for i, (F, rows) in enumerate(self.features_fn()):
            dt = F.dtype if F.dtype in (torch.float32, torch.float64) else torch.float64
            F = F.to(dt)
            if probs is not None:
                p = probs[i]
            else:
                p = torch.softmax(F.double() @ Uc[:D] + Uc[D], dim=1)
            z = (F @ V[:D].to(dt)).double() + V[D]
            jz = w[rows][:, None] * (p * z - p * (p * z).sum(1, keepdim=True))
            out[:D] += crossprod(F, jz.to(dt)).double()
            out[D] += jz.sum(0)
        return self.project(out + self.reg * V)

    def preconditioner(self, C: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        r"""``R ↦ P⁻¹R`` for ``P = G ⊗ C + αI`` (Kronecker: ``(P R) = G R C + αR``).

        ``G = [F 1]ᵀW[F 1]`` and ``C`` the mean softmax curvature: the Hessian
        ``Σ_i w_i [F_i 1]ᵀ[F_i 1] ⊗ (diag p_i − p_i p_iᵀ)`` with every row's ``K x K``
        curvature replaced by the average (exact at the uniform start). With ``G = QΛQᵀ``
        (one eigendecomposition per fit) and ``C = SμSᵀ`` (``K x K``, per Newton step),
        ``P⁻¹R = Q [(QᵀRS) / (λμᵀ + α)] Sᵀ``: two products with ``Q``. The unpenalised
        intercept gets ``α`` too here (its curvature ``Σw·μ`` dwarfs it).
        """
        if self._eig is None:
            lam, Q = symmetric_eigh(self.G)
            # Q in float32: each application reads it twice, and a preconditioner needs
            # only to be a fixed positive definite map, not an exact one
            self._eig = (lam.clamp_min(0.0), Q.float())
        lam, Q = self._eig
        mu, S = symmetric_eigh(0.5 * (C + C.T))
        denom = lam[:, None] * mu.clamp_min(0.0)[None, :] + max(self.alpha, 1e-12)

        def apply(R: torch.Tensor) -> torch.Tensor:
            T = (Q.T @ R.float()).double() @ S / denom
            return (Q @ (T @ S.T).float()).double()

        return apply

    def newton_direction(self, Uc, g, C, probs, max_cg: int) -> torch.Tensor:
        """Truncated preconditioned CG on ``H s = −g`` (see :meth:`preconditioner`)."""
        precond = self.preconditioner(C)
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

    def warm_start(self, Uc0: torch.Tensor) -> torch.Tensor:
        r"""``t·Uc0`` with the scale ``t >= 0`` minimising the loss along the ray: the scores
        ``[F 1] Uc0`` are computed once (one pass), then ``L(t)`` is a function of ``n x K``
        numbers, minimised by safeguarded Newton steps on ``t``."""
        Uc0 = self.project(Uc0)
        S = torch.cat([s for _, _, s in self.logits(Uc0)])
        pen = self.alpha * float(Uc0[: self.D].square().sum())
        w, Y = self.w, self.Y
        t = 0.0
        for _ in range(30):
            p = torch.softmax(t * S, dim=1)
            ps = (p * S).sum(1)
            d1 = float((w * (ps - (Y * S).sum(1))).sum()) + pen * t
            d2 = float((w * ((p * S.square()).sum(1) - ps.square())).sum()) + pen
            if d2 <= 0:
                break
            step = d1 / d2
            t_new = max(t - step, 0.5 * t)
            if abs(t_new - t) <= 1e-6 * max(t, 1e-12):
                t = t_new
                break
            t = t_new
        base = _softmax_ce(torch.zeros_like(S), Y, w)
        if _softmax_ce(t * S, Y, w) + 0.5 * pen * t * t >= base:
            return torch.zeros_like(Uc0)
        return t * Uc0

    def line_search(self, Uc, s, loss: float, slope: float):
        """Backtracking (Armijo) step along ``s``; returns ``(step, loss, grad, C, probs)``
        of the accepted point (the full step's gradient comes with its loss: one pass)."""
        step = 1.0
        out = self.loss_grad(Uc + s)
        while True:
            new_loss = out[0]
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-8:
                if out[1] is None:
                    out = self.loss_grad(Uc + step * s)
                return (step, *out)
            step *= 0.5
            out = self.loss_grad(Uc + step * s, want_grad=False)


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
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    FtY: torch.Tensor | None = None,
) -> LogisticResult:
    r"""Multinomial logistic regression on fixed features by truncated Newton.

    Minimises ``L(U, c) = −Σ_i w_i log softmax(F_i U + c)_{y_i} + (α/2)‖U‖²`` (intercept not
    penalised). Each Newton step solves ``H s = −g`` by conjugate gradients with exact
    Hessian-vector products (one pass over the data each, in the features' dtype; the
    softmax probabilities of the iterate are kept per block when ``n·K <= 2^24``),
    preconditioned by the Kronecker product ``[F 1]ᵀW[F 1] ⊗ C + αI`` with ``C`` the mean
    ``K x K`` softmax curvature of the iterate (one eigendecomposition of the Gram matrix per
    fit; exact at the uniform start), followed by a backtracking line search whose full step
    also yields the next gradient. Loss and gradient are float64. Stops when the largest
    gradient entry falls below ``tol`` times that of the zero model (Newton converges
    quadratically, so a tight ``tol`` costs only an iteration or two). Directions along
    ``1`` on the class axis (softmax shift invariance) are projected out.

    Parameters
    ----------
    features_fn : callable
        ``features_fn()`` yields ``(F_block, rows)`` over the data in row blocks.
    Y : (n, K) one-hot targets (float64).
    gram, Fsum : the weighted ``FᵀWF`` and ``FᵀW1`` (float64).
    init : (coef, intercept), optional
        A starting direction (e.g. the ridge solution on one-hot targets): Newton starts at
        its best multiple ``t·(coef, intercept)``, ``t >= 0`` chosen on the loss (one extra
        pass), or at zero when no multiple beats the zero model. The minimiser is unique,
        so the start changes the iterations, not the solution.
    FtY : (D, K) float64, optional
        The weighted ``FᵀWY``; with ``init`` it gives the zero model's gradient (the
        reference of ``tol``) without a pass over the data.
    """
    prob = _Problem(features_fn, Y, gram, Fsum, alpha, sample_weight, fit_intercept)
    Uc = torch.zeros(prob.D + 1, prob.K, dtype=torch.float64, device=gram.device)
    if init is not None:
        # the tolerance stays relative to the zero model's gradient
        if FtY is None:
            g0 = float(prob.project(prob.loss_grad(Uc, want_grad=True)[1]).abs().max())
        else:
            ysum = prob.w @ Y
            g_zero = torch.cat([Fsum[:, None] / prob.K - FtY, (prob.wsum / prob.K - ysum)[None]])
            g0 = float(prob.project(g_zero).abs().max())
        Uc = prob.warm_start(torch.cat([init[0], init[1][None, :]]).to(torch.float64))
    loss, grad, C, probs = prob.loss_grad(Uc)
    if init is None:
        g0 = float(prob.project(grad).abs().max())
    g0 = max(g0, 1e-300)
    converged, n_iter = False, 0
    while n_iter < max_iter:
        g = prob.project(grad)
        if float(g.abs().max()) <= tol * max(1.0, g0):
            converged = True
            break
        n_iter += 1
        s = prob.newton_direction(Uc, g, C, probs, max_cg)
        slope = float((g * s).sum())
        if -slope <= 1e-15 * max(1.0, abs(loss)):
            # Newton decrement at round-off level: the loss cannot judge the step, so the
            # full step is kept if it lowers the gradient, else the iterate is final
            out = prob.loss_grad(Uc + s)
            if float(prob.project(out[1]).abs().max()) >= float(g.abs().max()):
                converged = True
                break
            Uc = Uc + s
            loss, grad, C, probs = out
            continue
        step, loss, grad, C, probs = prob.line_search(Uc, s, loss, slope)
        Uc = Uc + step * s
    D = prob.D
    return LogisticResult(Uc[:D], Uc[D], n_iter, converged, loss, prob.n_hess)
