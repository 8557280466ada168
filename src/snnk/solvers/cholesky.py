r"""Cholesky factorisations: one jitter policy, SPD solves, symmetric Gram updates.

Every Cholesky factorisation of a matrix that may be numerically singular goes through
:func:`jittered_cholesky`, so that the whole library follows one policy: the jitter is
relative to the mean diagonal, escalates by a fixed factor, warns (naming the matrix) when
more than round-off was needed, and fails with an error that says what to change.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from snnk._utils.threads import single_thread_if

__all__ = [
    "JitterWarning",
    "SPDSolver",
    "add_lower_gram",
    "cholesky_solve",
    "jittered_cholesky",
    "lower_gram",
    "solve_spd",
    "symmetric_eigh",
    "symmetric_from_lower",
]

#: factor by which the jitter grows from one attempt to the next
JITTER_GROWTH = 100.0
#: largest jitter (relative to the mean diagonal) tried by default before giving up
MAX_JITTER = 1e-2
#: column-block size of the lower-triangle Gram update
_GRAM_BLOCK = 256


class JitterWarning(RuntimeWarning):
    """A Cholesky factorisation needed a diagonal jitter above round-off level."""


def _factor_dtype(dtype: torch.dtype, upcast: bool) -> torch.dtype:
    if dtype == torch.float64:
        return dtype
    return torch.float64 if upcast else (dtype if dtype == torch.float32 else torch.float32)


def jittered_cholesky(
    A: torch.Tensor,
    *,
    name: str = "A",
    jitter: float | str = 0.0,
    max_jitter: float = MAX_JITTER,
    warn: bool = True,
    upcast: bool = True,
    hint: str = "",
) -> torch.Tensor:
    r"""Lower Cholesky factor ``L`` of ``A + ε s I`` for the smallest ``ε`` of one ladder.

    ``A`` is symmetric positive (semi-)definite of shape ``(..., n, n)`` and
    ``s = mean |diag A|`` sets the scale. The ladder is

    .. math:: ε ∈ \{ε_0,\; \max(ε_0, ε_r),\; 100 \max(ε_0, ε_r),\; 10^4 \max(ε_0, ε_r), …\}
              \quad (ε ≤ \text{max\_jitter}),

    with ``ε_0 = jitter`` (``0``: the plain factorisation first; ``"roundoff"``: ``ε_r``) and
    ``ε_r = n · eps`` the round-off level of the factor's dtype (Falkon's choice for kernel
    matrices). Jitter at round-off level changes nothing beyond what rounding ``A`` already
    does and passes silently; a larger one emits a :class:`JitterWarning` naming the matrix
    (``warn=True``). When no ``ε <= max_jitter`` works, a ``numpy.linalg.LinAlgError`` names
    the matrix and the largest jitter tried.

    The factorisation runs in float64 for lower-precision inputs (``upcast=True``; float32
    otherwise); the factor is returned in that dtype. It is differentiable: the jitter is
    chosen from detached values, and gradients flow through ``A`` as through
    ``torch.linalg.cholesky``.

    Parameters
    ----------
    A : Tensor of shape ``(..., n, n)``
    name : str
        How the matrix is called in warnings and errors (``"K_CC"``, ``"ZᵀZ + λI"``).
    jitter : float or "roundoff", default 0.0
        Relative jitter always added (``ε_0``); ``0`` tries ``A`` itself first, ``"roundoff"``
        always adds ``n · eps`` (for kernel matrices of smooth kernels, which are numerically
        singular as a rule).
    max_jitter : float, default 1e-2
        Largest relative jitter tried.
    warn : bool, default True
        Warn when the jitter used exceeds ``max(jitter, n · eps)``.
    upcast : bool, default True
        Factor float32 / half inputs in float64.
    hint : str
        Appended to the error message: what the caller can change.

    Returns
    -------
    L : Tensor of shape ``(..., n, n)``, lower triangular, ``L Lᵀ = A + ε s I``.
    """
    A = A.to(_factor_dtype(A.dtype, upcast))
    n = A.shape[-1]
    eps_r = n * torch.finfo(A.dtype).eps
    scale = max(float(torch.diagonal(A.detach(), dim1=-2, dim2=-1).abs().mean()), 1e-300)
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    if jitter == "roundoff":
        jitter = eps_r
    elif isinstance(jitter, str) or not jitter >= 0:
        raise ValueError(f"jitter must be a number >= 0 or 'roundoff', got {jitter!r}")
    quiet = max(float(jitter), eps_r)
    eps = float(jitter)
    while True:
        L, info = torch.linalg.cholesky_ex(A + (eps * scale) * eye if eps else A)
        if not bool((info != 0).any()):
            if warn and eps > quiet:
                warnings.warn(
                    f"{name} ({n} x {n}) is numerically singular: it was factored with a "
                    f"diagonal jitter of {eps:.1e} times its mean diagonal",
                    JitterWarning,
                    stacklevel=2,
                )
            return L
        nxt = quiet if eps < quiet else eps * JITTER_GROWTH
        if nxt > max_jitter:
            break
        eps = nxt
    raise np.linalg.LinAlgError(
        f"could not factor {name} ({n} x {n}) even with a diagonal jitter of {eps:.1e} times "
        f"its mean diagonal: it is far from positive definite" + (f"; {hint}" if hint else "")
    )


def cholesky_solve(L: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``(L Lᵀ)⁻¹ B`` by two triangular solves (the same values as ``torch.cholesky_solve``,
    which is 2-8x slower on CPU for a 2,000-4,000 factor and 1-500 right-hand sides).

    With at most 32 right-hand sides (a memory-bound sweep over ``L``) the solves run on one
    thread: with the other core of a 2-core VM busy, two threads took 0.19-0.31 s for a
    2,048 factor and 10 columns, one thread 0.02-0.03 s."""
    few = L.device.type == "cpu" and (B.ndim < 2 or B.shape[-1] <= 32)
    with single_thread_if(few):
        return torch.linalg.solve_triangular(
            L.mT, torch.linalg.solve_triangular(L, B, upper=False), upper=True
        )


def symmetric_from_lower(G: torch.Tensor, block: int = _GRAM_BLOCK) -> torch.Tensor:
    """``tril(G) + tril(G, -1)ᵀ`` (the lower triangle mirrored), the same values, copied in
    ``block x block`` tiles: a transposed add over a whole 2,048 x 2,048 float64 matrix reads
    it with a stride of a row per element (0.1-0.3 s on this VM; the tiles stay in cache)."""
    D = G.shape[0]
    out = torch.empty_like(G)
    for i in range(0, D, block):
        ie = min(D, i + block)
        d = G[i:ie, i:ie]
        out[i:ie, i:ie] = torch.tril(d) + torch.tril(d, -1).T
        if ie < D:
            low = G[ie:, i:ie]
            out[ie:, i:ie] = low
            out[i:ie, ie:] = low.T
    return out


def lower_gram(L: torch.Tensor) -> torch.Tensor:
    """``LᵀL`` for lower-triangular ``L`` of shape ``(n, n)`` (LAPACK ``lauum`` on CPU, a third
    of a GEMM's flops).

    On CPU only the lower triangle of the result is filled, which is all a Cholesky reads;
    elsewhere the full product is returned.
    """
    if L.device.type == "cpu" and L.dtype in (torch.float32, torch.float64):
        from scipy.linalg import lapack

        lauum = lapack.dlauum if L.dtype == torch.float64 else lapack.slauum
        out, info = lauum(L.numpy(), lower=1)
        if info == 0:
            return torch.from_numpy(out)
    return L.T @ L


def add_lower_gram(acc: torch.Tensor, Fw: torch.Tensor, F: torch.Tensor) -> None:
    """``acc += tril(Fwᵀ F)`` in place, by column blocks of 256.

    ``Fw`` and ``F`` have shape ``(b, D)``; ``acc`` is ``(D, D)`` (float64). A symmetric Gram
    needs only its lower block triangle, about half the flops of ``Fwᵀ F`` when ``D`` spans
    many blocks. For ``D <= 512`` the whole product is added (both triangles); callers read
    the lower triangle only (``tril(acc) + tril(acc, -1)ᵀ``).
    """
    D = F.shape[1]
    if D <= 2 * _GRAM_BLOCK:
        acc += (Fw.T @ F).double()
        return
    for i in range(0, D, _GRAM_BLOCK):
        ie = min(D, i + _GRAM_BLOCK)
        acc[i:ie, :ie] += (Fw[:, i:ie].T @ F[:, :ie]).double()


#: up to this size a CPU eigendecomposition runs on one thread (see :func:`symmetric_eigh`)
EIGH_ONE_THREAD_MAX = 256


def symmetric_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh(A)``, on one intra-op thread for a CPU matrix of size up to
    :data:`EIGH_ONE_THREAD_MAX`.

    The divide-and-conquer eigensolver synchronises its threads many times, and on a shared
    machine a descheduled thread stalls each barrier: a 2,049 x 2,049 float64 ``eigh`` took
    13-23 s on two threads with the other core busy against 1.8-1.9 s on one (0.66 s on two
    idle cores; torch 2.13, MKL, 2-core VM). Larger matrices keep every thread: on an idle
    machine (the common case) one thread costs 2.7x at 2,049 (GCV of a 2,048-feature ridge fit:
    2.24 s against 1.61 s), while small ones gain from one thread on any machine. The values do
    not depend on the thread count.
    """
    with single_thread_if(A.device.type == "cpu" and A.shape[-1] <= EIGH_ONE_THREAD_MAX):
        return torch.linalg.eigh(A)


def _well_conditioned(L: torch.Tensor) -> bool:
    d = torch.diagonal(L).abs()
    return bool(d.min() > 0) and float((d.max() / d.min()) ** 2) < 1.0 / (
        100 * torch.finfo(L.dtype).eps
    )


class SPDSolver:
    """Factor ``A + αI`` (symmetric positive semi-definite ``A``, ``(D, D)``) once; solve many
    times.

    Cholesky first, kept when its condition estimate ``(max L_ii / min L_ii)²`` is below
    ``1 / (100 eps)``. Otherwise, when ``α > 0``, :func:`jittered_cholesky` with a jitter of at
    most ``1e-10`` (far below any statistical effect; silent); otherwise, or if that fails too,
    the minimum-norm solution from the pseudo-inverse (eigenvalues below ``rcond · λ_max``
    dropped). ``method`` says which one was used: ``"cholesky"``, ``"cholesky+jitter"`` or
    ``"pinv"``.
    """

    def __init__(self, A: torch.Tensor, alpha: float = 0.0, rcond: float | None = None):
        D = A.shape[0]
        M = A
        if alpha:
            M = A.clone()
            M.diagonal().add_(alpha)
        L, info = torch.linalg.cholesky_ex(M)
        self.method = "cholesky"
        if int(info) == 0 and _well_conditioned(L):
            self._L = L
            return
        if alpha > 0:
            try:
                self._L = jittered_cholesky(
                    M, name="A + αI", jitter=1e-14, max_jitter=1e-10, warn=False, upcast=False
                )
                self.method = "cholesky+jitter"
                return
            except np.linalg.LinAlgError:
                pass
        evals, V = torch.linalg.eigh(M)
        rcond = D * torch.finfo(A.dtype).eps if rcond is None else rcond
        keep = evals > rcond * evals.max().clamp_min(0)
        self._L, self.method = None, "pinv"
        self._V = V
        self._inv = torch.where(keep, 1.0 / evals.clamp_min(torch.finfo(A.dtype).tiny), 0.0)

    def __call__(self, B: torch.Tensor) -> torch.Tensor:
        """``(A + αI)⁻¹ B`` (or the pseudo-inverse's product) for ``B`` of shape ``(D, k)``."""
        if self._L is not None:
            return cholesky_solve(self._L, B)
        return self._V @ (self._inv[:, None] * (self._V.T @ B))


def solve_spd(A: torch.Tensor, B: torch.Tensor, alpha: float = 0.0, rcond: float | None = None):
    """Solve ``(A + αI) X = B`` for symmetric positive semi-definite ``A`` (see
    :class:`SPDSolver`)."""
    return SPDSolver(A, alpha, rcond)(B)
