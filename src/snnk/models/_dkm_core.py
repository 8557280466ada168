r"""The deep-kernel-machine computation (torch, differentiable): Gram layers on inducing
points, their propagation to data points, the KL terms and the collapsed output bound.

Notation (Yang, Robeyns, Milsom, Anson, Schoots & Aitchison, ICML 2023; the inducing-point
form of the authors' library): ``m`` inducing points ``Z``, ``t`` data points. A layer state
is the triple ``(G_ii, G_ti, g_t)``: the Gram matrix on the inducing points (``m x m``), its
cross block with the data (``t x m``) and the data diagonal (``t``). The NNGP layer map
``K(·)`` of :class:`snnk.kernels.NNGP` turns a state into kernel blocks ``(K_ii, K_ti, k_t)``;
the learned ``G_ii`` of the next layer then propagates to the data by the Gaussian
conditional

    G_ti = K_ti K_ii⁻¹ G_ii,
    g_t  = k_t − diag(K_ti K_ii⁻¹ K_it) + diag(K_ti K_ii⁻¹ G_ii K_ii⁻¹ K_it).

``G_0 = Σ¹ = σ_w²⟨x, x′⟩/d + σ_b²`` is the first affine layer of the NNGP, layer 1's prior
is ``K(G_0) = Σ²`` and the output covariance is ``K(G_L)``: ``L`` learned layers between
``L + 1`` kernel maps. With every ``G_ii = K_ii`` (``ν = ∞``) the data blocks are the exact
NNGP kernel of depth ``L + 1`` (the authors' convention: a DKM of ``L`` layers is a deep GP
of ``L`` hidden layers, whose NNGP limit has ``L + 1`` nonlinearities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from snnk._utils.threads import single_thread_if
from snnk.kernels import NNGP

__all__ = [
    "LayerState",
    "OutputTerms",
    "gaussian_kl",
    "gram_from_param",
    "objective",
    "output_terms",
    "param_from_gram",
    "propagate",
    "small_matrix_threads",
]

#: relative jitter added to every kernel matrix on the inducing points
JITTER = 1e-6
#: smallest jitter (absolute, in units of the standardised data): a kernel that vanishes
#: (one training row, a zero bias variance) stays factorable
JITTER_FLOOR = 1e-12


@dataclass
class LayerState:
    """Kernel blocks ``(K_ii, K_ti, k_t)`` (or Gram blocks ``(G_ii, G_ti, g_t)``)."""

    ii: torch.Tensor
    ti: torch.Tensor
    t: torch.Tensor


def small_matrix_threads(m: int, limit: int = 768):
    """One intra-op thread while the matrices are small (``m ≤ limit``): the many small
    Cholesky / elementwise calls of a DKM step are latency-bound (see
    :func:`snnk._utils.threads.single_thread_if`)."""
    return single_thread_if(m <= limit)


def gram_from_param(V: torch.Tensor) -> torch.Tensor:
    """``G = L Lᵀ`` with ``L = tril(V, -1) + diag(exp(diag V))`` (positive definite)."""
    L = torch.tril(V, -1) + torch.diag_embed(torch.exp(torch.diagonal(V, dim1=-2, dim2=-1)))
    return L @ L.mT


def param_from_gram(G: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`gram_from_param` (through the Cholesky factor of ``G``)."""
    L = torch.linalg.cholesky(G)
    return torch.tril(L, -1) + torch.diag_embed(torch.log(torch.diagonal(L, dim1=-2, dim2=-1)))


def _jittered(K: torch.Tensor) -> torch.Tensor:
    m = K.shape[-1]
    scale = torch.diagonal(K, dim1=-2, dim2=-1).mean()
    return K + (JITTER * scale + JITTER_FLOOR) * torch.eye(m, dtype=K.dtype, device=K.device)


def gaussian_kl(G: torch.Tensor, K: torch.Tensor, *, jitter: bool = True) -> torch.Tensor:
    r"""``KL(N(0, G) ‖ N(0, K)) = ½ [tr(K⁻¹G) − log det(K⁻¹G) − m]`` for ``m x m`` ``G, K``
    (``K`` with the relative jitter :data:`JITTER` unless ``jitter=False``)."""
    LK = torch.linalg.cholesky(_jittered(K) if jitter else K)
    LG = torch.linalg.cholesky(G)
    A = torch.linalg.solve_triangular(LK, LG, upper=False)
    logdet = 2.0 * (
        torch.log(torch.diagonal(LG, dim1=-2, dim2=-1)).sum()
        - torch.log(torch.diagonal(LK, dim1=-2, dim2=-1)).sum()
    )
    return 0.5 * (A.square().sum() - logdet - G.shape[-1])


def input_state(kernel: NNGP, Z: torch.Tensor, X: torch.Tensor) -> LayerState:
    """The first affine layer ``σ_w²⟨x, x′⟩/d + σ_b²`` on inducing and data points."""
    _, _, Kii = kernel.input_layer(Z, Z)
    _, _, Kti = kernel.input_layer(X, Z)
    kt = X.square().sum(-1) * (kernel.weight_variance / X.shape[-1]) + kernel.bias_variance
    return LayerState(Kii, Kti, kt)


def kernel_map(kernel: NNGP, G: LayerState) -> LayerState:
    """``K(G)``: one NNGP layer ``σ_w² E[φφ] + σ_b²`` on every block of a Gram state."""
    dii = torch.diagonal(G.ii, dim1=-2, dim2=-1)
    k11, _, Kii, _ = kernel.layer(dii.unsqueeze(-1), dii.unsqueeze(-2), G.ii, derivative=False)
    # the diagonal from the exact x = x′ formula (no angle)
    Kii = (
        Kii
        - torch.diag_embed(torch.diagonal(Kii, dim1=-2, dim2=-1))
        + torch.diag_embed(k11[..., 0])
    )
    kt, _, Kti, _ = kernel.layer(G.t.unsqueeze(-1), dii.unsqueeze(-2), G.ti, derivative=False)
    return LayerState(Kii, Kti, kt[..., 0])


def condition(K: LayerState, Gii: torch.Tensor) -> LayerState:
    """Propagate a learned ``G_ii`` to the data points by the Gaussian conditional."""
    LK = torch.linalg.cholesky(_jittered(K.ii))
    A = torch.cholesky_solve(K.ti.mT, LK).mT  # K_ti K_ii⁻¹, (t, m)
    Gti = A @ Gii
    gt = K.t - (A * K.ti).sum(-1) + (Gti * A).sum(-1)
    return LayerState(Gii, Gti, gt.clamp_min(0.0))


def propagate(
    kernel: NNGP, Z: torch.Tensor, X: torch.Tensor, grams: list[torch.Tensor] | None
) -> tuple[LayerState, list[torch.Tensor], list[torch.Tensor]]:
    """Run the layers: ``(output kernel blocks, priors K_ii per layer, Grams G_ii per layer)``.

    ``kernel.depth - 1`` learned layers sit between the first NNGP layer (whose prior is
    ``K(Σ¹)``, full rank) and the output ``K(G_L)``; ``grams=None`` takes every ``G_ii`` at
    its prior ``K_ii`` (``ν = ∞``: the NNGP of ``kernel.depth`` hidden layers).
    """
    K = kernel_map(kernel, input_state(kernel, Z, X))
    priors, used = [], []
    for layer in range(kernel.depth - 1):
        priors.append(K.ii)
        if grams is None:
            G = K
        else:
            G = condition(K, grams[layer])
        used.append(G.ii)
        K = kernel_map(kernel, G)
    return K, priors, used


def objective(
    kernel: NNGP,
    Z: torch.Tensor,
    X: torch.Tensor,
    Y: torch.Tensor,
    grams: list[torch.Tensor] | None,
    noise: torch.Tensor,
    nu: float,
    scale_prior: tuple[float, float] | None = None,
):
    """``(L, terms, kls, grams used)``: the DKM objective ``bound − ν Σ_ℓ KL_ℓ`` on data
    ``(X, Y)`` with inducing points ``Z`` (``grams=None``: ``ν = ∞``, no KL)."""
    K, priors, used = propagate(kernel, Z, X, grams)
    terms = output_terms(K, Y, noise, scale_prior)
    if not grams:
        return terms.fit, terms, [], used
    kls = [gaussian_kl(G, P) for G, P in zip(used, priors, strict=True)]
    return terms.fit - nu * torch.stack(kls).sum(), terms, kls, used


@dataclass
class OutputTerms:
    """The collapsed (Titsias) output layer on ``t`` training points.

    ``fit``: ``log N(y; 0, Q + s I) − tr(K_tt − Q)/(2s)`` summed over outputs (Gaussian), or
    the Student-t log marginal of ``Q + s I`` plus the same trace term; ``quad``: ``yᵀ(Q + s
    I)⁻¹y`` per output; and the pieces prediction needs.
    """

    fit: torch.Tensor
    quad: torch.Tensor
    LK: torch.Tensor
    LB: torch.Tensor
    c: torch.Tensor


def output_terms(
    K: LayerState,
    y: torch.Tensor,
    noise: torch.Tensor,
    scale_prior: tuple[float, float] | None = None,
) -> OutputTerms:
    r"""Collapsed bound of the output GP ``f ~ N(0, K)``, ``y = f + N(0, s)`` (``y``: ``(t, c)``).

    With ``A = L⁻¹K_it/√s`` (``L Lᵀ = K_ii``), ``B = I + AAᵀ = L_B L_Bᵀ`` and
    ``c = L_B⁻¹ A y/√s``: ``log|Q + sI| = 2Σ log diag L_B + t log s``,
    ``yᵀ(Q + sI)⁻¹y = yᵀy/s − cᵀc``. With every data point an inducing point it is the exact
    log marginal likelihood of the GP with covariance ``K_tt``.
    """
    from snnk.solvers.student_t import student_t_log_marginal

    t, m = K.ti.shape
    LK = torch.linalg.cholesky(_jittered(K.ii))
    sq = torch.sqrt(noise)
    A = torch.linalg.solve_triangular(LK, K.ti.mT, upper=False) / sq  # (m, t)
    B = A @ A.mT + torch.eye(m, dtype=A.dtype, device=A.device)
    LB = torch.linalg.cholesky(B)
    c = torch.linalg.solve_triangular(LB, A @ y, upper=False) / sq  # (m, k)
    logdet = 2.0 * torch.log(torch.diagonal(LB)).sum() + t * torch.log(noise)
    quad = y.square().sum(0) / noise - c.square().sum(0)  # (k,)
    trace = (K.t.sum() - noise * A.square().sum()).clamp_min(0.0) / (2.0 * noise)
    if scale_prior is None:
        ll = -0.5 * (t * math.log(2.0 * math.pi) + logdet + quad)
    else:
        ll = student_t_log_marginal(quad, logdet, t, *scale_prior)
    fit = ll.sum() - y.shape[1] * trace
    return OutputTerms(fit, quad, LK, LB, c)


def posterior(terms: OutputTerms, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, M)`` with test mean ``K_*i W`` and latent variance ``k_* − diag(K_*i M K_i*)``
    (``M = K_ii⁻¹ − (K_ii + K_it K_ti/s)⁻¹``)."""
    LK, LB = terms.LK, terms.LB
    m = LK.shape[0]
    eye = torch.eye(m, dtype=LK.dtype, device=LK.device)
    Linv = torch.linalg.solve_triangular(LK, eye, upper=False)
    # mean = (LB⁻¹ L⁻¹ K_i*)ᵀ c  ⇒  W = L⁻ᵀ LB⁻ᵀ c
    W = Linv.mT @ torch.linalg.solve_triangular(LB.mT, terms.c, upper=True)
    # var = k − ‖L⁻¹k_i‖² + ‖LB⁻¹L⁻¹k_i‖²  ⇒  M = L⁻ᵀ (I − B⁻¹) L⁻¹
    Binv = torch.cholesky_inverse(LB)
    M = Linv.mT @ (eye - Binv) @ Linv
    del noise
    return W, 0.5 * (M + M.mT)
