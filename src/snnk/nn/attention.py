r"""Kernel attention: linear-complexity attention with the call shape of SDPA.

Every method writes attention as *feature attention*: with query features ``Φ_q`` and key
features ``Φ_k`` of width ``m`` and an optional ``m x m`` inner matrix ``M``,

``out = Φ_q M (Φ_kᵀ V) / Φ_q M (Φ_kᵀ 1)``          (normalised methods)

so nothing of size ``L x S`` is formed; time is ``O((L + S)·m·E)`` and memory ``O(chunk·m)``.

Methods
-------
``"favor+"``
    Positive orthogonal random features (Choromanski et al., 2021) from
    :class:`snnk.features.PositiveFeatures`: ``E[φ(q)ᵀφ(k)] = exp(qᵀk·scale)`` exactly, so
    numerator and normaliser are unbiased; their ratio is a consistent (ratio-)estimator of
    softmax attention. Stabilisation is exact: key log-features are shifted by their maximum
    over keys *per feature* ``c_j`` and query log-features by ``+c_j`` and then by their row
    maximum, so every ``exp`` lies in ``(0, 1]`` and the shifts cancel between numerator and
    normaliser. No epsilon is ever added (an epsilon floor turns the estimator into uniform
    attention). Variance: for one i.i.d. feature it is ``exp(2s)(exp(‖q'+k'‖²) − 1)`` with
    ``q' = q·scale^{1/2}``; it grows like ``exp(2‖q'‖²)``, so the estimator is faithful only for
    small logits (roughly ``‖q'‖² ≲ 2``); beyond that it is a different (trainable) operator.
``"nystrom"``
    Nyström approximation of the softmax kernel ``exp(qᵀk·scale)`` (a positive-definite kernel)
    with ``m`` landmarks ``Z``: adaptive average pooling of the keys followed by one k-means
    (Lloyd) step, so that clustered keys get landmarks inside their clusters (masked keys
    excluded; ``landmarks="pool"`` skips the Lloyd step):
    ``K̂ = K(Q, Z) (K(Z, Z) + λ D²)⁻¹ K(Z, K)``, the RKHS projection onto the landmarks'
    span, then row normalisation. It is computed in the Gaussian form
    ``exp(qᵀz) = G(q, z)·e^{‖q‖²/2}·e^{‖z‖²/2}`` (``G(a, b) = exp(−‖a − b‖²/2)`` on scaled
    inputs) so the inner matrix is the Gaussian Gram matrix (unit diagonal) plus ``λ I``:
    a regularised inverse that is computed exactly (Cholesky) or by Newton–Schulz iterations
    that converge monotonically to it (more iterations never make it worse). Biased (it is
    a projection), deterministic, not causal (landmarks pool the future).
``"hermite"``
    Second-order Hermite expansion of softmax attention around each row's mean logit, with
    the quadratic term compressed by Nyström. With ``t_ij = q'·(k_j' − k̄')`` (``x' =
    x·scale^{1/2}``, ``k̄`` the mean of the unmasked keys), ``exp(s_ij) ∝ exp(t_ij)`` within a
    row and, for Gaussian ``t``, the L²-optimal quadratic approximation of ``exp(t)`` is
    ``1 + t + (t² − E t²)/2`` (Hermite polynomials). The weights are
    ``w_ij = 1 + t_ij + ½(t̂²_ij − mean_j t̂²_ij)`` where ``t̂²`` projects ``(q'⊗q')·(k̃'⊗k̃')``
    onto the squares of ``m − 1 − E`` landmarks (evenly spaced unmasked keys, centred, unit
    norm): ``t̂²(q, k) = a(q)ᵀ (G + λI)⁻¹ a(k)`` with ``a(x)_l = (x'·u_l)²`` and
    ``G = (U Uᵀ)^{∘2}``. So ``m = 1 + E + landmarks`` features in all; both correction terms sum
    to zero over the keys, so the normaliser is exactly the number (total weight) of the
    unmasked keys and no division can blow up. Deterministic; biased: the remainder is third
    order in the logits (exact at ``q = 0``), so it is faithful when the logits of a row are
    small or roughly Gaussian (random or freshly initialised projections: best of all
    methods at unit logits, see docs/benchmarks.md) and poor when a row's logits are
    multi-modal (clustered keys; use ``"nystrom"`` there). Weights can be negative. Float
    ``attn_mask`` biases weight the keys exactly (means and normaliser included); the
    landmarks and the centring of the quadratic features use the plain mean of the unmasked
    keys. Not causal (the key mean and landmarks use the whole sequence).
``"softmax-free"``
    SOFT (Lu et al., 2021): Gaussian-kernel attention ``G(q, k) = exp(−‖q − k‖²·scale/2)``
    with ``m`` landmarks by adaptive average pooling of the keys (``m`` fixed, so cost stays
    linear in ``L``), Nyström reconstruction ``G(Q, Z) D^{-1/2} (A + λI)⁻¹ D^{-1/2} G(Z, K) V``
    with ``A = G(Z, Z)`` and ``D = diag(A 1)`` (SOFT's symmetric normalisation); no row
    normalisation. The inverse uses the analytic gradient ``−A⁻¹ Ḡ A⁻¹`` once (never
    back-propagated through iterations). Not causal.
``"linear"``
    Linear attention of Katharopoulos et al. (2020), ``φ(x) = elu(x) + 1``; a different
    operator from softmax (not an estimator of it). Causal.

Causal mode (``"favor+"``, ``"linear"``) runs chunk by chunk over the sequence, carrying the
prefix sums ``S = Σ φ(k_j) v_jᵀ`` and ``z = Σ φ(k_j)`` (with a running per-feature maximum for
``"favor+"``, rescaled like an online softmax); :class:`DecodingState` carries the same three
tensors for incremental decoding in ``O(m·E)`` memory per step.

Memory: forward and backward go through a custom autograd function that stores only the
inputs and the ``m x E`` sums, and recomputes the features chunk by chunk in backward.
Half-precision inputs (and autocast) are computed in float32 and cast back.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from snnk._utils import check_in, check_positive, check_positive_int, compute_dtype
from snnk._utils.random import make_generator, numpy_seed_from
from snnk.features import PositiveFeatures

METHODS = ("favor+", "nystrom", "hermite", "softmax-free", "linear")
CAUSAL_METHODS = ("favor+", "linear")
PINV_METHODS = ("solve", "newton")
LANDMARKS = ("kmeans", "pool")
#: landmark rule of each landmark method when ``landmarks`` is not given
_DEFAULT_LANDMARKS = {"nystrom": "kmeans", "softmax-free": "pool"}

#: shift used for features whose every key is masked (``exp(-inf - c)`` must stay 0, not NaN)
_NEG = -1e30
#: elements of one ``(batch, chunk, m)`` feature block (512 KiB in float32: it fits the L2
#: cache, and forward+backward keep peak memory at or below SDPA's from L = 4,096 on)
_CHUNK_ELEMENTS = 1 << 17


# --------------------------------------------------------------------------------------------
# The m x m inverse with its analytic gradient
# --------------------------------------------------------------------------------------------
def newton_schulz_inverse(
    B: torch.Tensor, max_iter: int = 100, tol: float = 1e-10
) -> tuple[torch.Tensor, int, float]:
    r"""Inverse of symmetric positive definite ``B`` (``(..., m, m)``) by Newton–Schulz.

    ``V₀ = I / ‖B‖_∞`` (``‖B‖_∞ ≥ λ_max``) and ``V_{k+1} = V_k (2I − B V_k)``. The residual
    ``E_k = I − B V_k`` satisfies ``E_{k+1} = E_k²`` with ``E₀`` having eigenvalues in
    ``[0, 1)``, so ``‖E_k‖₂`` decreases monotonically to 0: more iterations never make the
    result worse. Stops when ``‖E_k‖_F / √m <= tol``.

    Returns
    -------
    inverse, iterations used, final residual
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
    def forward(ctx, B, pinv, max_iter, tol):
        B64 = B.double()
        B64 = 0.5 * (B64 + B64.mT)  # kernel Gram matrices are symmetric only up to rounding
        if pinv == "solve":
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


# --------------------------------------------------------------------------------------------
# Method specifications: feature maps in the log domain plus stabilisation rules
# --------------------------------------------------------------------------------------------
@dataclass
class _Spec:
    """What one method needs from the chunked engine.

    ``key_fn(k, Z)`` / ``query_fn(q, Z)`` return log-features (``log_domain``) or features;
    ``stab`` is the key shift: ``"feature"`` (max over keys per feature), ``"scalar"``
    (max over keys and features) or ``None``; ``inner_fn(Z)`` gives ``M`` or ``None``.
    """

    key_fn: Callable
    query_fn: Callable
    log_domain: bool
    normalize: bool
    stab: str | None
    num_landmarks: int = 0
    inner_fn: Callable | None = None
    #: ``Z -> (P, const)`` with log-features ``t(x) = x Pᵀ + const − a·γ‖x‖²/2`` (``a`` below)
    affine_fn: Callable | None = None
    key_sq: bool = False
    query_sq: bool = False
    gamma: float = 1.0
    #: ``"pool"``: landmarks = adaptive average pooling of the keys; ``"select"``: evenly
    #: spaced unmasked keys plus, as the last row of ``Z``, the mean of the unmasked keys
    landmarks: str = "pool"
    #: ``(Z, Σ φ_k vᵀ, Σ φ_k) -> (B, b)`` when the sums need more than ``M @`` (``"hermite"``)
    finish_fn: Callable | None = None
    #: hand-written ``backward(ctx, g)`` of the non-causal pass (``"hermite"``)
    backward_fn: Callable | None = None


def _sq(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum(-1)


def _make_spec(
    method: str,
    scale: float,
    feature_map: PositiveFeatures | None,
    num_landmarks: int,
    jitter: float,
    pinv: str,
    max_iter: int,
    tol: float,
) -> _Spec:
    r = math.sqrt(scale)
    if method == "favor+":

        def logf(x, Z):
            return feature_map.log_features(x * r)

        def favor_affine(Z):
            # log φ(x') = c·Wx' − ‖x'‖²/2 + log_prefactor − ½ log D − M‖w‖² (PositiveFeatures)
            fm = feature_map
            W = fm.projection.dense_weight() * math.sqrt(1.0 + 4.0 * fm.M)
            const = (fm.log_prefactor - 0.5 * math.log(fm.num_features)) - fm.M * _sq(
                fm.projection.dense_weight()
            )
            if fm.hyperbolic:
                W, const = torch.cat([W, -W]), torch.cat([const, const])
            return W * r, const

        return _Spec(logf, logf, True, True, "feature", 0, None, favor_affine, True, False, scale)
    if method == "linear":

        def elu1(x, Z):
            return F.elu(x) + 1.0

        return _Spec(elu1, elu1, False, True, None)

    def gram(Z):
        Zs = Z * r
        return torch.exp(-0.5 * torch.cdist(Zs, Zs).square())

    def landmark_affine(Z):
        # x'ᵀz' − ‖z'‖²/2 with x' = r·x, z' = r·Z
        return Z * scale, -0.5 * scale * _sq(Z)

    def reg_inverse(A):
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        return _SPDInverse.apply(A + jitter * eye, pinv, max_iter, tol)

    if method == "nystrom":
        # log of exp(xᵀz)·e^{-‖z‖²/2} on scaled inputs (the e^{‖x‖²/2} factor cancels).
        def expf(x, Z):
            Zs = Z * r
            return (x * r) @ Zs.mT - 0.5 * _sq(Zs).unsqueeze(-2)

        def inner(Z):
            return reg_inverse(gram(Z))

        return _Spec(
            expf, expf, True, True, "scalar", num_landmarks, inner, landmark_affine, False, False
        )

    if method == "hermite":
        # Z = [selected keys; key mean]. Quadratic features use the centred landmarks at unit
        # norm: the quadratic kernel is homogeneous, so their scale does not change the
        # projection, and the Gram matrix below has a unit diagonal (a scale-free jitter).
        def directions(Z):
            return F.normalize(Z[..., :-1, :] - Z[..., -1:, :], dim=-1)

        def polynomial(xs, U, half: bool):
            """Features ``[1, x', c·p²]`` (``c = ½`` for queries, 1 for keys) and ``p = x'Uᵀ``."""
            p = xs @ U.mT
            quad = 0.5 * p.square() if half else p.square()
            return torch.cat([torch.ones_like(xs[..., :1]), xs, quad], -1), p

        def hermite_key(x, Z):
            return polynomial((x - Z[..., -1:, :]) * r, directions(Z), False)[0]

        def hermite_query(x, Z):
            return polynomial(x * r, directions(Z), True)[0]

        def hermite_finish(Z, Ssum, zsum):
            E = Z.shape[-1]
            n = zsum[..., :1]
            safe = torch.where(n > 0, n, torch.ones_like(n))
            S0 = Ssum[..., :1, :]
            # Centre the linear and quadratic sums on the (weighted) key mean: subtracting
            # z_w·S0/n makes Σ_j ω_j φ_w(k_j) = 0 for every feature w > 0, so the normaliser
            # is exactly n (the total key weight) and the estimate is a Hermite expansion
            # around each row's mean logit.
            cen = Ssum[..., 1:, :] - zsum[..., 1:].unsqueeze(-1) * (S0 / safe.unsqueeze(-1))
            U = directions(Z)
            quad = reg_inverse((U @ U.mT).square()) @ cen[..., E:, :]
            B = torch.cat([S0, cen[..., :E, :], quad], -2)
            b = torch.cat([n, torch.zeros_like(zsum[..., 1:])], -1)
            return B, b

        def hermite_backward(ctx, g):
            # Features are polynomials of x' = r·x (keys: r·(k − k̄)) and p = x'Uᵀ:
            # query f = [1, x', p²/2], key f = ω·[1, x', p²]. With ∂f (queries: from
            # _normalised_query_grad): ∂x' = ∂f_lin + (∂f_quad ⊙ p·c) U, ∂U += (∂f_quad ⊙ p·c)ᵀ x'
            # (c = 1 for queries, 2 for keys); U = normalize(Z_l − k̄) and k̄ = Z_last get
            # their gradient by autograd on the small landmark tensors, then reach the keys
            # through the landmark map.
            q, k, v, lw, Z, Ssum, zsum, _, B, b, out_all = ctx.saved_tensors
            chunk, E = ctx.chunk, q.shape[-1]
            with torch.enable_grad():
                Zg = Z.detach().requires_grad_()
                Ug = directions(Zg)
            U, kbar = Ug.detach(), Z[..., -1:, :]
            dU = torch.zeros_like(U)
            dB, db = torch.zeros_like(B), torch.zeros_like(b)
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            for a, e in _chunks(q.shape[-2], chunk):
                xs = q[..., a:e, :] * r
                f, pq = polynomial(xs, U, True)
                df = _normalised_query_grad(f, g[..., a:e, :], out_all[..., a:e, :], B, b, dB, db)
                dquad = df[..., 1 + E :] * pq
                dq[..., a:e, :] = r * (df[..., 1 : 1 + E] + dquad @ U)
                dU += (dquad.mT @ xs).sum_to_size(U.shape)
            with torch.enable_grad():
                Sg, zg = Ssum.detach().requires_grad_(), zsum.detach().requires_grad_()
                Bn, bn = hermite_finish(Zg, Sg, zg)
                dS, dz, dZ = _grads([Bn, bn], [Sg, zg, Zg], [dB, db])
            dkbar = torch.zeros_like(kbar)
            for a, e in _chunks(k.shape[-2], chunk):
                xs, vc = (k[..., a:e, :] - kbar) * r, v[..., a:e, :]
                f, pk = polynomial(xs, U, False)
                w = None if lw is None else torch.exp(lw[..., a:e]).unsqueeze(-1)
                df = vc @ dS.mT + dz.unsqueeze(-2)
                dv[..., a:e, :] = (f if w is None else f * w) @ dS
                if w is not None:
                    df = df * w
                dquad = 2.0 * df[..., 1 + E :] * pk
                dx = df[..., 1 : 1 + E] + dquad @ U
                dk[..., a:e, :] = r * dx
                dkbar -= (r * dx.sum(-2, keepdim=True)).sum_to_size(kbar.shape)
                dU += (dquad.mT @ xs).sum_to_size(U.shape)
            dZ = dZ + torch.autograd.grad(Ug, Zg, dU)[0]
            dZ[..., -1:, :] += dkbar
            ctx.pool.route(dZ, dk)
            return dq, dk, dv, None, None, None

        return _Spec(
            hermite_key,
            hermite_query,
            False,
            True,
            None,
            num_landmarks,
            landmarks="select",
            finish_fn=hermite_finish,
            backward_fn=hermite_backward,
        )

    # softmax-free: log G(x, z) = -‖x - z‖²/2 (≤ 0: no stabilisation needed, no row shift).
    def loggauss(x, Z):
        xs, Zs = x * r, Z * r
        d2 = _sq(xs).unsqueeze(-1) + _sq(Zs).unsqueeze(-2) - 2.0 * (xs @ Zs.mT)
        return -0.5 * d2.clamp_min(0.0)

    def sym_inner(Z):
        A = gram(Z)
        dinv = A.sum(-1).rsqrt()
        return dinv.unsqueeze(-1) * reg_inverse(A) * dinv.unsqueeze(-2)

    return _Spec(
        loggauss,
        loggauss,
        True,
        False,
        None,
        num_landmarks,
        sym_inner,
        landmark_affine,
        True,
        True,
        scale,
    )


# --------------------------------------------------------------------------------------------
# Landmarks: pooled, k-means or selected keys, one chunk of keys at a time
# --------------------------------------------------------------------------------------------
def _segments(S: int, m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start/end of the ``m`` adaptive-pooling segments of ``range(S)`` (PyTorch's rule)."""
    i = torch.arange(m, device=device)
    return (i * S) // m, ((i + 1) * S + m - 1) // m


class _Landmarks:
    """Landmarks ``Z = P k``, a linear map of the keys applied chunk by chunk.

    ``"pool"``: ``m`` rows of masked adaptive average pooling (PyTorch's segments; a key lies
    in one or, where segments overlap, two of them). ``"kmeans"``: one Lloyd step from the
    pooled rows: every unmasked key joins its nearest pooled landmark and each landmark
    becomes the mean of its members (a landmark without members keeps its pooled value), so
    landmarks sit where the keys are (clustered keys get landmarks inside their clusters).
    The assignment is piecewise constant, so gradients flow through the means.
    ``"select"``: the unmasked keys of rank ``⌊(l + ½)·n/m⌋`` among the ``n`` unmasked ones
    (``l < m``; evenly spaced, never a masked key, repeated when ``n < m``) and, as row
    ``m``, the mean of the unmasked keys.

    Pooling and k-means use segment sums and gathers (``O(S·E)``), not dense ``m x S``
    matrices; :meth:`route` applies ``Pᵀ`` to a landmark gradient.
    """

    def __init__(self, kind: str, S: int, m: int, keep: torch.Tensor | None, chunk: int, k):
        self.kind, self.keep, self.m, self.chunk = kind, keep, m, chunk
        dev, dt = k.device, k.dtype
        if kind == "select":
            if keep is None:
                self.rank = torch.arange(S, device=dev, dtype=dt)
                n = torch.full((1,), float(S), device=dev, dtype=dt)
            else:
                self.rank = keep.cumsum(-1) - 1.0
                n = keep.sum(-1, keepdim=True)
            i = torch.arange(m, device=dev, dtype=dt)
            self.target = torch.floor((i + 0.5) * n / m)
            self.n = n.clamp_min(1.0)
            return
        start, end = _segments(S, m, dev)
        j = torch.arange(S, device=dev)
        self.lo = torch.searchsorted(end, j, right=True)  # first segment holding key j
        self.hi = torch.searchsorted(start, j, right=True) - 1  # last segment holding it
        w = torch.ones(S, 1, dtype=dt, device=dev) if keep is None else keep.unsqueeze(-1)
        counts = self._segment_sum(lambda a, b: w[..., a:b, :], S, 1, k)[..., 0]
        self.counts = counts.clamp_min(1.0)
        if kind == "kmeans":
            self._lloyd(k)

    def _weight(self, a: int, b: int, like: torch.Tensor) -> torch.Tensor:
        keep = torch.ones_like(like[..., 0]) if self.keep is None else self.keep[..., a:b]
        return keep.unsqueeze(-1)

    def _segment_sum(self, get, S: int, F: int, like: torch.Tensor) -> torch.Tensor:
        """``Σ_{j ∈ segment} x_j`` with ``x[..., a:b, :] = get(a, b)`` (already masked)."""
        out = 0
        for a, b in _chunks(S, self.chunk):
            lo, hi, xc = self.lo[a:b], self.hi[a:b], get(a, b)
            part = like.new_zeros(*xc.shape[:-2], self.m, F)
            part.index_add_(-2, lo, xc)
            two = hi != lo
            out = out + part.index_add_(-2, hi[two], xc[..., two, :])
        return out

    def _pooled(self, k: torch.Tensor) -> torch.Tensor:
        def masked(a, b):
            return k[..., a:b, :] * self._weight(a, b, k[..., a:b, :])

        sums = self._segment_sum(masked, k.shape[-2], k.shape[-1], k)
        return sums / self.counts.unsqueeze(-1)

    def _lloyd(self, k: torch.Tensor) -> None:
        Z0 = self._pooled(k)
        Zsq = _sq(Z0).unsqueeze(-2)
        labels, sums, sizes = [], 0, 0
        for a, b in _chunks(k.shape[-2], self.chunk):
            kc = k[..., a:b, :]
            # nearest landmark of every key (‖k‖² is the same for all landmarks of a key)
            lab = (Zsq - 2.0 * (kc @ Z0.mT)).argmin(-1)
            w = self._weight(a, b, kc).expand(*lab.shape, 1)
            s = kc.new_zeros(*lab.shape[:-1], self.m, kc.shape[-1])
            sums = sums + s.scatter_add_(-2, lab.unsqueeze(-1).expand_as(kc), kc * w)
            c = kc.new_zeros(*lab.shape[:-1], self.m)
            sizes = sizes + c.scatter_add_(-1, lab, w[..., 0])
            labels.append(lab)
        self.labels, self.sizes = torch.cat(labels, -1), sizes
        self.Z = torch.where(
            (sizes > 0).unsqueeze(-1), sums / sizes.clamp_min(1.0).unsqueeze(-1), Z0
        )

    def _select_matrix(self, a: int, b: int) -> torch.Tensor:
        rank = self.rank[..., a:b]
        keep = torch.ones_like(rank) if self.keep is None else self.keep[..., a:b]
        hit = (rank.unsqueeze(-2) == self.target.unsqueeze(-1)).to(rank.dtype)
        return torch.cat([hit * keep.unsqueeze(-2), (keep / self.n).unsqueeze(-2)], -2)

    def compute(self, k: torch.Tensor) -> torch.Tensor:
        """The landmarks ``P k``: ``(..., rows, E)``."""
        if self.kind == "kmeans":
            return self.Z
        if self.kind == "pool":
            return self._pooled(k)
        Z = 0
        for a, b in _chunks(k.shape[-2], self.chunk):
            Z = Z + self._select_matrix(a, b) @ k[..., a:b, :]
        return Z

    def route(self, dZ: torch.Tensor, dk: torch.Tensor) -> None:
        """``dk += Pᵀ dZ`` (the landmarks' gradient reaching the keys)."""
        if self.kind == "select":
            for a, b in _chunks(dk.shape[-2], self.chunk):
                dk[..., a:b, :] += (self._select_matrix(a, b).mT @ dZ).expand_as(dk[..., a:b, :])
            return
        pooled = dZ / self.counts.unsqueeze(-1)
        if self.kind == "kmeans":
            nonempty = (self.sizes > 0).unsqueeze(-1)
            member = torch.where(nonempty, dZ / self.sizes.clamp_min(1.0).unsqueeze(-1), 0.0)
            pooled = torch.where(nonempty, 0.0, pooled)
        for a, b in _chunks(dk.shape[-2], self.chunk):
            lo, hi = self.lo[a:b], self.hi[a:b]
            g = pooled.index_select(-2, lo) + torch.where(
                (hi != lo).unsqueeze(-1), pooled.index_select(-2, hi), 0.0
            )
            if self.kind == "kmeans":
                lab = self.labels[..., a:b].unsqueeze(-1)
                g = g + member.gather(-2, lab.expand(*lab.shape[:-1], dZ.shape[-1]))
            dk[..., a:b, :] += (g * self._weight(a, b, dk[..., a:b, :])).expand_as(dk[..., a:b, :])


def _finish_sums(spec: _Spec, Z, Ssum, zsum):
    """``(B, b)`` from the key sums: ``(M Σ φ_k vᵀ, M Σ φ_k)`` or the method's own map."""
    if spec.finish_fn is not None:
        return spec.finish_fn(Z, Ssum, zsum)
    if spec.inner_fn is None:
        return Ssum, zsum
    M = spec.inner_fn(Z)
    return M @ Ssum, (M @ zsum.unsqueeze(-1))[..., 0]


# --------------------------------------------------------------------------------------------
# Chunk-level differentiable pieces (used in forward under no_grad and in backward)
# --------------------------------------------------------------------------------------------
def _affine_logits(x, P, const, sq: bool, gamma: float):
    """``x Pᵀ + const`` (minus ``γ‖x‖²/2`` when ``sq``), shape ``(..., rows, m)``."""
    t = x @ P.mT + const.unsqueeze(-2)
    if sq:
        t = t - (0.5 * gamma) * _sq(x).unsqueeze(-1)
    return t


def _key_log(spec: _Spec, k_c, Z, lw_c, aff=None):
    if aff is None:
        t = spec.key_fn(k_c, Z)
    else:
        t = _affine_logits(k_c, *aff, spec.key_sq, spec.gamma)
    if lw_c is None:
        return t
    if spec.log_domain:
        return t + lw_c.unsqueeze(-1)
    return t * torch.exp(lw_c).unsqueeze(-1)


def _shift_of(spec: _Spec, lk: torch.Tensor) -> torch.Tensor | None:
    """Detached key shift ``c`` of shape ``(..., 1, m)`` or ``(..., 1, 1)`` (or None)."""
    if spec.stab is None:
        return None
    with torch.no_grad():
        c = lk.amax(-2, keepdim=True)
        if spec.stab == "scalar":
            c = c.amax(-1, keepdim=True)
        return c.clamp_min(_NEG)


def _key_features(spec: _Spec, lk, c):
    if not spec.log_domain:
        return lk
    return torch.exp(lk - c) if c is not None else torch.exp(lk)


def _query_features(spec: _Spec, q_c, Z, c, aff=None):
    if aff is None:
        t = spec.query_fn(q_c, Z)
    else:
        t = _affine_logits(q_c, *aff, spec.query_sq, spec.gamma)
    if not spec.log_domain:
        return t
    if spec.stab == "feature":
        t = t + c
    if spec.normalize:
        t = t - t.detach().amax(-1, keepdim=True)
    return torch.exp(t)


def _finish(spec: _Spec, num, den):
    if not spec.normalize:
        return num
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), 0.0)


def _rescale(S, z, c_old, c_new):
    if c_new is None:
        return S, z
    r = torch.exp(c_old - c_new)  # (..., 1, m) or (..., 1, 1)
    return S * r.mT, z * r[..., 0, :]


def _combine(a, b):
    """Online merge of two ``(S, z, c)`` triples with different key shifts."""
    (S1, z1, c1), (S2, z2, c2) = a, b
    if c1 is None:
        return S1 + S2, z1 + z2, None
    c = torch.maximum(c1, c2)
    S1, z1 = _rescale(S1, z1, c1, c)
    S2, z2 = _rescale(S2, z2, c2, c)
    return S1 + S2, z1 + z2, c


def _query_out(spec, q_c, Z, c, B, b, aff=None):
    fq = _query_features(spec, q_c, Z, c, aff)
    num = fq @ B
    den = (fq @ b.unsqueeze(-1)) if spec.normalize else None
    return _finish(spec, num, den)


def _causal_chunk(spec, q_c, k_c, v_c, lw_c, S, z, c_in, c_out=None):
    """One causal chunk: outputs of its queries and the state after its keys.

    Queries ``i`` of the chunk see the carried state (all earlier chunks) and keys ``j <= i``
    of the chunk itself. ``c_out`` (the running key maximum after this chunk) is computed
    when not given.
    """
    lk = _key_log(spec, k_c, None, lw_c)
    if spec.stab is not None and c_out is None:
        c_out = torch.maximum(c_in, _shift_of(spec, lk))
    fk = _key_features(spec, lk, c_out)
    fq = _query_features(spec, q_c, None, c_out)
    S, z = _rescale(S, z, c_in, c_out)
    A = (fq @ fk.mT).tril()
    num = fq @ S + A @ v_c
    den = fq @ z.unsqueeze(-1) + A.sum(-1, keepdim=True)
    out = _finish(spec, num, den)
    return out, S + fk.mT @ v_c, z + fk.sum(-2), c_out


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _lw_slice(lw, a, b):
    return None if lw is None else lw[..., a:b]


def _grads(outputs, inputs, grads):
    """``torch.autograd.grad`` that tolerates inputs the outputs do not depend on."""
    res = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(res, inputs, strict=True)]


# --------------------------------------------------------------------------------------------
# The custom autograd functions: chunk over L, recompute in backward
# --------------------------------------------------------------------------------------------
class _FeatureAttention(torch.autograd.Function):
    """Non-causal feature attention, ``O(chunk·m)`` working memory in forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, lw, spec, chunk):
        L, S = q.shape[-2], k.shape[-2]
        Z = pool = None
        if spec.num_landmarks:
            keep = None if lw is None else torch.isfinite(lw).to(k.dtype)
            pool = _Landmarks(spec.landmarks, S, min(spec.num_landmarks, S), keep, chunk, k)
            Z = pool.compute(k)
        aff = _cast_affine(spec, Z, q.dtype)
        acc = None
        for a, b in _chunks(S, chunk):
            lk = _key_log(spec, k[..., a:b, :], Z, _lw_slice(lw, a, b), aff)
            c = _shift_of(spec, lk)
            fk = _key_features(spec, lk, c)
            part = (fk.mT @ v[..., a:b, :], fk.sum(-2), c)
            acc = part if acc is None else _combine(acc, part)
        Ssum, zsum, c = acc
        B, b = _finish_sums(spec, Z, Ssum, zsum)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        for a, b_ in _chunks(L, chunk):
            out[..., a:b_, :] = _query_out(spec, q[..., a:b_, :], Z, c, B, b, aff)
        ctx.spec, ctx.chunk, ctx.pool, ctx.has_lw = spec, chunk, pool, lw is not None
        # ``out`` is saved as an output (no copy): backward reuses it instead of f·B.
        ctx.save_for_backward(q, k, v, lw, Z, Ssum, zsum, c, B, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.spec.affine_fn is not None:
            return _affine_backward(ctx, g)
        if ctx.spec.backward_fn is not None:
            return ctx.spec.backward_fn(ctx, g)
        q, k, v, lw, Z, Ssum, zsum, c, B, b, _ = ctx.saved_tensors
        spec, chunk = ctx.spec, ctx.chunk
        L, S = q.shape[-2], k.shape[-2]
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        with torch.enable_grad():
            Zg = None if Z is None else Z.detach().requires_grad_()
            Bg, bg = B.detach().requires_grad_(), b.detach().requires_grad_()
            dZ = None if Z is None else torch.zeros_like(Z)
            dB, db = torch.zeros_like(B), torch.zeros_like(b)
            small = [Bg, bg] + ([Zg] if Zg is not None else [])
            for a, e in _chunks(L, chunk):
                qc = q[..., a:e, :].detach().requires_grad_()
                out = _query_out(spec, qc, Zg, c, Bg, bg)
                gr = _grads(out, [qc, *small], g[..., a:e, :])
                dq[..., a:e, :] = gr[0]
                dB += gr[1]
                db += gr[2]
                if dZ is not None:
                    dZ += gr[3]
            if spec.inner_fn is not None or spec.finish_fn is not None:
                Sg, zg = Ssum.detach().requires_grad_(), zsum.detach().requires_grad_()
                Bn, bn = _finish_sums(spec, Zg, Sg, zg)
                dS, dz, dZm = _grads([Bn, bn], [Sg, zg, Zg], [dB, db])
                dZ += dZm
            else:
                dS, dz = dB, db
            for a, e in _chunks(S, chunk):
                kc = k[..., a:e, :].detach().requires_grad_()
                vc = v[..., a:e, :].detach().requires_grad_()
                lk = _key_log(spec, kc, Zg, _lw_slice(lw, a, e))
                fk = _key_features(spec, lk, c)
                ins = [kc, vc] + ([Zg] if Zg is not None else [])
                gr = _grads([fk.mT @ vc, fk.sum(-2)], ins, [dS, dz])
                dk[..., a:e, :] = gr[0]
                dv[..., a:e, :] = gr[1]
                if dZ is not None:
                    dZ += gr[2]
            if dZ is not None:
                # Landmarks are a linear map of the keys: route dZ back to them.
                ctx.pool.route(dZ, dk)
        return dq, dk, dv, None, None, None


def _cast_affine(spec: _Spec, Z, dtype):
    if spec.affine_fn is None:
        return None
    P, const = spec.affine_fn(Z)
    return P.to(dtype), const.to(dtype)


def _logit_backward(dt, x, P, sq: bool, gamma: float, dP, dconst):
    """Gradient of ``t = x Pᵀ + const − γ‖x‖²/2`` w.r.t. ``x``; accumulates ``dP``, ``dconst``."""
    dx = dt @ P
    if sq:
        dx -= gamma * dt.sum(-1, keepdim=True) * x
    dP += (dt.mT @ x).sum_to_size(P.shape)
    dconst += dt.sum(-2).sum_to_size(dconst.shape)
    return dx


def _normalised_query_grad(f, g, out, B, b, dB, db):
    """``∂f`` of normalised query rows ``out = N/D``, ``N = f B``, ``D = f b``; accumulates
    ``dB``, ``db``. ``∂N = g/D``, ``∂D = −(g·out)/D``, ``∂f = ∂N Bᵀ + ∂D bᵀ`` (rows with
    ``D <= 0`` output 0 and get no gradient)."""
    den = f @ b.unsqueeze(-1)
    ok = den > 0
    dens = torch.where(ok, den, torch.ones_like(den))
    dN = torch.where(ok, g / dens, 0.0)
    dD = torch.where(ok, -(g * out).sum(-1, keepdim=True) / dens, 0.0)
    dB += f.mT @ dN
    db += (f * dD).sum(-2)
    return dN @ B.mT + dD * b.unsqueeze(-2)


def _affine_backward(ctx, g):
    r"""Hand-written backward for exp-affine features ``f = exp(x Pᵀ + const − …)``.

    Query rows (normalised): ``out = N/D`` (saved by forward), ``N = f B``, ``D = f b``;
    ``∂N = g/D``, ``∂D = −(g·out)/D``, ``∂f = ∂N Bᵀ + ∂D bᵀ``, ``∂t = ∂f ⊙ f`` and
    ``∂x = ∂t P`` (the row shift and ``−‖x‖²/2`` of normalised queries carry no gradient:
    ``Σ_w ∂t_w = 0``). Key rows:
    ``∂f_k = v ∂Sᵀ + ∂z``, ``∂v = f_k ∂S``, ``∂k = ∂t P − γ (Σ_w ∂t_w) k`` when the key
    log-features contain ``−γ‖k‖²/2``. Features are recomputed chunk by chunk.
    """
    q, k, v, lw, Z, Ssum, zsum, c, B, b, out_all = ctx.saved_tensors
    spec, chunk = ctx.spec, ctx.chunk
    L, S = q.shape[-2], k.shape[-2]
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    with torch.enable_grad():
        Zg = None if Z is None else Z.detach().requires_grad_()
        Pg, cg = spec.affine_fn(Zg)
    P, const = Pg.detach().to(q.dtype), cg.detach().to(q.dtype)
    dP, dconst = torch.zeros_like(P), torch.zeros_like(const)
    dB, db = torch.zeros_like(B), torch.zeros_like(b)
    for a, e in _chunks(L, chunk):
        qc, gc = q[..., a:e, :], g[..., a:e, :]
        f = _query_features(spec, qc, None, c, (P, const))
        if spec.normalize:
            df = _normalised_query_grad(f, gc, out_all[..., a:e, :], B, b, dB, db)
        else:
            df = gc @ B.mT
            dB += f.mT @ gc
        dq[..., a:e, :] = _logit_backward(df.mul_(f), qc, P, spec.query_sq, spec.gamma, dP, dconst)
    dZ = None
    if spec.inner_fn is not None or spec.finish_fn is not None:
        with torch.enable_grad():
            Sg, zg = Ssum.detach().requires_grad_(), zsum.detach().requires_grad_()
            Bn, bn = _finish_sums(spec, Zg, Sg, zg)
            dS, dz, dZ = _grads([Bn, bn], [Sg, zg, Zg], [dB, db])
    else:
        dS, dz = dB, db
    for a, e in _chunks(S, chunk):
        kc, vc = k[..., a:e, :], v[..., a:e, :]
        fk = _key_features(spec, _key_log(spec, kc, None, _lw_slice(lw, a, e), (P, const)), c)
        dfk = vc @ dS.mT + dz.unsqueeze(-2)
        dv[..., a:e, :] = fk @ dS
        dk[..., a:e, :] = _logit_backward(dfk.mul_(fk), kc, P, spec.key_sq, spec.gamma, dP, dconst)
    if Zg is not None:
        dZ = dZ + torch.autograd.grad([Pg, cg], Zg, [dP.to(Pg.dtype), dconst.to(cg.dtype)])[0]
        ctx.pool.route(dZ, dk)
    return dq, dk, dv, None, None, None


class _CausalFeatureAttention(torch.autograd.Function):
    """Causal feature attention by chunked prefix sums; states are kept per chunk only."""

    @staticmethod
    def forward(ctx, q, k, v, lw, spec, chunk):
        L = q.shape[-2]
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        m = spec.query_fn(q[..., :1, :], None).shape[-1]
        S = q.new_zeros(*batch, m, v.shape[-1])
        z = q.new_zeros(*batch, m)
        c = None
        if spec.stab == "feature":
            c = q.new_full((*batch, 1, m), _NEG)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        states = []
        for a, b in _chunks(L, chunk):
            states.append((S, z, c))
            o, S, z, c_new = _causal_chunk(
                spec, q[..., a:b, :], k[..., a:b, :], v[..., a:b, :], _lw_slice(lw, a, b), S, z, c
            )
            out[..., a:b, :] = o
            c = c_new
        ctx.spec, ctx.chunk, ctx.n = spec, chunk, len(states)
        flat = [t for st in states for t in st if t is not None]
        cs = [st[2] for st in states] + [c]
        ctx.save_for_backward(q, k, v, lw, *flat, *([] if c is None else cs))
        ctx.has_c = c is not None
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, lw, *rest = ctx.saved_tensors
        spec, chunk, n = ctx.spec, ctx.chunk, ctx.n
        per = 3 if ctx.has_c else 2
        states = [rest[i * per : (i + 1) * per] for i in range(n)]
        cs = rest[n * per :] if ctx.has_c else [None] * (n + 1)
        L = q.shape[-2]
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        bounds = list(_chunks(L, chunk))
        dS = dz = None
        with torch.enable_grad():
            for i in range(n - 1, -1, -1):
                a, b = bounds[i]
                S0 = states[i][0].detach().requires_grad_()
                z0 = states[i][1].detach().requires_grad_()
                qc = q[..., a:b, :].detach().requires_grad_()
                kc = k[..., a:b, :].detach().requires_grad_()
                vc = v[..., a:b, :].detach().requires_grad_()
                out, S1, z1, _ = _causal_chunk(
                    spec, qc, kc, vc, _lw_slice(lw, a, b), S0, z0, cs[i], cs[i + 1]
                )
                outs, gs = [out], [g[..., a:b, :]]
                if dS is not None:
                    outs += [S1, z1]
                    gs += [dS, dz]
                gr = _grads(outs, [qc, kc, vc, S0, z0], gs)
                dq[..., a:b, :], dk[..., a:b, :], dv[..., a:b, :] = gr[0], gr[1], gr[2]
                dS, dz = gr[3], gr[4]
        return dq, dk, dv, None, None, None


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _check_qkv(q, k, v) -> None:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(
                f"{name} must have shape (..., L, E) with at least 2 dimensions, got shape "
                f"{tuple(t.shape)}; add a sequence dimension with {name}.unsqueeze(-2)"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"query and key must have the same head dimension E (last dimension), got "
            f"query {tuple(q.shape)} and key {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"key and value must have the same sequence length S (dimension -2), got key "
            f"{tuple(k.shape)} and value {tuple(v.shape)}"
        )
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            f"query, key and value must have the same batch dimensions, got {tuple(q.shape)}, "
            f"{tuple(k.shape)} and {tuple(v.shape)}; expand them to one batch shape first"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"query, key and value must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"query, key and value must be on one device, got {q.device}, {k.device}, {v.device}"
        )


def _key_log_weights(
    attn_mask, key_padding_mask, k: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """Per-key additive log-weights ``(..., S)``: ``-inf`` drops a key, 0 keeps it."""
    S = k.shape[-2]
    batch = k.shape[:-2]
    lw = None
    if key_padding_mask is not None:
        m = key_padding_mask
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(
                "key_padding_mask must be a bool tensor (True marks a padded key to ignore, as "
                f"in nn.MultiheadAttention), got {getattr(m, 'dtype', type(m).__name__)}; "
                "use mask.bool()"
            )
        if m.ndim == 0 or m.shape[-1] != S or not _broadcastable(m.shape[:-1], batch):
            raise ValueError(
                f"key_padding_mask must have shape (..., S) with S={S} keys and leading "
                f"dimensions that broadcast to the batch shape {tuple(batch)} of key, got "
                f"{tuple(m.shape)}; for inputs (B, H, S, E) pass mask[:, None, :]"
            )
        lw = torch.zeros(m.shape, dtype=dtype, device=k.device).masked_fill(m, float("-inf"))
    if attn_mask is not None:
        m = attn_mask
        if not isinstance(m, torch.Tensor) or not (m.dtype == torch.bool or m.is_floating_point()):
            raise TypeError(
                "attn_mask must be a bool tensor (True = take part in attention, as in "
                "scaled_dot_product_attention) or a float tensor of additive biases, got "
                f"{getattr(m, 'dtype', type(m).__name__)}"
            )
        if m.ndim < 2 or m.shape[-1] != S or not _broadcastable(m.shape[:-2], batch):
            raise ValueError(
                f"attn_mask must have shape (..., 1, S) with S={S} keys and leading dimensions "
                f"that broadcast to {tuple(batch)}, got {tuple(m.shape)}"
            )
        if m.shape[-2] != 1:
            raise ValueError(
                f"kernel attention supports only masks that are the same for every query, "
                f"shape (..., 1, S); got attn_mask of shape {tuple(m.shape)}. Use "
                f"is_causal=True for a causal mask, key_padding_mask for padding; arbitrary "
                f"(L, S) masks need exact attention (scaled_dot_product_attention)"
            )
        m = m[..., 0, :]
        add = (
            torch.zeros(m.shape, dtype=dtype, device=k.device).masked_fill(~m, float("-inf"))
            if m.dtype == torch.bool
            else m.to(dtype)
        )
        lw = add if lw is None else lw + add
    return None if lw is None else torch.broadcast_to(lw, (*batch, S)).detach()


def _broadcastable(a, b) -> bool:
    try:
        return torch.broadcast_shapes(a, b) == tuple(b)
    except RuntimeError:
        return False


def _default_chunk(batch_numel: int, m: int) -> int:
    return max(64, _CHUNK_ELEMENTS // max(1, batch_numel * m))


# --------------------------------------------------------------------------------------------
# Public functional API
# --------------------------------------------------------------------------------------------
def kernel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    method: str = "favor+",
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    num_features: int = 256,
    seed: int | torch.Generator | None = 0,
    feature_map: PositiveFeatures | None = None,
    jitter: float = 1e-3,
    pinv: str = "solve",
    max_iter: int = 100,
    tol: float = 1e-10,
    chunk_size: int | None = None,
    landmarks: str | None = None,
) -> torch.Tensor:
    r"""Linear-complexity attention with the call shape of ``scaled_dot_product_attention``.

    Parameters
    ----------
    q : Tensor of shape ``(..., L, E)``
    k : Tensor of shape ``(..., S, E)``
    v : Tensor of shape ``(..., S, Ev)``
        Same batch dimensions, dtype and device.
    method : {"favor+", "nystrom", "hermite", "softmax-free", "linear"}, default "favor+"
        See the module docstring for the estimator behind each method.
    attn_mask : Tensor of shape ``(..., 1, S)``, optional
        As in SDPA: bool (True = the key takes part) or float (added to the logits; ``-inf``
        drops the key). Only masks that are the same for every query can be linearised.
    key_padding_mask : bool Tensor of shape ``(..., S)``, optional
        As in ``nn.MultiheadAttention``: True marks a padded key. Masked keys are removed
        from the numerator *and* the normaliser (and from the landmarks).
    is_causal : bool, default False
        Query ``i`` sees keys ``j <= i`` (needs ``L == S``); only ``"favor+"`` and
        ``"linear"`` (landmark methods see the future and raise).
    scale : float, optional
        Logit scale, default ``1/√E`` (softmax of ``qᵀk·scale``; for ``"softmax-free"``
        the kernel is ``exp(−‖q − k‖²·scale/2)``).
    num_features : int, default 256
        ``m``: random features (``"favor+"``), landmarks (``"nystrom"``,
        ``"softmax-free"``; capped at ``S``) or the total feature width of ``"hermite"``
        (``1 + E`` plus ``m − 1 − E`` quadratic landmarks, capped at ``S``; needs
        ``m >= E + 2``). Ignored by ``"linear"``.
    seed : int, torch.Generator or None, default 0
        Draw of the ``"favor+"`` projection when ``feature_map`` is not given.
    feature_map : PositiveFeatures, optional
        ``"favor+"`` features to use (``in_features = E``); modules pass theirs.
    jitter : float, default 1e-3
        ``λ`` added to the unit-diagonal landmark Gram matrix before inversion (the
        Gaussian Gram matrix, or ``G`` of ``"hermite"``).
    pinv : {"solve", "newton"}, default "solve"
        Exact SPD inverse (Cholesky, float64) or Newton–Schulz with a convergence check
        (raises if ``tol`` is not met within ``max_iter``).
    chunk_size : int, optional
        Rows per chunk (default: about 2¹⁷ feature elements per block, at least 64 rows).
    landmarks : {"kmeans", "pool"}, optional
        Landmarks of ``"nystrom"`` (default ``"kmeans"``) and ``"softmax-free"`` (default
        ``"pool"``, SOFT's rule): adaptive average pooling of the keys, or one Lloyd (k-means)
        step from the pooled landmarks, which puts landmarks where the keys cluster (one
        more pass over the keys). Errors at L = 1,024 with 256 landmarks: random keys 0.541
        (pool) / 0.549 (kmeans); clustered keys at logit std 2: 2.7 (pool, row sums near 0)
        / 0.156 (kmeans); see docs/benchmarks.md.

    Returns
    -------
    Tensor of shape ``(..., L, Ev)`` in ``q``'s dtype.
    """
    check_in(method, "method", METHODS)
    _check_qkv(q, k, v)
    if is_causal and method not in CAUSAL_METHODS:
        raise ValueError(
            f"method={method!r} cannot be causal: its landmarks are computed from the "
            f"whole sequence, so every output would see future tokens. Use method='favor+' or "
            f"'linear' with is_causal=True"
        )
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in SDPA)")
    if is_causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"is_causal=True needs as many queries as keys, got L={q.shape[-2]} and "
            f"S={k.shape[-2]}; for decoding one token at a time use DecodingState"
        )
    E = q.shape[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else check_positive(scale, "scale")
    num_features = check_positive_int(num_features, "num_features")
    check_in(pinv, "pinv", PINV_METHODS)
    jitter = check_positive(jitter, "jitter")
    if landmarks is not None and method not in _DEFAULT_LANDMARKS:
        raise ValueError(
            f"landmarks={landmarks!r} applies to {sorted(_DEFAULT_LANDMARKS)} only, not to "
            f"method={method!r}"
        )
    rule = check_in(landmarks or _DEFAULT_LANDMARKS.get(method, "pool"), "landmarks", LANDMARKS)
    num_landmarks = num_features
    if method == "hermite":
        num_landmarks = num_features - E - 1
        if num_landmarks < 1:
            raise ValueError(
                f"method='hermite' uses 1 + E + (quadratic landmarks) features, so num_features "
                f"must be at least E + 2 = {E + 2} for head dimension E={E}; got "
                f"num_features={num_features}"
            )
    if method == "favor+":
        if feature_map is None:
            feature_map = PositiveFeatures(E, num_features, seed=seed, device=q.device)
        elif feature_map.in_features != E:
            raise ValueError(
                f"feature_map has in_features={feature_map.in_features} but the head "
                f"dimension E of query/key is {E}"
            )
    out_dtype = q.dtype
    work = compute_dtype(q.dtype)
    with torch.autocast(q.device.type, enabled=False):
        qw, kw, vw = q.to(work), k.to(work), v.to(work)
        lw = _key_log_weights(attn_mask, key_padding_mask, kw, work)
        spec = _make_spec(method, scale, feature_map, num_landmarks, jitter, pinv, max_iter, tol)
        if method in _DEFAULT_LANDMARKS:
            spec.landmarks = rule
        width = feature_map.num_features if method == "favor+" else num_features
        batch = math.prod(q.shape[:-2])
        chunk = chunk_size or _default_chunk(batch, width if method != "linear" else E)
        chunk = check_positive_int(chunk, "chunk_size")
        fn = _CausalFeatureAttention if is_causal else _FeatureAttention
        out = fn.apply(qw, kw, vw, lw, spec, chunk)
    return out.to(out_dtype)


class DecodingState:
    r"""Incremental causal decoding in ``O(m·E)`` memory, whatever the length so far.

    Holds ``S = Σ_j φ(k_j) v_jᵀ e^{-c}``, ``z = Σ_j φ(k_j) e^{-c}`` and (``"favor+"``) the
    running per-feature key maximum ``c``; :meth:`step` appends tokens and returns their
    outputs, equal (up to rounding) to the corresponding rows of the full causal pass.

    Parameters
    ----------
    method : {"favor+", "linear"}
    scale : float, optional
        Logit scale (default ``1/√E``, resolved at the first step).
    feature_map : PositiveFeatures, optional
        Required for ``"favor+"``: the same features as the full pass.
    """

    def __init__(
        self,
        method: str = "favor+",
        *,
        scale: float | None = None,
        feature_map: PositiveFeatures | None = None,
    ):
        check_in(method, "method", METHODS)
        if method not in CAUSAL_METHODS:
            raise ValueError(
                f"method={method!r} has no causal form (its landmarks see the future); "
                f"incremental decoding exists for {list(CAUSAL_METHODS)}"
            )
        if method == "favor+" and feature_map is None:
            raise ValueError("method='favor+' needs the feature_map used by the full pass")
        self.method, self.scale, self.feature_map = method, scale, feature_map
        self.S: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.length = 0

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Append ``T >= 1`` tokens (shapes ``(..., T, E)``) and return ``(..., T, Ev)``."""
        _check_qkv(q, k, v)
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"step needs as many queries as keys, got {q.shape} and {k.shape}")
        if self.scale is None:
            self.scale = 1.0 / math.sqrt(q.shape[-1])
        spec = _make_spec(self.method, self.scale, self.feature_map, 1, 1e-3, "solve", 1, 1.0)
        work = compute_dtype(q.dtype)
        with torch.autocast(q.device.type, enabled=False):
            qw, kw, vw = q.to(work), k.to(work), v.to(work)
            if self.S is None:
                m = spec.query_fn(qw[..., :1, :], None).shape[-1]
                self.S = qw.new_zeros(*q.shape[:-2], m, v.shape[-1])
                self.z = qw.new_zeros(*q.shape[:-2], m)
                if spec.stab == "feature":
                    self.c = qw.new_full((*q.shape[:-2], 1, m), _NEG)
            out, self.S, self.z, self.c = _causal_chunk(
                spec, qw, kw, vw, None, self.S, self.z, self.c
            )
        self.length += q.shape[-2]
        return out.to(q.dtype)

    def __repr__(self) -> str:
        return f"DecodingState(method={self.method!r}, length={self.length})"


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------
class KernelAttention(nn.Module):
    r"""Multi-head kernel attention, a drop-in for ``nn.MultiheadAttention``.

    ``out = W_o · concat_h kernel_attention(W_q^h x_q, W_k^h x_k, W_v^h x_v)``; see
    :func:`kernel_attention` for the methods. ``forward`` returns ``(output, None)`` like
    ``nn.MultiheadAttention`` with ``need_weights=False`` (attention weights are never formed).

    Parameters
    ----------
    embed_dim, num_heads : int
        ``embed_dim`` must be divisible by ``num_heads``; the head dimension is the quotient.
    method : {"favor+", "nystrom", "hermite", "softmax-free", "linear"}, default "favor+"
    batch_first : bool, default True
        Inputs ``(B, L, embed_dim)``; False means ``(L, B, embed_dim)``.
    num_features : int, default 256
        Random features or landmarks (see :func:`kernel_attention`).
    bias : bool, default True
    kdim, vdim : int, optional
        Key/value input widths (default ``embed_dim``).
    dropout : float, default 0.0
        Dropout on the output projection's input (attention weights do not exist).
    is_causal : bool, default False
        Default for ``forward``'s ``is_causal``.
    redraw_interval : int, optional
        ``"favor+"`` only: redraw the random features every ``redraw_interval`` forward calls
        in training mode (never in eval mode). Default None: never redraw implicitly;
        :meth:`redraw_features` redraws on demand.
    seed : int, torch.Generator or None, default None
        Seeds the feature draws *and* the initial weights (the global RNG is never used).
    **attention_kwargs
        ``jitter``, ``pinv``, ``max_iter``, ``tol``, ``chunk_size``, ``landmarks`` of
        :func:`kernel_attention`.

    Buffers: ``feature_map.projection.weight`` (``"favor+"``), saved in ``state_dict``, and
    ``num_redraws``; loading a state dict reproduces outputs bit for bit.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        method: str = "favor+",
        batch_first: bool = True,
        *,
        num_features: int = 256,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        is_causal: bool = False,
        redraw_interval: int | None = None,
        seed: int | torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **attention_kwargs,
    ):
        super().__init__()
        self.embed_dim = check_positive_int(embed_dim, "embed_dim")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}; the head "
                f"dimension is embed_dim // num_heads"
            )
        self.method = check_in(method, "method", METHODS)
        if is_causal and method not in CAUSAL_METHODS:
            raise ValueError(
                f"method={method!r} cannot be causal (its landmarks see the future); use one of "
                f"{list(CAUSAL_METHODS)}"
            )
        unknown = set(attention_kwargs) - {
            "jitter",
            "pinv",
            "max_iter",
            "tol",
            "chunk_size",
            "landmarks",
        }
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}")
        self.head_dim = embed_dim // num_heads
        self.batch_first, self.is_causal = bool(batch_first), bool(is_causal)
        self.num_features = check_positive_int(num_features, "num_features")
        if redraw_interval is not None:
            redraw_interval = check_positive_int(redraw_interval, "redraw_interval")
        self.redraw_interval = redraw_interval
        if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.attention_kwargs = attention_kwargs
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.generator, self.seed = make_generator(seed)
        fk = {"device": device if device is not None else "cpu", "dtype": dtype}
        # skip_init: nn.Linear would draw from the global RNG; reset_parameters draws instead.
        lin = nn.utils.skip_init
        self.q_proj = lin(nn.Linear, embed_dim, embed_dim, bias=bias, **fk)
        self.k_proj = lin(nn.Linear, self.kdim, embed_dim, bias=bias, **fk)
        self.v_proj = lin(nn.Linear, self.vdim, embed_dim, bias=bias, **fk)
        self.out_proj = lin(nn.Linear, embed_dim, embed_dim, bias=bias, **fk)
        self.feature_map = None
        if method == "favor+":
            self.feature_map = PositiveFeatures(
                self.head_dim,
                num_features,
                seed=numpy_seed_from(self.generator),
                dtype=dtype,
                device=device,
            )
        self.register_buffer("num_redraws", torch.zeros((), dtype=torch.long, device=device))
        self._calls = 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform projection weights and zero biases, as ``nn.MultiheadAttention``,
        drawn from the module's generator."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            fan_in, fan_out = lin.weight.shape[1], lin.weight.shape[0]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = (torch.rand(lin.weight.shape, generator=self.generator) * 2 - 1) * bound
            with torch.no_grad():
                lin.weight.copy_(w.to(lin.weight.dtype))
                if lin.bias is not None:
                    lin.bias.zero_()

    def redraw_features(self, seed: int | torch.Generator | None = None) -> None:
        """Draw new ``"favor+"`` features (in place, same shapes). Without ``seed`` the next
        seed comes from the module's own generator, so a sequence of redraws is reproducible.
        """
        if self.feature_map is None:
            return
        if seed is None:
            seed = numpy_seed_from(self.generator)
        self.feature_map.resample(seed)
        self.num_redraws += 1

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, -1).transpose(1, 2)

    def _check_input(self, x, name: str, width: int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            layout = "(B, L, E)" if self.batch_first else "(L, B, E)"
            raise ValueError(
                f"{name} must be a 3-d tensor shaped {layout} (batch_first={self.batch_first}), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )
        if x.shape[-1] != width:
            raise ValueError(
                f"{name} has last dimension {x.shape[-1]}, expected {width} (embed_dim/kdim/vdim)"
            )
        return x if self.batch_first else x.transpose(0, 1)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool | None = None,
    ) -> tuple[torch.Tensor, None]:
        """``(B, L, E) -> ((B, L, E), None)``; ``key``/``value`` default to ``query``.

        ``key_padding_mask`` is ``(B, S)`` bool (True = padding); ``attn_mask`` may be
        ``(S,)``-style ``(1, S)`` or ``(B·H or B, 1, S)`` (see :func:`kernel_attention`).
        """
        if need_weights:
            raise ValueError(
                "KernelAttention never forms the L x S attention matrix; call it with "
                "need_weights=False (nn.MultiheadAttention's default is True)"
            )
        key = query if key is None else key
        value = key if value is None else value
        q_in = self._check_input(query, "query", self.embed_dim)
        k_in = self._check_input(key, "key", self.kdim)
        v_in = self._check_input(value, "value", self.vdim)
        B, S = k_in.shape[0], k_in.shape[1]
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.shape != (B, S):
                raise ValueError(
                    f"key_padding_mask must have shape (B, S) = {(B, S)}, got "
                    f"{getattr(key_padding_mask, 'shape', type(key_padding_mask).__name__)}"
                )
            key_padding_mask = key_padding_mask[:, None, :]
        if attn_mask is not None and isinstance(attn_mask, torch.Tensor):
            if attn_mask.ndim == 3 and attn_mask.shape[0] == B * self.num_heads:
                attn_mask = attn_mask.view(B, self.num_heads, *attn_mask.shape[1:])
            elif attn_mask.ndim == 3:
                attn_mask = attn_mask[:, None]
        if self.training and self.redraw_interval is not None:
            self._calls += 1
            if self._calls % self.redraw_interval == 0:
                self.redraw_features()
        causal = self.is_causal if is_causal is None else bool(is_causal)
        q = self._heads(self.q_proj(q_in))
        k = self._heads(self.k_proj(k_in))
        v = self._heads(self.v_proj(v_in))
        o = kernel_attention(
            q,
            k,
            v,
            self.method,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=causal,
            num_features=self.num_features,
            feature_map=self.feature_map,
            **self.attention_kwargs,
        )
        o = o.transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], self.embed_dim)
        o = F.dropout(o, self.dropout, self.training)
        out = self.out_proj(o)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def decoding_state(self) -> DecodingState:
        """A fresh :class:`DecodingState` for :meth:`step` (causal methods only)."""
        return DecodingState(self.method, feature_map=self.feature_map)

    def step(self, x: torch.Tensor, state: DecodingState) -> torch.Tensor:
        """Causal self-attention for new tokens ``x`` (``(B, T, E)`` if ``batch_first``)
        given the state of all earlier tokens; updates ``state`` in place."""
        x_in = self._check_input(x, "x", self.embed_dim)
        q = self._heads(self.q_proj(x_in))
        k = self._heads(self.k_proj(x_in))
        v = self._heads(self.v_proj(x_in))
        o = state.step(q, k, v).transpose(1, 2).reshape(*x_in.shape[:2], self.embed_dim)
        out = self.out_proj(o)
        return out if self.batch_first else out.transpose(0, 1)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, method={self.method!r}, "
            f"num_features={self.num_features}, batch_first={self.batch_first}, "
            f"is_causal={self.is_causal}, redraw_interval={self.redraw_interval}, seed={self.seed}"
        )
