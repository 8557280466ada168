r"""Attention landmarks: a linear map ``Z = P k`` of the keys, per (batch, head).

Pooled (adaptive average pooling), one Lloyd step from the pooled rows (``"kmeans"``) or
selected keys (``"select"``), all computed chunk by chunk with segment sums and gathers and
masked keys excluded; :meth:`Landmarks.route` applies ``Pᵀ`` to a landmark gradient.
"""

from __future__ import annotations

import torch

from snnk.nn.attention.chunk import _chunks, _sq


def _segments(S: int, m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start/end of the ``m`` adaptive-pooling segments of ``range(S)`` (PyTorch's rule)."""
    i = torch.arange(m, device=device)
    return (i * S) // m, ((i + 1) * S + m - 1) // m


class Landmarks:
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
            # keys in two segments also join the second; the others add 0 there (no boolean
            # indexing: its data-dependent shape has no meta kernel and breaks compiled graphs)
            two = (hi != lo).to(xc.dtype).unsqueeze(-1)
            out = out + part.index_add_(-2, hi, xc * two)
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
