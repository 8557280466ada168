r"""Multinomial logistic regression on fixed features by truncated Newton.

The solver touches the rows only through sums over row blocks (loss, gradient and mean
curvature; Hessian-vector products; the scores of a warm start), asked of a *row-sums*
object (:class:`BlockSums` in memory; a Dask map-reduce in :mod:`snnk.models._dask`), so the
same iterations run on an array, a re-readable file or a cluster: per-block sums added in
float64. The order of the additions moves the rounding, which can change the number of CG
steps an inexact Newton step takes, so two such fits agree to the solver tolerance (about
1e-3 relative on the coefficients at ``tol=1e-4``, 1e-7 at ``tol=1e-8``), not to the last bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from snnk._utils.blocks import BLOCK_ELEMENTS, crossprod
from snnk.solvers.cholesky import symmetric_eigh

__all__ = ["BlockSums", "LogisticResult", "RowSums", "multinomial_logistic", "softmax_newton"]

#: ``(F, Y, w)`` row blocks: features ``(b, D)``, float64 one-hot targets ``(b, K)``, float64
#: weights ``(b,)`` or ``None`` (ones)
Blocks = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]
#: a per-block term ``fn(F, Y, w, memo, *args) -> tuple of tensors``: the solver's sums are
#: ``Σ_blocks fn(...)`` entry by entry. ``memo`` is a dict the block may keep state in
#: between passes (the softmax probabilities of the iterate), or a fresh one each pass.
BlockTerm = Callable[..., tuple[torch.Tensor, ...]]


class RowSums(Protocol):
    """What the solver asks of the rows: sums over row blocks of a per-block term."""

    def map_sum(self, fn: BlockTerm, *args: Any) -> tuple[torch.Tensor, ...]:
        """``Σ_blocks fn(F, Y, w, memo, *args)``, entry by entry (float64 tensors)."""
        ...

    def map_cat(self, fn: BlockTerm, *args: Any) -> tuple[torch.Tensor, ...]:
        """``fn(F, Y, w, memo, *args)`` of every block, concatenated along rows."""
        ...


class BlockSums:
    """:class:`RowSums` over in-memory row blocks ``blocks()`` (a list or a re-readable
    source). With ``remember``, each block's ``memo`` survives between passes (the
    solver keeps the iterate's softmax probabilities there: ``n·K`` numbers)."""

    def __init__(self, blocks: Blocks, remember: bool = False):
        self.blocks, self.remember = blocks, remember
        self._memos: list[dict] = []

    def _terms(self, fn: BlockTerm, args) -> Iterable[tuple[torch.Tensor, ...]]:
        start = 0
        for i, (F, Y, w) in enumerate(self.blocks()):
            memo: dict = {}
            if self.remember:
                if i == len(self._memos):
                    self._memos.append(memo)
                # a memo belongs to its rows: a source whose block size moved between passes
                # (a CUDA budget read from free memory) starts the block afresh
                if self._memos[i].get("rows") != (start, Y.shape[0]):
                    self._memos[i] = {"rows": (start, Y.shape[0])}
                memo = self._memos[i]
            start += Y.shape[0]
            if w is None:
                w = torch.ones(Y.shape[0], dtype=torch.float64, device=Y.device)
            yield fn(F, Y, w, memo, *args)

    def map_sum(self, fn: BlockTerm, *args: Any) -> tuple[torch.Tensor, ...]:
        total = None
        for part in self._terms(fn, args):
            total = (
                list(part) if total is None else [a + b for a, b in zip(total, part, strict=True)]
            )
        if total is None:
            raise ValueError("no rows: the logistic loss needs at least one row block")
        return tuple(total)

    def map_cat(self, fn: BlockTerm, *args: Any) -> tuple[torch.Tensor, ...]:
        parts = list(self._terms(fn, args))
        return tuple(torch.cat(cols) for cols in zip(*parts, strict=True))


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


# -- the per-block terms (module level: a cluster ships them to its workers) -------------------
def loss_grad_term(F, Y, w, memo, Uc: torch.Tensor, want_grad: bool):
    """A block's ``(loss, ∂/∂U, ∂/∂c, Σ w (diag p − p pᵀ))`` at ``Uc`` (``(loss,)`` only
    without ``want_grad``), float64; keeps the probabilities ``p`` in ``memo``."""
    D = Uc.shape[0] - 1
    F64 = F.to(torch.float64)
    logp = torch.log_softmax(F64 @ Uc[:D] + Uc[D], dim=1)
    loss = -(w[:, None] * Y * logp).sum()
    if not want_grad:
        return (loss,)
    p = torch.exp(logp)
    R = w[:, None] * (p - Y)
    wp = w[:, None] * p
    memo["p"] = p
    return loss, crossprod(F64, R), R.sum(0), torch.diag(wp.sum(0)) - wp.T @ p


def hess_vec_term(F, Y, w, memo, Uc: torch.Tensor, V: torch.Tensor):
    """A block's Hessian-vector product ``(∂²/∂U · V, ∂²/∂c · V)`` at ``Uc``: the products
    with the features in their dtype, the rest in float64 (``p`` from ``memo`` when the
    last gradient pass left it, else recomputed)."""
    D = Uc.shape[0] - 1
    dt = F.dtype if F.dtype in (torch.float32, torch.float64) else torch.float64
    F = F.to(dt)
    p = memo.get("p")
    if p is None:
        p = torch.softmax(F.double() @ Uc[:D] + Uc[D], dim=1)
    z = (F @ V[:D].to(dt)).double() + V[D]
    jz = w[:, None] * (p * z - p * (p * z).sum(1, keepdim=True))
    return crossprod(F, jz.to(dt)).double(), jz.sum(0)


def scores_term(F, Y, w, memo, Uc: torch.Tensor):
    """A block's scores ``[F 1] Uc`` (float64), targets and weights (for the warm start)."""
    D = Uc.shape[0] - 1
    return F.to(torch.float64) @ Uc[:D] + Uc[D], Y, w


class _Problem:
    """The penalised softmax loss on ``[F 1]`` with weights, and its derivatives.

    ``Uc`` stacks the coefficients and the intercept, shape ``(D + 1, K)``. The loss and the
    gradient are computed in float64 whatever the features' dtype (they decide convergence);
    Hessian-vector products, which only shape the Newton direction, run in the features'
    own dtype (float32 features: half the memory traffic and no float64 copy of them).
    """

    def __init__(self, sums: RowSums, K, gram, Fsum, alpha, wsum, fit_intercept):
        D = gram.shape[0]
        dev = gram.device
        f64 = torch.float64
        self.sums, self.alpha, self.D, self.K = sums, alpha, D, K
        self.wsum = max(float(wsum), 1e-300)
        G = torch.zeros(D + 1, D + 1, dtype=f64, device=dev)
        G[:D, :D], G[:D, D], G[D, :D], G[D, D] = gram, Fsum, Fsum, float(wsum)
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
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None
        self.n_hess = 0

    def project(self, V: torch.Tensor) -> torch.Tensor:
        """Remove the softmax shift direction (and the pinned intercept)."""
        return (V @ self.P) * self.mask

    def loss_grad(self, Uc: torch.Tensor, want_grad: bool = True):
        """``(loss, gradient, C)`` (one pass; ``gradient`` and ``C`` are None without
        ``want_grad``).

        ``C = Σ_i w_i (diag p_i − p_i p_iᵀ) / Σw`` is the mean ``K x K`` curvature of the
        softmax at the iterate (for the preconditioner).
        """
        D = self.D
        out = self.sums.map_sum(loss_grad_term, Uc, want_grad)
        total = float(out[0]) + 0.5 * self.alpha * float(Uc[:D].square().sum())
        if not want_grad:
            return total, None, None
        grad = torch.cat([out[1], out[2][None, :]]).to(Uc.device) + self.reg * Uc
        return total, grad, out[3].to(Uc.device) / self.wsum

    def hess_vec(self, Uc: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """Projected Hessian-vector product ``H V`` at ``Uc`` (one pass over the data)."""
        self.n_hess += 1
        hD, hc = self.sums.map_sum(hess_vec_term, Uc, V)
        out = torch.cat([hD, hc[None, :]]).to(V.device)
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

    def newton_direction(self, Uc, g, C, max_cg: int) -> torch.Tensor:
        """Truncated preconditioned CG on ``H s = −g`` (see :meth:`preconditioner`)."""
        precond = self.preconditioner(C)
        s = torch.zeros_like(g)
        r = -g
        z = self.project(precond(r))
        d = z.clone()
        rz = float((r * z).sum())
        gnorm = float(g.square().sum().sqrt())
        for _ in range(max_cg):
            Hd = self.hess_vec(Uc, d)
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
        S, Y, w = (t.to(Uc0.device) for t in self.sums.map_cat(scores_term, Uc0))
        pen = self.alpha * float(Uc0[: self.D].square().sum())
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
        """Backtracking (Armijo) step along ``s``; returns ``(step, loss, grad, C)``
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
    ``1`` on the class axis (softmax shift invariance) are projected out. The iterations
    are :func:`softmax_newton` on the rows' :class:`BlockSums`.

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
    f64 = {"dtype": torch.float64, "device": Y.device}
    w = torch.ones(Y.shape[0], **f64) if sample_weight is None else sample_weight.to(**f64)

    def blocks():
        for F, rows in features_fn():
            yield F, Y[rows], w[rows]

    sums = BlockSums(blocks, remember=Y.shape[0] * Y.shape[1] <= BLOCK_ELEMENTS)
    return softmax_newton(
        sums,
        gram,
        Fsum,
        alpha,
        wsum=float(w.sum()),
        ysum=w @ Y,
        max_iter=max_iter,
        tol=tol,
        fit_intercept=fit_intercept,
        max_cg=max_cg,
        init=init,
        FtY=FtY,
    )


def softmax_newton(
    sums: RowSums,
    gram: torch.Tensor,
    Fsum: torch.Tensor,
    alpha: float,
    *,
    wsum: float,
    ysum: torch.Tensor,
    max_iter: int = 50,
    tol: float = 1e-10,
    fit_intercept: bool = True,
    max_cg: int = 200,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    FtY: torch.Tensor | None = None,
) -> LogisticResult:
    r"""The truncated-Newton iterations of :func:`multinomial_logistic` on any :class:`RowSums`
    (in-memory blocks, or per-chunk sums on a cluster: each pass one map-reduce).

    ``wsum = Σ_i w_i`` and ``ysum = Σ_i w_i y_i`` (shape ``(K,)``, float64) are the weighted
    row count and class totals (the normal equations' ``wsum`` / ``Ysum``); the other
    arguments are :func:`multinomial_logistic`'s. Passes: one per gradient, one per
    Hessian-vector product (about 10-20 per Newton step), one per rejected line-search step.
    """
    K = int(ysum.shape[0])
    prob = _Problem(sums, K, gram, Fsum, alpha, wsum, fit_intercept)
    Uc = torch.zeros(prob.D + 1, K, dtype=torch.float64, device=gram.device)
    if init is not None:
        # the tolerance stays relative to the zero model's gradient
        if FtY is None:
            g0 = float(prob.project(prob.loss_grad(Uc, want_grad=True)[1]).abs().max())
        else:
            ysum = ysum.to(gram.device)
            g_zero = torch.cat([Fsum[:, None] / K - FtY, (prob.wsum / K - ysum)[None]])
            g0 = float(prob.project(g_zero).abs().max())
        Uc = prob.warm_start(torch.cat([init[0], init[1][None, :]]).to(torch.float64))
    loss, grad, C = prob.loss_grad(Uc)
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
        s = prob.newton_direction(Uc, g, C, max_cg)
        slope = float((g * s).sum())
        if -slope <= 1e-15 * max(1.0, abs(loss)):
            # Newton decrement at round-off level: the loss cannot judge the step, so the
            # full step is kept if it lowers the gradient, else the iterate is final
            out = prob.loss_grad(Uc + s)
            if float(prob.project(out[1]).abs().max()) >= float(g.abs().max()):
                converged = True
                break
            Uc = Uc + s
            loss, grad, C = out
            continue
        step, loss, grad, C = prob.line_search(Uc, s, loss, slope)
        Uc = Uc + step * s
    D = prob.D
    return LogisticResult(Uc[:D], Uc[D], n_iter, converged, loss, prob.n_hess)
