r"""The snapped-landmark far field of the hybrid, parameter-free or trainable.

Every (unmasked) key ``k_j`` is snapped to one of ``m`` clusters ``c(j)`` of the keys; the
far-key kernel is

``κ(q, k_j) = exp(s·(Aq)ᵀz_c + ½·s²·α·Σ_d (Aq)_d² S_{c,d} + β)``,   ``c = c(j)``,

with ``s`` the logit scale, ``z_c`` the mean of the cluster's keys and ``S_c`` their
per-coordinate variance. ``A = I, α = 1, β = 0`` is the parameter-free estimator: the
second-moment factor is ``E exp(s·qᵀδ)`` for a key ``k = z_c + δ`` with Gaussian
``δ ~ N(0, diag S_c)``, the within-cluster spread that plain clustered attention
(``exp(s·qᵀz_c)``, Vyas et al., 2020) drops by Jensen's inequality; it costs ``O(m·E)`` per
query like the first term. :class:`~snnk.nn.attention.learned.LearnedSnapMap` makes ``A``
(per head, ``E x E``), ``α`` and ``β`` (per head) trainable, initialised at that
estimator, so that attention transfer (:func:`snnk.nn.attention.fit_feature_map`) starts
from the best untrained far field and early stopping cannot end worse than it on the
held-out sequences.

Clusters: weighted k-means (Lloyd, ``steps`` steps from contiguous position segments) with
key weights ``ω_j = Σ_{i∈R} softmax_j(s·q_iᵀk_j)``, the softmax mass that ``r`` evenly spaced
query rows ``R`` put on key ``j`` (``O(r·S·E)``): landmarks go where the attention goes
(keys nobody attends to share large clusters, attention sinks get their own). Without
queries the weights are uniform (plain k-means). Assignments are piecewise constant (no
gradient); ``z_c`` and ``S_c`` are member means, so gradients reach the keys through them.
Memory: the ``(rows, m)`` distance blocks of the assignment (no gradient) are as large as
the library's memory budget allows (:mod:`snnk._utils.blocks`), one GEMM and a row minimum
each, beyond the ``(m, E)`` statistics. Not causal: the clusters see every key.

First-order value correction (``rank > 0``, the default): the snapped kernel gives every far key
of a cluster the same weight, so a cluster contributes its mass times its mean value ``v̄_c``.
For Gaussian keys ``k = z_c + δ`` with values linear in ``δ`` the exact sum is

``Σ_{j∈c} exp(s·qᵀk_j) v_j ≈ mass_c(q) · (v̄_c + s·C_c q)``,
``C_c = (1/n_c) Σ_{j∈c} (v_j − v̄_c) δ_jᵀ``  (``Ev x E``),

the mean of ``v`` tilted by ``exp(s·qᵀδ)``. ``C_c q`` costs ``O(E·Ev)`` per cluster and query
(as much as exact attention at a few thousand keys), so it is replaced by its best rank-``r``
form ``C_c ≈ U_c V_c`` (``V_c``: the top ``r`` right singular vectors of ``C_c`` by a few
subspace iterations, ``U_c = C_c V_cᵀ``): ``O(m·r·(E + Ev))`` per query. The hybrid adds
``γ·s·Σ_c mass_c(q) U_c V_c q`` to its numerator only (``mass_c``: the far kernel mass of
cluster ``c`` for that query; the normaliser is unchanged, so weights stay positive);
``γ`` is a trainable per-head gain (``1``: the Gaussian value). The basis ``V_c`` is
treated as constant in backward, like the cluster assignments (gradients reach ``q``, ``k``,
``v`` through ``U_c`` and the masses); at ``r >= min(E, Ev)`` the correction is the full
``C_c`` and exactly differentiable.
"""

from __future__ import annotations

import math

import torch

from snnk._utils.blocks import BLOCK_ELEMENTS
from snnk.nn.attention.chunk import NEG, chunk_ranges, row_sq_norms

#: query rows that weigh the keys for the clustering
WEIGHT_ROWS = 128

#: Lloyd steps of the weighted k-means
LLOYD_STEPS = 5

#: default rank of the first-order value correction (0: none)
VALUE_RANK = 4

#: subspace iterations for the correction's basis
SUBSPACE_STEPS = 4


@torch.no_grad()
def attention_mass(q, k, lw, scale: float, rows: int, chunk: int) -> torch.Tensor:
    """``ω_j = Σ_{i∈R} softmax_j(s·q_iᵀk_j + lw_j)`` over ``rows`` evenly spaced query rows
    ``R``, shape ``(..., S)``; computed over key chunks (a streamed log-sum-exp, then the
    masses)."""
    L, S = q.shape[-2], k.shape[-2]
    r = min(rows, L)
    idx = (torch.arange(r, device=q.device) * L) // r
    qr = q[..., idx, :] * scale
    chunk = nograd_rows(chunk, r * math.prod(qr.shape[:-2]))  # no gradient: larger blocks
    lse = None
    for a, b in chunk_ranges(S, chunk):
        s = qr @ k[..., a:b, :].mT
        if lw is not None:
            s = s + lw[..., a:b].unsqueeze(-2)
        part = torch.logsumexp(s, -1, keepdim=True)
        lse = part if lse is None else torch.logaddexp(lse, part)
    lse = lse.clamp_min(NEG)
    out = []
    for a, b in chunk_ranges(S, chunk):
        s = qr @ k[..., a:b, :].mT
        if lw is not None:
            s = s + lw[..., a:b].unsqueeze(-2)
        out.append(torch.exp(s - lse).sum(-2))
    return torch.cat(out, -1)


def nograd_rows(chunk: int, row_cost: int) -> int:
    """Rows per block of a computation that needs no gradient: at least ``chunk``, else as
    many as the memory budget allows for ``row_cost`` elements per row (fewer, larger
    blocks: the per-call overhead of small blocks dominates these loops)."""
    return max(chunk, BLOCK_ELEMENTS // max(1, row_cost))


@torch.no_grad()
def nearest(x, C, Csq) -> torch.Tensor:
    """Index of the nearest centre, ``argmin_c ‖C_c‖² − 2·xᵀC_c``, of every row of ``x``
    (``(..., n, E)``; ``C`` ``(..., m, E)``, ``Csq`` ``(..., 1, m)``, ``+inf`` for centres
    never chosen), shape ``(..., n)``: one GEMM with ``−2C`` (exact scaling), the norms
    added in place, and a row minimum (``min`` with indices: the first minimum, like
    ``argmin``, and about twice as fast on CPU)."""
    return (x @ (-2.0 * C).mT).add_(Csq).min(-1).indices


def assign(x, C, Csq, chunk: int) -> torch.Tensor:
    """:func:`nearest` over row blocks of ``x`` sized by the memory budget."""
    S = x.shape[-2]
    rows = nograd_rows(chunk, C.shape[-2] * math.prod(x.shape[:-2]))
    if rows >= S:
        return nearest(x, C, Csq)
    return torch.cat([nearest(x[..., a:b, :], C, Csq) for a, b in chunk_ranges(S, rows)], -1)


def cluster_sums(x, lab, m: int, out=None) -> torch.Tensor:
    """``Σ_{j: lab_j = c} x_j`` for ``c < m``: ``x`` ``(..., S, F)`` (or ``(..., S)``) and
    labels ``lab`` ``(..., S)`` give ``(..., m, F)`` (or ``(..., m)``); added to ``out`` in
    place when given. One ``index_add_`` over the flattened batch (rows added in key
    order, like ``scatter_add_``, about 4x faster); differentiable w.r.t. ``x``."""
    batch, S = lab.shape[:-1], lab.shape[-1]
    B = math.prod(batch)
    tail = tuple(x.shape[lab.ndim :])
    x = x.expand(*lab.shape, *tail)
    if out is None:
        out = torch.zeros(*batch, m, *tail, dtype=x.dtype, device=x.device)
    off = (torch.arange(B, device=lab.device) * m).view(*batch, 1)
    flat = out.view(B * m, *tail)
    flat.index_add_(0, (lab + off).reshape(B * S), x.reshape(B * S, *tail))
    return out


@torch.no_grad()
def weighted_kmeans(k, weight, m: int, steps: int, chunk: int):
    """Centres ``(..., m, E)`` and their live flags ``(..., m)`` of weighted k-means of the
    keys ``k`` (``(..., S, E)``) with non-negative ``weight`` (``(..., S)``; zero for
    masked keys): ``steps`` Lloyd steps from the weighted means of ``m`` contiguous
    segments. A centre without weight keeps its place; one that never had weight is not
    live (never chosen)."""
    S = k.shape[-2]
    lab = ((torch.arange(S, device=k.device) * m) // S).expand(*k.shape[:-1])
    C, alive = None, None
    kw = k * weight.unsqueeze(-1)
    for step in range(steps + 1):
        if step:  # assign every key to its nearest live centre
            Csq = row_sq_norms(C).unsqueeze(-2).masked_fill(~alive.unsqueeze(-2), float("inf"))
            lab = assign(k, C, Csq, chunk)
        wsum = cluster_sums(weight, lab, m)
        sums = cluster_sums(kw, lab, m)
        new = sums / wsum.clamp_min(torch.finfo(k.dtype).tiny).unsqueeze(-1)
        has = (wsum > 0).unsqueeze(-1)
        C = torch.where(has, new, 0.0 if C is None else C)
        alive = has[..., 0] if alive is None else alive | has[..., 0]
    return C, alive


@torch.no_grad()
def top_right_singular(C, r: int, steps: int = SUBSPACE_STEPS) -> torch.Tensor:
    """Top-``r`` right singular vectors of the batched matrices ``C`` (``(..., p, E)``), shape
    ``(..., r, E)``, in decreasing order: ``steps`` subspace iterations on ``G = CᵀC`` from a
    fixed generic start, then a Rayleigh-Ritz step, so that the rows ``C v_ρ`` are
    orthogonal (to rounding). About 10x faster than a batched SVD of many small matrices;
    exact when ``r`` is the rank of ``C``."""
    E = C.shape[-1]
    G = C.mT @ C
    i = torch.arange(E, dtype=C.dtype, device=C.device)[:, None]
    j = torch.arange(1, r + 1, dtype=C.dtype, device=C.device)[None]
    X = G @ torch.cos(0.7 * i * j + 0.3)  # generic: no direction is orthogonal to all r
    for _ in range(steps):
        X = torch.linalg.qr(G @ X).Q
    U = torch.linalg.eigh(X.mT @ G @ X)[1].flip(-1)
    return (X @ U).mT


class SnapMap:
    """The far-key kernel of the module docstring in the log-feature interface of a feature
    map (``log φ_q`` of shape ``(..., L, m)``, one-hot ``log φ_k`` with ``−∞`` off the
    cluster), bound to one set of keys.

    Parameters
    ----------
    k : Tensor ``(..., H, S, E)``
    lw : Tensor ``(..., H, S)`` or None
        Per-key log-weights (``−∞``: masked key, left out of every cluster).
    num_landmarks : int
        ``m`` (at most ``S``).
    scale : float
    chunk : int
        Key rows per block.
    q : Tensor ``(..., H, L, E)``, optional
        Queries that weigh the clustering (default: uniform weights, plain k-means).
    params : LearnedSnapMap, optional
        ``A, α, β`` (default: ``I, 1, 0``).
    spread : bool, default True
        Include the second-moment factor (``False``: plain clustered attention).
    rank : int, default VALUE_RANK (4)
        Rank ``r`` of the first-order value correction (0: none; module docstring).
    """

    def __init__(
        self,
        k,
        lw,
        num_landmarks: int,
        scale: float,
        chunk: int,
        *,
        q=None,
        params=None,
        spread: bool = True,
        rank: int = VALUE_RANK,
    ):
        S = k.shape[-2]
        m = max(1, min(num_landmarks, S))
        self.scale, self.params, self.spread = scale, params, spread
        self.rank, self.chunk = rank, chunk
        keep = torch.ones_like(k[..., 0]) if lw is None else torch.isfinite(lw).to(k.dtype)
        with torch.no_grad():
            if q is None:
                weight = keep
            else:
                mass = attention_mass(q.detach(), k.detach(), lw, scale, WEIGHT_ROWS, chunk)
                r = min(WEIGHT_ROWS, q.shape[-2])
                weight = (mass + 1e-3 * r / S) * keep
            self.C, alive = weighted_kmeans(k.detach(), weight, m, LLOYD_STEPS, chunk)
            self.Csq = row_sq_norms(self.C).masked_fill(~alive, float("inf")).unsqueeze(-2)
            lab = assign(k.detach(), self.C, self.Csq, chunk)
        self.labels = lab
        n = cluster_sums(keep, lab, m)
        idx = lab.unsqueeze(-1).expand_as(k)
        sums = cluster_sums(k * keep.unsqueeze(-1), lab, m)
        inv = 1.0 / n.clamp_min(1.0).unsqueeze(-1)
        self.Z = sums * inv  # member means (zero for an empty cluster: it has no keys)
        self.S = None
        if spread:
            dev = (k - self.Z.gather(-2, idx)).square() * keep.unsqueeze(-1)
            self.S = cluster_sums(dev, lab, m) * inv

    def _nearest(self, x):
        return nearest(x, self.C.to(x.dtype), self.Csq.to(x.dtype))

    def log_features(self, x, which):
        """``log φ(x)``, ``(..., L, m)``; ``which`` is ``"query"`` or ``"key"``."""
        if which == "key":
            with torch.no_grad():
                lab = self._nearest(x).unsqueeze(-1)
                out = torch.full(
                    (*lab.shape[:-1], self.C.shape[-2]),
                    float("-inf"),
                    dtype=x.dtype,
                    device=x.device,
                )
                return out.scatter_(-1, lab, 0.0)
        p = self.params
        xa = x if p is None else x @ p.query_map(x.dtype).mT
        out = (xa * self.scale) @ self.Z.mT
        if self.spread:
            alpha = 1.0 if p is None else p.spread.to(x.dtype)[:, None, None]
            out = out + (0.5 * self.scale**2) * alpha * (xa.square() @ self.S.mT)
        if p is not None:
            out = out + p.bias.to(x.dtype)[:, None, None]
        return out

    def label_shift(self, lab, lw) -> torch.Tensor:
        """Per-cluster maximum of the key log-features of keys with cluster labels ``lab``
        (``(..., n)``, those of the bound keys) and log-weights ``lw`` (``(..., n)`` or None):
        ``max_{j: c(j)=c} lw_j`` (0 without weights, ``−∞`` for a cluster without keys),
        shape ``(..., 1, m)``; what ``log_features(k, "key") + lw`` reduce to."""
        dtype = self.Z.dtype if lw is None else torch.promote_types(self.Z.dtype, lw.dtype)
        src = torch.zeros(lab.shape, dtype=dtype, device=lab.device)
        if lw is not None:
            src = src + lw  # 0 + lw, the log-feature at the key's own cluster
        shape = (*lab.shape[:-1], self.Z.shape[-2])
        out = torch.full(shape, float("-inf"), dtype=dtype, device=lab.device)
        return out.scatter_reduce(-1, lab, src, "amax").unsqueeze(-2)

    def label_weights(self, lab, lw, shift) -> torch.Tensor:
        """``exp(lw_j − shift_{c(j)})`` of keys with cluster labels ``lab`` (``(..., n)``,
        ``shift`` ``(..., 1, m)``): the one nonzero key feature of each key, ``(..., n)``."""
        cm = shift.expand(*lab.shape, shift.shape[-1]).gather(-1, lab.unsqueeze(-1))[..., 0]
        return torch.exp(-cm if lw is None else lw - cm)

    def label_features(self, lab, lw, shift) -> torch.Tensor:
        """``exp(log φ_k(k) + lw − shift)`` of keys with cluster labels ``lab`` (``(..., n)``):
        :meth:`label_weights` at column ``c(j)``, 0 elsewhere, ``(..., n, m)``, without the
        nearest-centre search."""
        e = self.label_weights(lab, lw, shift).unsqueeze(-1)
        shape = (*e.shape[:-2], lab.shape[-1], shift.shape[-1])
        out = torch.zeros(shape, dtype=e.dtype, device=e.device)
        return out.scatter_(-1, lab.unsqueeze(-1).expand(e.shape), e)

    def value_terms(self, k, v, lw):
        """``(V, U, ρ, s_k, s_v, ‖U_cρ‖)`` of the rank-``r`` value correction (module
        docstring), in units of ``s_k = max|k|`` and ``s_v = max|v|`` over the kept keys of
        each head (``(..., 1, 1)``; so that nothing overflows for any finite input): ``V``
        ``(..., r·m, E)`` and ``U / (s_k·s_v)`` ``(..., r·m, Ev)`` (row ``ρ·m + c``: cluster
        ``c``'s ``ρ``-th basis vector and its image), ``ρ / s_v`` ``(..., m)``
        (``ρ_c = max_{j∈c} ‖v_j − v̄_c‖``) and the row norms of ``U`` (``(..., 1, r, m)``),
        or None when ``rank`` is 0. ``k`` and ``lw`` are those the map was bound to; keys
        count with weight ``exp(lw)``. Differentiable w.r.t. ``k`` and ``v`` through ``U``
        (``V``, ``ρ``, the norms and the units are held constant)."""
        r = min(self.rank, k.shape[-1], v.shape[-1])
        if r <= 0 or k.shape[-2] == 0:
            return None
        lab, m, Ev, E = self.labels, self.Z.shape[-2], v.shape[-1], k.shape[-1]
        if lw is None:
            w = torch.ones_like(k[..., 0])
        else:  # relative key weights; masked keys (−∞) weigh 0
            w = torch.exp(lw - lw.detach().amax(-1, keepdim=True).clamp_min(NEG))
        tiny = torch.finfo(k.dtype).tiny
        with torch.no_grad():
            live = (w.detach() > 0).unsqueeze(-1)
            sk = (k.detach().abs() * live).amax((-2, -1), keepdim=True).clamp_min(tiny)
            sv = (v.detach().abs() * live).amax((-2, -1), keepdim=True).clamp_min(tiny)
        wsum = cluster_sums(w, lab, m).clamp_min(tiny)
        iv = lab.unsqueeze(-1).expand(*lab.shape, Ev)
        vn = v / sv
        vbar = cluster_sums(vn * w.unsqueeze(-1), lab, m) / wsum.unsqueeze(-1)
        d = (k - self.Z.gather(-2, lab.unsqueeze(-1).expand(*lab.shape, E))) / sk
        dv = vn - vbar.gather(-2, iv)
        with torch.no_grad():
            dn = dv.detach().norm(dim=-1).masked_fill(w.detach() <= 0, 0.0)
            rho = v.new_zeros(*lab.shape[:-1], m).scatter_reduce(-1, lab, dn, "amax")
        wdv = dv * w.unsqueeze(-1)
        C = v.new_zeros(*lab.shape[:-1], m, Ev * E)
        # outer products in blocks of the bound chunk even without gradient: the (rows, Ev·E)
        # blocks then stay in cache (measured faster than larger blocks)
        for a, b in chunk_ranges(k.shape[-2], self.chunk):
            outer = (wdv[..., a:b, :].unsqueeze(-1) * d[..., a:b, :].unsqueeze(-2)).flatten(-2)
            cluster_sums(outer, lab[..., a:b], m, out=C)
        C = C.view(*C.shape[:-1], Ev, E) / wsum[..., None, None]
        V = top_right_singular(C.detach(), r)
        U = (C @ V.mT).mT  # (..., m, r, Ev)
        # ρ-major layouts (..., r·m, ·) for value_correction: its sums over ρ then run over
        # contiguous rows of m
        Vf = V.transpose(-3, -2).flatten(-3, -2).contiguous()
        Uf = U.transpose(-3, -2).flatten(-3, -2)
        un = U.detach().norm(dim=-1).mT.unsqueeze(-3)  # (..., 1, r, m)
        return Vf, Uf, rho, sk, sv, un

    def value_correction(self, x, mass, terms):
        """``Σ_c mass_c · min(1, ρ_c/‖δ_c‖)·δ_c`` with ``δ_c = γ·s·U_cᵀ V_c x`` for queries
        ``x`` (``(..., L, E)``) and far masses ``mass`` (``(..., L, m)``): ``(..., L, Ev)``.
        The cap at ``ρ_c`` keeps each cluster's corrected value within the distance of its
        farthest member from ``v̄_c`` (the exact tilted mean is a convex combination of the
        members' values); ``O(m·r·(E + Ev + r))`` per query. The projections ``g = V_c x'``
        are taken of ``x' = γ·s·s_k·x`` divided by its (detached) largest entry ``t`` (so
        that ``g²`` cannot overflow), and ``t`` multiplies the ``(..., L, Ev)`` result."""
        V, U, rho, sk, sv, un = terms
        gain = self.scale
        if self.params is not None:
            gain = self.scale * self.params.value_gain.to(x.dtype)[:, None, None]
        xg = x * (gain * sk)
        with torch.no_grad():
            t = xg.detach().abs().amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        g = ((xg / t) @ V.mT).unflatten(-1, un.shape[-2:])  # (..., L, r, m), units t/s_k
        with torch.no_grad():  # U_c's rows σ_ρ·u_ρ are orthogonal: ‖U_cᵀg‖ = ‖(g_ρ‖U_cρ‖)_ρ‖
            norm = (g.detach() * un).square_().sum(-2).sqrt_() * t
            rho = rho.unsqueeze(-2)
            cap = torch.where(norm > rho, rho / norm, 1.0)
        return (((mass * cap).unsqueeze(-2) * g).flatten(-2) @ U) * (t * sv)
