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
"""

from __future__ import annotations

import torch

from snnk.nn.attention.chunk import NEG, chunk_ranges, row_sq_norms

#: query rows that weigh the keys for the clustering
WEIGHT_ROWS = 128

#: Lloyd steps of the weighted k-means
LLOYD_STEPS = 5


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
    ):
        S = k.shape[-2]
        m = max(1, min(num_landmarks, S))
        self.scale, self.params, self.spread = scale, params, spread
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
