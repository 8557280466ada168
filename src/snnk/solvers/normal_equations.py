"""Least squares on features through streaming normal equations.

Everything here works from the sufficient statistics of one pass over the data in row blocks
(``FᵀWF``, ``FᵀWY``, ``YᵀWY``, ``Σw``, ``FᵀW1``, ``YᵀW1``), so that ``F`` (n x D) is never
held in memory: the same code serves a tensor, a chunked file or a stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from snnk._utils import crossprod


class NormalEquations:
    """Accumulate weighted, centred normal equations of ``Y ≈ F U + 1 cᵀ`` in float64.

    Call :meth:`update` on row blocks, then :meth:`solve` or :meth:`solve_gcv`. The intercept
    ``c`` is never penalised: it is eliminated by centring with the weighted means.
    """

    def __init__(self, num_features: int, num_outputs: int, device=None):
        dd = {"dtype": torch.float64, "device": device}
        self._gram = torch.zeros(num_features, num_features, **dd)  # lower triangle only
        self.FtY = torch.zeros(num_features, num_outputs, **dd)
        self.YtY = torch.zeros(num_outputs, **dd)
        self.Fsum = torch.zeros(num_features, **dd)
        self.Ysum = torch.zeros(num_outputs, **dd)
        self.wsum = 0.0
        self.n = 0

    def update(self, F: torch.Tensor, Y: torch.Tensor, sample_weight: torch.Tensor | None = None):
        """Add a block of rows ``F`` (b, D) with targets ``Y`` (b, o) and weights (b,).

        The block's products are formed in ``F``'s dtype (a float32 GEMM runs at twice the
        speed; its round-off over one block of b rows is about ``√b · 6e-8``) and added to
        float64 accumulators, so errors do not grow with the number of blocks.
        """
        dt = F.dtype if F.dtype in (torch.float32, torch.float64) else torch.float32
        F, Y = F.to(dt), Y.to(dt)
        if sample_weight is None:
            Fw, Yw = F, Y
            wsum = float(F.shape[0])
        else:
            w = sample_weight.to(dt)
            Fw, Yw = F * w[:, None], Y * w[:, None]
            wsum = float(sample_weight.double().sum())
        _add_lower_gram(self._gram, Fw, F)
        self.FtY += crossprod(Fw, Y).double()
        self.YtY += (Yw * Y).double().sum(0)
        self.Fsum += Fw.double().sum(0)
        self.Ysum += Yw.double().sum(0)
        self.wsum += wsum
        self.n += F.shape[0]
        return self

    def merge(self, other: NormalEquations) -> NormalEquations:
        """Add another accumulator's statistics (same ``D`` and outputs): the reduction step
        of a chunked or distributed fit. Returns ``self``."""
        if other._gram.shape != self._gram.shape or other.FtY.shape != self.FtY.shape:
            raise ValueError(
                f"cannot merge normal equations of {tuple(other.FtY.shape)} (features, outputs) "
                f"into {tuple(self.FtY.shape)}: the chunks were fitted with different widths"
            )
        self._gram += other._gram.to(self._gram.device)
        for name in ("FtY", "YtY", "Fsum", "Ysum"):
            getattr(self, name).add_(getattr(other, name).to(self._gram.device))
        self.wsum += other.wsum
        self.n += other.n
        return self

    def add_outputs(self, k: int) -> NormalEquations:
        """Append ``k`` zero output columns (a class first seen in a later chunk)."""
        dd = {"dtype": torch.float64, "device": self._gram.device}
        self.FtY = torch.cat([self.FtY, torch.zeros(self.FtY.shape[0], k, **dd)], 1)
        self.YtY = torch.cat([self.YtY, torch.zeros(k, **dd)])
        self.Ysum = torch.cat([self.Ysum, torch.zeros(k, **dd)])
        return self

    def copy(self) -> NormalEquations:
        """An independent copy (so a failed update can leave the original untouched)."""
        new = NormalEquations.__new__(NormalEquations)
        for name in ("_gram", "FtY", "YtY", "Fsum", "Ysum"):
            setattr(new, name, getattr(self, name).clone())
        new.wsum, new.n = self.wsum, self.n
        return new

    @property
    def FtF(self) -> torch.Tensor:
        """The accumulated ``FᵀWF`` (float64, symmetric)."""
        return torch.tril(self._gram) + torch.tril(self._gram, -1).T

    def centred(self, fit_intercept: bool = True):
        """``(A, B, yy)``: centred ``FᵀWF``, ``FᵀWY`` and ``diag(YᵀWY)``."""
        if self.wsum <= 0:
            raise ValueError("no rows (or only zero weights) were accumulated")
        if not fit_intercept:
            return self.FtF, self.FtY, self.YtY
        fm, ym = self.Fsum / self.wsum, self.Ysum / self.wsum
        A = self.FtF - self.wsum * torch.outer(fm, fm)
        B = self.FtY - self.wsum * torch.outer(fm, ym)
        yy = self.YtY - self.wsum * ym.square()
        return 0.5 * (A + A.T), B, yy

    def intercept(self, U: torch.Tensor, fit_intercept: bool = True) -> torch.Tensor:
        if not fit_intercept:
            return torch.zeros(U.shape[1], dtype=U.dtype, device=U.device)
        return self.Ysum / self.wsum - (self.Fsum / self.wsum) @ U

    def solve(self, alpha: float, fit_intercept: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge solution ``U = (A + αI)^{-1} B`` and intercept (pseudo-inverse when α = 0
        and ``A`` is rank deficient)."""
        A, B, _ = self.centred(fit_intercept)
        U = solve_spd(A, B, alpha)
        return U, self.intercept(U, fit_intercept)

    def solve_gcv(
        self, alphas=None, fit_intercept: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
        """Ridge with ``α`` chosen by generalised cross-validation from one eigendecomposition.

        ``GCV(α) = (RSS(α)/n) / (1 − tr H(α)/n)²`` with ``tr H = Σ λ_i/(λ_i + α)`` (+1 for the
        intercept) and ``RSS(α) = yᵀy − Σ_i b_i² (λ_i + 2α)/(λ_i + α)²``, ``b = VᵀB``: all
        from the accumulated statistics. With sample weights, RSS is weighted and ``n = Σw``
        (a weight acts like repeating the row).

        Returns ``(U, intercept, alpha, gcv_scores)``.
        """
        A, B, yy = self.centred(fit_intercept)
        evals, V = torch.linalg.eigh(A)
        evals = evals.clamp_min(0.0)
        if alphas is None:
            scale = max(float(evals.mean()), 1e-300)
            alphas = scale * torch.logspace(-5, 2, 29, dtype=torch.float64)
        alphas = torch.as_tensor(alphas, dtype=torch.float64, device=A.device).reshape(-1)
        if (alphas <= 0).any():
            raise ValueError("GCV needs positive alphas")
        b2 = (V.T @ B).square()  # (D, o)
        n = self.wsum  # effective sample size: a weight counts like repeated rows
        lam = evals[:, None]
        scores = []
        for a in alphas:
            rss = (yy - ((lam + 2 * a) / (lam + a).square() * b2).sum(0)).clamp_min(0.0).sum()
            dof = float((evals / (evals + a)).sum()) + int(fit_intercept)
            denom = max(1.0 - dof / n, 1e-12)
            scores.append(float(rss) / n / denom**2)
        scores_t = torch.tensor(scores, dtype=torch.float64)
        best = int(torch.argmin(scores_t))
        a = float(alphas[best])
        U = V @ ((V.T @ B) / (evals[:, None] + a))
        return U, self.intercept(U, fit_intercept), a, scores_t


#: column-block size of the lower-triangle Gram update
_GRAM_BLOCK = 256


def _add_lower_gram(acc: torch.Tensor, Fw: torch.Tensor, F: torch.Tensor) -> None:
    """``acc += tril(Fwᵀ F)`` by column blocks: a symmetric Gram needs only its lower
    block triangle, about half the flops of ``Fwᵀ F`` when ``D`` spans many blocks."""
    D = F.shape[1]
    if D <= 2 * _GRAM_BLOCK:
        acc += (Fw.T @ F).double()
        return
    for i in range(0, D, _GRAM_BLOCK):
        ie = min(D, i + _GRAM_BLOCK)
        acc[i:ie, :ie] += (Fw[:, i:ie].T @ F[:, :ie]).double()


class SPDSolver:
    """Factor ``A + αI`` (symmetric positive semi-definite ``A``) once; solve many times.

    Cholesky first; if it fails (numerically singular), a small diagonal jitter is tried
    (up to ``1e-10·mean(diag A)``, far below any statistical effect) when ``α > 0``;
    otherwise, or if that fails too, the minimum-norm solution from the pseudo-inverse
    (eigenvalues below ``rcond·λ_max`` dropped). ``method`` says which one was used.
    """

    def __init__(self, A: torch.Tensor, alpha: float = 0.0, rcond: float | None = None):
        D = A.shape[0]
        eye = torch.eye(D, dtype=A.dtype, device=A.device)
        M = A + alpha * eye if alpha else A
        L, info = torch.linalg.cholesky_ex(M)
        self.method = "cholesky"
        if int(info) == 0 and _well_conditioned(L):
            self._L = L
            return
        base = max(float(torch.diagonal(A).mean()), 1e-300)
        if alpha > 0:
            for jitter in (1e-14, 1e-12, 1e-10):
                L, info = torch.linalg.cholesky_ex(M + jitter * base * eye)
                if int(info) == 0:
                    self._L, self.method = L, "cholesky+jitter"
                    return
        evals, V = torch.linalg.eigh(M)
        rcond = D * torch.finfo(A.dtype).eps if rcond is None else rcond
        keep = evals > rcond * evals.max().clamp_min(0)
        self._L, self.method = None, "pinv"
        self._V = V
        self._inv = torch.where(keep, 1.0 / evals.clamp_min(torch.finfo(A.dtype).tiny), 0.0)

    def __call__(self, B: torch.Tensor) -> torch.Tensor:
        if self._L is not None:
            return cholesky_solve(self._L, B)
        return self._V @ (self._inv[:, None] * (self._V.T @ B))


def cholesky_solve(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``(L Lᵀ)⁻¹ B`` by two triangular solves (the same values as ``torch.cholesky_solve``,
    which is 2-8x slower on CPU for a 2,000-4,000 factor and 1-500 right-hand sides)."""
    return torch.linalg.solve_triangular(
        L.mT, torch.linalg.solve_triangular(L, B, upper=False), upper=True
    )


def solve_spd(A: torch.Tensor, B: torch.Tensor, alpha: float = 0.0, rcond: float | None = None):
    """Solve ``(A + αI) X = B`` for symmetric positive semi-definite ``A`` (see
    :class:`SPDSolver`)."""
    return SPDSolver(A, alpha, rcond)(B)


def _well_conditioned(L: torch.Tensor) -> bool:
    d = torch.diagonal(L).abs()
    return bool(d.min() > 0) and float((d.max() / d.min()) ** 2) < 1.0 / (
        100 * torch.finfo(L.dtype).eps
    )


@dataclass
class LogisticResult:
    """Solution of :func:`multinomial_logistic`."""

    coef: torch.Tensor  # (D, K)
    intercept: torch.Tensor  # (K,)
    n_iter: int
    converged: bool
    loss: float


def multinomial_logistic(
    features_fn,
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
    D, K = gram.shape[0], Y.shape[1]
    dev = gram.device
    w = (
        torch.ones(Y.shape[0], dtype=torch.float64, device=dev)
        if sample_weight is None
        else sample_weight.to(torch.float64)
    )
    G = torch.zeros(D + 1, D + 1, dtype=torch.float64, device=dev)
    G[:D, :D], G[:D, D], G[D, :D], G[D, D] = gram, Fsum, Fsum, float(w.sum())
    reg = torch.full((D + 1, 1), float(alpha), dtype=torch.float64, device=dev)
    reg[D] = 0.0
    if not fit_intercept:  # pin the intercept at 0: decouple its row, never move it
        G[:D, D] = G[D, :D] = 0.0
        G[D, D] = 1.0
    P = torch.eye(K, dtype=torch.float64, device=dev) - 1.0 / K
    G = 0.5 * (G + G.T)
    mask = torch.ones(D + 1, 1, dtype=torch.float64, device=dev)
    if not fit_intercept:
        mask[D] = 0.0
    # softmax probabilities of the current iterate, kept per block for the Hessian-vector
    # products of one Newton step when they are small (n·K <= 2^24 numbers)
    keep_probs = Y.shape[0] * K <= 1 << 24

    def project(V):
        return (V @ P) * mask

    def loss_grad(Uc, want_grad=True):
        total, curv = 0.0, 0.0
        grad = torch.zeros_like(Uc) if want_grad else None
        probs = [] if want_grad and keep_probs else None
        for F, rows in features_fn():
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
        total += 0.5 * alpha * float(Uc[:D].square().sum())
        if want_grad:
            grad += reg * Uc
        return total, grad, curv, probs

    def hess_vec(Uc, V, probs):
        out = torch.zeros_like(V)
        for i, (F, rows) in enumerate(features_fn()):
            F = F.to(torch.float64)
            p = probs[i] if probs is not None else torch.softmax(F @ Uc[:D] + Uc[D], dim=1)
            z = F @ V[:D] + V[D]
            jz = w[rows][:, None] * (p * z - p * (p * z).sum(1, keepdim=True))
            out[:D] += crossprod(F, jz)
            out[D] += jz.sum(0)
        return project(out + reg * V)

    Uc = torch.zeros(D + 1, K, dtype=torch.float64, device=dev)
    loss, grad, curv, probs = loss_grad(Uc)
    g0 = max(float(project(grad).abs().max()), 1e-300)
    wtot = max(float(w.sum()), 1e-300)
    converged, n_iter = False, 0
    while n_iter < max_iter:
        g = project(grad)
        if float(g.abs().max()) <= tol * max(1.0, g0):
            converged = True
            break
        n_iter += 1
        # Preconditioner c·[F 1]ᵀW[F 1] + diag(α) on the class-centred subspace, with c the
        # mean curvature Σ w p(1 − p) / (K Σ w) of the current iterate: the Hessian's
        # ``diag(p) − ppᵀ`` weights replaced by their average (at the uniform start it is
        # the exact Hessian; Böhning's fixed bound ½ overestimates it K/2 times there).
        c = max(curv / (K * wtot), 1e-6)
        precond = SPDSolver(c * G + torch.diag(reg[:, 0]))
        # Preconditioned CG on H s = -g.
        s = torch.zeros_like(g)
        r = -g
        z = project(precond(r))
        d = z.clone()
        rz = float((r * z).sum())
        gnorm = float(g.square().sum().sqrt())
        for _ in range(max_cg):
            Hd = hess_vec(Uc, d, probs)
            dHd = float((d * Hd).sum())
            if dHd <= 0:
                break
            a = rz / dHd
            s += a * d
            r -= a * Hd
            if float(r.square().sum().sqrt()) <= 0.1 * min(0.5, gnorm**0.5) * gnorm:
                break
            z = project(precond(r))
            rz_new = float((r * z).sum())
            d = z + (rz_new / rz) * d
            rz = rz_new
        # Backtracking (Armijo) line search.
        slope = float((g * s).sum())
        if -slope <= 1e-15 * max(1.0, abs(loss)):  # Newton decrement at round-off level
            converged = True
            break
        step = 1.0
        while True:
            new_loss = loss_grad(Uc + step * s, want_grad=False)[0]
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-8:
                break
            step *= 0.5
        Uc = Uc + step * s
        loss, grad, curv, probs = loss_grad(Uc)
    return LogisticResult(Uc[:D], Uc[D], n_iter, converged, loss)
