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
Memory ``O(chunk·m)`` per head beyond the ``(m, E)`` statistics. Not causal: the clusters
see every key.

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

import torch

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
    for step in range(steps + 1):
        if step:  # assign every key to its nearest live centre
            Csq = row_sq_norms(C).unsqueeze(-2).masked_fill(~alive.unsqueeze(-2), float("inf"))
            blocks = chunk_ranges(S, chunk)
            lab = torch.cat(
                [(Csq - 2.0 * (k[..., a:b, :] @ C.mT)).argmin(-1) for a, b in blocks], -1
            )
        wsum = k.new_zeros(*k.shape[:-2], m).scatter_add_(-1, lab, weight)
        sums = k.new_zeros(*k.shape[:-2], m, k.shape[-1]).scatter_add_(
            -2, lab.unsqueeze(-1).expand_as(k), k * weight.unsqueeze(-1)
        )
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
            lab = torch.cat(
                [self._nearest(k[..., a:b, :].detach()) for a, b in chunk_ranges(S, chunk)], -1
            )
        self.labels = lab
        n = k.new_zeros(*k.shape[:-2], m).scatter_add_(-1, lab, keep)
        idx = lab.unsqueeze(-1).expand_as(k)
        sums = k.new_zeros(*k.shape[:-2], m, k.shape[-1]).scatter_add_(
            -2, idx, k * keep.unsqueeze(-1)
        )
        inv = 1.0 / n.clamp_min(1.0).unsqueeze(-1)
        self.Z = sums * inv  # member means (zero for an empty cluster: it has no keys)
        self.S = None
        if spread:
            dev = (k - self.Z.gather(-2, idx)).square() * keep.unsqueeze(-1)
            self.S = k.new_zeros(self.Z.shape).scatter_add_(-2, idx, dev) * inv

    def _nearest(self, x):
        return (self.Csq - 2.0 * (x @ self.C.to(x.dtype).mT)).argmin(-1)

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

    def value_terms(self, k, v, lw):
        """``(V, U, ρ, s_k, s_v)`` of the rank-``r`` value correction (module docstring), in
        units of ``s_k = max|k|`` and ``s_v = max|v|`` over the kept keys of each head
        (``(..., 1, 1)``; so that nothing overflows for any finite input): ``V``
        ``(..., m, r, E)``, ``U / (s_k·s_v)`` ``(..., m, r, Ev)`` and ``ρ / s_v`` ``(..., m)``
        (``ρ_c = max_{j∈c} ‖v_j − v̄_c‖``), or None when ``rank`` is 0. ``k`` and ``lw`` are
        those the map was bound to; keys count with weight ``exp(lw)``. Differentiable
        w.r.t. ``k`` and ``v`` through ``U`` (``V``, ``ρ`` and the units are held
        constant)."""
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
        wsum = k.new_zeros(*k.shape[:-2], m).scatter_add_(-1, lab, w).clamp_min(tiny)
        iv = lab.unsqueeze(-1).expand(*lab.shape, Ev)
        vn = v / sv
        vbar = v.new_zeros(*v.shape[:-2], m, Ev).scatter_add_(-2, iv, vn * w.unsqueeze(-1))
        vbar = vbar / wsum.unsqueeze(-1)
        C = v.new_zeros(*v.shape[:-2], m, Ev * E)
        rho = v.new_zeros(*v.shape[:-2], m)
        for a, b in chunk_ranges(k.shape[-2], self.chunk):
            la = lab[..., a:b]
            d = k[..., a:b, :] - self.Z.gather(-2, la.unsqueeze(-1).expand(*la.shape, E))
            d = d / sk
            dv = vn[..., a:b, :] - vbar.gather(-2, iv[..., a:b, :])
            with torch.no_grad():
                dn = dv.detach().norm(dim=-1).masked_fill(w[..., a:b].detach() <= 0, 0.0)
                rho = rho.scatter_reduce(-1, la, dn, "amax")
            outer = ((dv * w[..., a:b, None]).unsqueeze(-1) * d.unsqueeze(-2)).flatten(-2)
            C.scatter_add_(-2, la.unsqueeze(-1).expand(*la.shape, Ev * E), outer)
        C = C.view(*C.shape[:-1], Ev, E) / wsum[..., None, None]
        V = top_right_singular(C.detach(), r)
        return V, (C @ V.mT).mT, rho, sk, sv

    def value_correction(self, x, mass, terms):
        """``Σ_c mass_c · min(1, ρ_c/‖δ_c‖)·δ_c`` with ``δ_c = γ·s·U_cᵀ V_c x`` for queries
        ``x`` (``(..., L, E)``) and far masses ``mass`` (``(..., L, m)``): ``(..., L, Ev)``.
        The cap at ``ρ_c`` keeps each cluster's corrected value within the distance of its
        farthest member from ``v̄_c`` (the exact tilted mean is a convex combination of the
        members' values); ``O(m·r·(E + Ev + r))`` per query."""
        V, U, rho, sk, sv = terms
        gain = self.scale
        if self.params is not None:
            gain = self.scale * self.params.value_gain.to(x.dtype)[:, None, None]
        g = (x @ V.flatten(-3, -2).mT) * (gain * sk)
        g = g.unflatten(-1, V.shape[-3:-1])  # (..., L, m, r), in units of 1/s_k
        with torch.no_grad():  # U_c's rows σ_ρ·u_ρ are orthogonal: ‖U_cᵀg‖² = Σ_ρ g_ρ²‖U_cρ‖²
            rows = U.detach().square().sum(-1).unsqueeze(-3)  # (..., 1, m, r)
            gd = g.detach()
            top = gd.abs().amax(-1).clamp_min(torch.finfo(gd.dtype).tiny)
            norm = top * ((gd / top.unsqueeze(-1)).square() * rows).sum(-1).sqrt()
            cap = torch.where(norm > rho.unsqueeze(-2), rho.unsqueeze(-2) / norm, 1.0)
        return (((mass * cap).unsqueeze(-1) * g).flatten(-2) @ U.flatten(-3, -2)) * sv
