r"""Exact samplers of finite determinantal point processes (DPPs).

A DPP on ``{0, …, N−1}`` with *marginal* (correlation) kernel ``K`` draws a random set ``S``
with ``P(A ⊆ S) = det K_A``; an *L-ensemble* has ``P(S = A) ∝ det L_A``, i.e. marginal kernel
``K = L (L + I)⁻¹``; a *k-DPP* is an L-ensemble conditioned on ``|S| = k``.

Every sampler reduces to a **projection DPP**, ``K = U Uᵀ`` with ``U`` of shape ``(N, r)`` and
orthonormal columns, which always has exactly ``r`` points and is drawn by the chain rule of
Hough, Krishnapur, Peres & Virág (2006) written as Gram–Schmidt on the rows of ``U``:

.. math:: P(x_t = i \mid x_1..x_{t−1}) = \frac{‖U_i‖² − ‖P_{t−1} U_i‖²}{r − t + 1},

where ``P_{t−1}`` projects on the span of ``U_{x_1}, …, U_{x_{t−1}}``. The residuals are
updated in place (one ``N × r`` product per step, ``O(N r²)`` per sample), **clamped at 0 and
renormalised** at each step so that round-off never yields negative probabilities (the
failure of DPPy's issues #61/#70), and a chosen item's residual is set to exactly 0, so a
sample always has ``r`` distinct items. ``num_samples`` chains run as one batch.

The k-DPP first picks ``k`` eigenvectors of ``L`` with probabilities given by the elementary
symmetric polynomials ``e_l(λ_1..λ_n)``, computed in **log space**
(``log e_l^n = logaddexp(log e_l^{n−1}, log λ_n + log e_{l−1}^{n−1})``) so that
``e_200`` of eigenvalues in ``[1e−12, 1]`` (about ``1e−590``) is representable (DPPy #80);
the table is cached per ``k``, so one :class:`FiniteDPP` serves any sequence of ``k``.

All arithmetic is float64; randomness comes only from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from snnk.sampling._checks import (
    F64,
    as_generator,
    as_matrix,
    as_square,
    check_count,
    check_eigenvalues_finite,
    input_eps,
    threads_for,
    uniforms,
)

EPS64 = torch.finfo(F64).eps

__all__ = [
    "FiniteDPP",
    "log_elementary_symmetric_polynomials",
    "orthonormal_basis",
    "projection_dpp",
    "sample_dpp",
    "sample_k_dpp",
]


def orthonormal_basis(features, *, rcond: float | None = None, return_transform: bool = False):
    r"""Orthonormal basis ``U`` (shape ``(N, r)``, float64) of the column span of ``features``.

    From the thin SVD ``Φ = U S Vᵀ``, keeping the singular values above
    ``rcond · S_max`` (default ``max(N, m) · eps``), so a rank-deficient feature matrix gives
    ``r < m`` columns. ``U Uᵀ`` is the marginal kernel of the projection DPP of ``Φ``'s span
    and ``‖U_i‖²`` are the (statistical) leverage scores of its rows. With
    ``return_transform=True`` also returns ``T`` (``(m, r)``) with ``U = Φ T``, so a function
    ``Σ_j c_j U_{·j}`` of the span is ``φ(x)ᵀ (T c)`` at any point.
    """
    phi = as_matrix(features, "features")
    if phi.shape[0] == 0 or phi.shape[1] == 0:
        raise ValueError(f"features must have rows and columns, got shape {tuple(phi.shape)}")
    scale = phi.abs().max()
    if scale == 0:
        raise ValueError("features is all zeros: its span is empty")
    U, S, Vh = torch.linalg.svd(phi / scale, full_matrices=False)
    if rcond is not None and (
        isinstance(rcond, bool)
        or not isinstance(rcond, numbers.Real)
        or not 0.0 <= float(rcond) < 1.0
    ):
        raise ValueError(f"rcond must be a number in [0, 1) (or None), got {rcond!r}")
    tol = float(rcond) if rcond is not None else max(phi.shape) * torch.finfo(F64).eps
    keep = S > tol * S[0]
    U = U[:, keep].contiguous()
    if not return_transform:
        return U
    return U, (Vh[keep].T / (S[keep] * scale)).contiguous()


def check_orthonormal(U: torch.Tensor, tol: float = 1e-6, name: str = "U") -> None:
    err = float((U.T @ U - torch.eye(U.shape[1], dtype=F64, device=U.device)).abs().max())
    if not err <= tol:
        fix = (
            "pass orthonormal_basis(U) instead, or check=False if you know better"
            if name == "U"
            else "pass the orthonormal eigenvectors of torch.linalg.eigh"
        )
        raise ValueError(
            f"{name} must have orthonormal columns (max |UᵀU − I| = {err:.1e} > {tol:g}); {fix}"
        )


def _chain(U: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Gram–Schmidt chain rule (see :func:`_chain_steps`), on one thread when the work is small."""
    with threads_for(batch * U.shape[-2] * U.shape[-1]):
        return _chain_steps(U, batch, generator)


def _chain_steps(U: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Gram–Schmidt chain rule for ``batch`` projection-DPP samples.

    ``U`` is ``(N, r)`` (one kernel for every chain) or ``(batch, N, r)`` (one per chain).
    Returns ``(batch, r)`` item indices in draw order.
    """
    shared = U.ndim == 2
    N, r = U.shape[-2], U.shape[-1]
    dev = U.device
    rows = torch.arange(batch, device=dev)
    res = U.square().sum(-1).expand(batch, N).clone() if shared else U.square().sum(-1)
    E = torch.zeros(batch, r, r, dtype=F64, device=dev)  # orthonormal directions so far
    out = torch.empty(batch, r, dtype=torch.long, device=dev)
    u = uniforms((batch, r), generator, dev)
    for t in range(r):
        res.clamp_(min=0.0)
        cum = res.cumsum(1)
        total = cum[:, -1]
        if not bool((total > 0).all()):
            raise ValueError(
                f"the projection kernel has rank {t} < r = {r} (no mass left at step {t + 1}); "
                f"orthonormalise the features with orthonormal_basis first"
            )
        j = torch.searchsorted(cum, (u[:, t] * total)[:, None]).clamp_(max=N - 1)[:, 0]
        out[:, t] = j
        v = U[j] if shared else U[rows, j]
        for _ in range(2):  # Gram–Schmidt twice: orthogonal to round-off
            if t:
                v = v - torch.einsum(
                    "btr,bt->br", E[:, :t], torch.einsum("btr,br->bt", E[:, :t], v)
                )
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
        E[:, t] = v
        if shared:  # a matrix-vector product for one chain (GEMM threads spin on small work)
            proj = torch.mv(U, v[0])[None] if batch == 1 else (U @ v.T).T
        else:
            proj = torch.bmm(U, v[:, :, None])[..., 0]
        res -= proj.square()
        res[rows, j] = 0.0
    return out


def _batch_for(batch: int, N: int, r: int, *, shared: bool) -> int:
    """Chains per batch so that the per-chain state (``r × r`` directions, ``N`` residuals,
    and an ``N × r`` kernel unless shared) stays under about 256 MiB."""
    per_chain = r * r + N + (0 if shared else N * r)
    return max(1, min(batch, (1 << 25) // max(per_chain, 1)))


def projection_dpp(
    U, num_samples: int = 1, *, generator=None, check: bool = True, batch_size: int = 32
) -> torch.Tensor:
    r"""Samples of the projection DPP with marginal kernel ``K = U Uᵀ``.

    Parameters
    ----------
    U : Tensor of shape ``(N, r)``
        Orthonormal columns (``UᵀU = I``), e.g. from :func:`orthonormal_basis`; ``r ≤ N``.
    num_samples : int, default 1
        Independent samples, drawn as batches of ``batch_size`` chains.
    generator : torch.Generator, int or None
        Source of randomness (an int seeds a new generator; ``None`` draws one from the OS).
    check : bool, default True
        Verify ``UᵀU = I`` to ``1e−6`` first (``O(N r²)``, once per call).

    Returns
    -------
    LongTensor of shape ``(num_samples, r)``: ``r`` distinct items per row, in draw order.
    Cost ``O(N r²)`` per sample; ``P(i ∈ S) = ‖U_i‖²``.
    """
    U = as_matrix(U, "U")
    num_samples = check_count(num_samples, "num_samples")
    check_count(batch_size, "batch_size")
    N, r = U.shape
    if r == 0 or N == 0:
        raise ValueError(f"U must have at least one row and one column, got shape {(N, r)}")
    if r > N:
        raise ValueError(f"U has r = {r} columns but only N = {N} rows; a projection needs r <= N")
    if check:
        check_orthonormal(U)
    gen = as_generator(generator)
    batch = _batch_for(batch_size, N, r, shared=True)
    parts = [_chain(U, min(batch, num_samples - s), gen) for s in range(0, num_samples, batch)]
    return torch.cat(parts).cpu()


def log_elementary_symmetric_polynomials(eigenvalues, k: int) -> np.ndarray:
    r"""``log e_l(λ_1..λ_n)`` for ``n = 0..N`` and ``l = 0..k`` (array ``(N + 1, k + 1)``).

    Recursion ``e_l^n = e_l^{n−1} + λ_n e_{l−1}^{n−1}`` in log space (``e_0 = 1``,
    ``e_l^n = 0`` for ``l > n``, i.e. ``−inf``); eigenvalues ``<= 0`` contribute nothing.
    Never underflows: ``log e_l`` is accurate even when ``e_l`` is ``1e−600``.
    """
    lam = torch.as_tensor(eigenvalues, dtype=F64)
    if lam.ndim > 1:
        raise ValueError(f"eigenvalues must be a vector, got shape {tuple(lam.shape)}")
    lam = np.asarray(lam.cpu(), dtype=np.float64).ravel()
    if not np.isfinite(lam).all():
        raise ValueError("eigenvalues contain NaN or Inf")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    k = int(k)
    with np.errstate(divide="ignore"):
        loglam = np.where(lam > 0, np.log(np.where(lam > 0, lam, 1.0)), -np.inf)
    table = np.full((lam.size + 1, k + 1), -np.inf)
    table[:, 0] = 0.0
    for n in range(1, lam.size + 1):
        prev = table[n - 1]
        table[n, 1:] = np.logaddexp(prev[1:], loglam[n - 1] + prev[:-1])
    return table


def _numerical_rank_mask(lam: torch.Tensor, eps: float = EPS64) -> torch.Tensor:
    """Eigenvalues above round-off (``N · eps · λ_max``); the rest are zeros of ``L``."""
    top = float(lam.max()) if lam.numel() else 0.0
    return lam > max(top, 0.0) * (lam.numel() * eps)  # not (top · N) · eps: no overflow at 1e308


class FiniteDPP:
    r"""A DPP on ``N`` items, given by its likelihood kernel ``L`` or marginal kernel ``K``.

    Parameters
    ----------
    L : Tensor of shape ``(N, N)``, optional
        Symmetric positive semi-definite likelihood kernel: ``P(S = A) = det L_A / det(L + I)``.
    K : Tensor of shape ``(N, N)``, optional
        Symmetric marginal kernel with eigenvalues in ``[0, 1]``: ``P(A ⊆ S) = det K_A``.
    eigen : (Tensor, Tensor), optional
        ``(eigenvalues (N',), eigenvectors (N, N'))`` of ``L`` (``kind="likelihood"``) or
        ``K`` (``kind="correlation"``) instead of the matrix (a low-rank ``L = V Λ Vᵀ``).
    kind : {"likelihood", "correlation"}, default "likelihood"
        What ``eigen`` decomposes.

    Notes
    -----
    The eigendecomposition is computed once (float64, ``torch.linalg.eigh``); eigenvalues at
    round-off level (``≤ N·eps·λ_max``, ``eps`` of the input's dtype: a float16 / bfloat16
    ``L`` is only known to its own precision) count as zero, and the PSD check allows
    ``−max(1e−6, 16 eps)·max|λ|``. Tables of elementary symmetric
    polynomials are cached per ``k``; any sequence of :meth:`sample_k` sizes works.
    """

    def __init__(self, L=None, *, K=None, eigen=None, kind: str = "likelihood"):
        given = [a is not None for a in (L, K, eigen)]
        # round-off of the input's own precision (float16 L = X Xᵀ has eigenvalues ~-1e-4)
        eps = input_eps(L if L is not None else K)
        psd_tol = max(1e-6, 16 * eps)
        if sum(given) != 1:
            raise ValueError("give exactly one of L, K or eigen=(eigenvalues, eigenvectors)")
        if kind not in ("likelihood", "correlation"):
            raise ValueError(f"kind must be 'likelihood' or 'correlation', got {kind!r}")
        if eigen is not None:
            lam, vec = eigen
            lam = torch.as_tensor(lam, dtype=F64).reshape(-1)
            vec = as_matrix(vec, "eigenvectors")
            if not bool(torch.isfinite(lam).all()):
                raise ValueError("eigenvalues contain NaN or Inf")
            if vec.shape[1] != lam.numel():
                raise ValueError(
                    f"{lam.numel()} eigenvalues for {vec.shape[1]} eigenvectors (columns)"
                )
            if vec.shape[1] > vec.shape[0]:
                raise ValueError(
                    f"{vec.shape[1]} eigenvectors of length {vec.shape[0]}: at most N "
                    f"orthonormal columns exist"
                )
            check_orthonormal(vec, name="eigenvectors")
        else:
            kind = "likelihood" if L is not None else "correlation"
            name = "L" if L is not None else "K"
            M = as_square(L if L is not None else K, name)
            if M.shape[0] == 0:
                raise ValueError("the kernel is empty (0 x 0); a DPP needs at least one item")
            scale = float(M.abs().max())
            if scale == 0.0:
                lam, vec = torch.zeros(M.shape[0], dtype=F64), torch.eye(M.shape[0], dtype=F64)
            else:
                lam, vec = torch.linalg.eigh(M / scale)
                lam = lam * scale
                check_eigenvalues_finite(lam, name)
        self.kind = kind
        self.num_items = vec.shape[0]
        if kind == "correlation":
            if float(lam.max()) > 1.0 + psd_tol / 100 or float(lam.min()) < -psd_tol / 100:
                raise ValueError(
                    "a marginal kernel K needs eigenvalues in [0, 1]; got "
                    f"[{float(lam.min()):.3g}, {float(lam.max()):.3g}] (pass it as L instead?)"
                )
            lam = lam.clamp(0.0, 1.0)
        elif float(lam.min()) < -psd_tol * max(float(lam.abs().max()), 1e-300):
            raise ValueError(
                "L must be positive semi-definite; its smallest eigenvalue is "
                f"{float(lam.min()):.3g}"
            )
        keep = _numerical_rank_mask(lam, eps) if kind == "likelihood" else lam > 0
        self.eigenvalues = lam[keep].contiguous()
        self.eigenvectors = vec[:, keep].contiguous()
        self._esp: dict[int, np.ndarray] = {}

    # -- properties -------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Numerical rank of the kernel (eigenvalues above round-off)."""
        return int(self.eigenvalues.numel())

    def _inclusion_eigenvalues(self) -> torch.Tensor:
        lam = self.eigenvalues
        return lam / (1.0 + lam) if self.kind == "likelihood" else lam

    @property
    def expected_size(self) -> float:
        r"""``E|S| = Σ λ_i / (1 + λ_i)`` (likelihood) or ``trace K`` (correlation)."""
        return float(self._inclusion_eigenvalues().sum())

    def marginal_kernel(self) -> torch.Tensor:
        """The ``(N, N)`` marginal kernel ``K`` (``L (L + I)⁻¹`` for an L-ensemble)."""
        V = self.eigenvectors
        return (V * self._inclusion_eigenvalues()) @ V.T

    def inclusion_probabilities(self) -> torch.Tensor:
        """``P(i ∈ S) = K_ii`` for every item, shape ``(N,)``."""
        return (self.eigenvectors.square() * self._inclusion_eigenvalues()).sum(1)

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, num_samples: int = 1, *, generator=None) -> list[torch.Tensor]:
        """``num_samples`` independent draws of the DPP: a list of LongTensors (sizes vary).

        Each eigenvector ``i`` is kept with probability ``λ_i/(1+λ_i)`` (``λ_i`` for a
        marginal kernel), then the projection DPP of the kept ones is drawn.
        """
        num_samples = check_count(num_samples, "num_samples")
        gen = as_generator(generator)
        p = self._inclusion_eigenvalues()
        keep = torch.rand(num_samples, p.numel(), generator=gen, dtype=F64) < p
        sizes = keep.sum(1)
        out: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * num_samples
        for size in sizes.unique().tolist():
            if size == 0:
                continue
            which = torch.nonzero(sizes == size)[:, 0]
            step = _batch_for(64, self.num_items, size, shared=False)
            for s in range(0, which.numel(), step):  # chains of one size run as a batch
                rows = which[s : s + step]
                sel = torch.nonzero(keep[rows])[:, 1].reshape(rows.numel(), size)
                V = self.eigenvectors[:, sel].permute(1, 0, 2).contiguous()
                for b, items in zip(rows.tolist(), _chain(V, rows.numel(), gen).cpu(), strict=True):
                    out[b] = items
        return out

    def _table(self, k: int) -> np.ndarray:
        if k not in self._esp:
            self._esp[k] = log_elementary_symmetric_polynomials(self.eigenvalues, k)
        return self._esp[k]

    def sample_k(self, k: int, num_samples: int = 1, *, generator=None) -> torch.Tensor:
        r"""``num_samples`` draws of the k-DPP, ``P(S = A) ∝ det L_A`` for ``|A| = k``.

        Returns a LongTensor of shape ``(num_samples, k)`` (distinct items per row). Needs
        ``k ≤ rank``. Cost: ``O(N k)`` once per ``k`` for the log-space table, then
        ``O(N k²)`` per sample (batched).
        """
        if self.kind != "likelihood":
            raise ValueError("a k-DPP is defined from a likelihood kernel L; build FiniteDPP(L)")
        k = check_count(k, "k")
        num_samples = check_count(num_samples, "num_samples")
        if k > self.rank:
            raise ValueError(
                f"k = {k} exceeds the numerical rank {self.rank} of L: a k-DPP needs k <= rank "
                f"(every k-subset of a lower-rank L has determinant 0)"
            )
        gen = as_generator(generator)
        table = self._table(k)
        loglam = np.log(self.eigenvalues.cpu().numpy()).tolist()
        n_eig = len(loglam)
        logu = np.log(torch.rand(num_samples, n_eig, generator=gen, dtype=F64).numpy()).tolist()
        rows = table.tolist()
        chosen = np.zeros((num_samples, n_eig), dtype=bool)
        for b in range(num_samples):  # Kulesza & Taskar (2012), Algorithm 8, in log space
            left, u = k, logu[b]
            for n in range(n_eig, 0, -1):
                if u[n - 1] < loglam[n - 1] + rows[n - 1][left - 1] - rows[n][left]:
                    chosen[b, n - 1] = True
                    left -= 1
                    if left == 0:
                        break
        sel = torch.from_numpy(np.nonzero(chosen)[1].reshape(num_samples, k))
        step = _batch_for(64, self.num_items, k, shared=False)
        parts = []
        for s in range(0, num_samples, step):  # (B, N, k) eigenvector blocks, one per chain
            V = self.eigenvectors[:, sel[s : s + step]].permute(1, 0, 2).contiguous()
            parts.append(_chain(V, V.shape[0], gen))
        return torch.cat(parts).cpu()


def sample_dpp(L, num_samples: int = 1, *, generator=None) -> list[torch.Tensor]:
    """Draws of the L-ensemble DPP of ``L`` (see :meth:`FiniteDPP.sample`)."""
    return FiniteDPP(L).sample(num_samples, generator=generator)


def sample_k_dpp(L, k: int, num_samples: int = 1, *, generator=None) -> torch.Tensor:
    """Draws of the k-DPP of ``L``, shape ``(num_samples, k)`` (see :meth:`FiniteDPP.sample_k`)."""
    return FiniteDPP(L).sample_k(k, num_samples, generator=generator)
