r"""Attention landmarks: a linear map ``Z = P k`` of the keys, per (batch, head).

Pooled (adaptive average pooling), one Lloyd step from the pooled rows (``"kmeans"``) or
selected keys (``"select"``), all computed chunk by chunk with segment sums and gathers and
masked keys excluded; :meth:`Landmarks.route` applies ``Pᵀ`` to a landmark gradient.
"""

from __future__ import annotations

import torch

from snnk.nn.attention.chunk import chunk_ranges, row_sq_norms


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

    def __init__(
        self,
        kind: str,
        S: int,
        m: int,
        keep: torch.Tensor | None,
        chunk: int,
        k,
        steps: int = 1,
    ):
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
        _, end = _segments(S, m, dev)
        # keys in more than one segment, as (key, each later segment), from the shapes alone
        # (no data-dependent indexing: meta and compiled graphs work); none when m divides S,
        # several per key when m > S
        self.twice = [
            (j, i + 1)
            for i in range(m - 1)
            for j in range(((i + 1) * S) // m, ((i + 1) * S + m - 1) // m)
        ]
        j = torch.arange(S, device=dev)
        self.lo = torch.searchsorted(end, j, right=True)  # first segment holding key j
        w = torch.ones(S, 1, dtype=dt, device=dev) if keep is None else keep.unsqueeze(-1)
        counts = self._segment_sum(lambda a, b: w[..., a:b, :], S, 1, k)[..., 0]
        self.counts = counts.clamp_min(1.0)
        if kind == "kmeans":
            Z = None
            for _ in range(steps):
                Z = self._lloyd(k, Z)

    def _weight(self, a: int, b: int, like: torch.Tensor) -> torch.Tensor:
        keep = torch.ones_like(like[..., 0]) if self.keep is None else self.keep[..., a:b]
        return keep.unsqueeze(-1)

    def _twice_in(self, a: int, b: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Keys of ``[a, b)`` (offsets from ``a``) that also lie in a second segment, and it."""
        pairs = [(j - a, seg) for j, seg in self.twice if a <= j < b]
        if not pairs:
            return None
        t = torch.tensor(pairs, device=device)
        return t[:, 0], t[:, 1]

    def _segment_sum(self, get, S: int, F: int, like: torch.Tensor) -> torch.Tensor:
        """``Σ_{j ∈ segment} x_j`` with ``x[..., a:b, :] = get(a, b)`` (already masked)."""
        out = 0
        for a, b in chunk_ranges(S, self.chunk):
            xc = get(a, b)
            part = like.new_zeros(*xc.shape[:-2], self.m, F)
            part.index_add_(-2, self.lo[a:b], xc)
            twice = self._twice_in(a, b, xc.device)
            if twice is not None:  # keys in two segments also join the second
                part.index_add_(-2, twice[1], xc.index_select(-2, twice[0]))
            out = out + part
        return out

    def _pooled(self, k: torch.Tensor) -> torch.Tensor:
        def masked(a, b):
            if self.keep is None:
                return k[..., a:b, :]
            return k[..., a:b, :] * self._weight(a, b, k[..., a:b, :])

        sums = self._segment_sum(masked, k.shape[-2], k.shape[-1], k)
        return sums / self.counts.unsqueeze(-1)

    def _lloyd(self, k: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """One Lloyd step from ``start`` (default the pooled rows); returns the new landmarks.
        Gradients follow the last step's member means (an empty landmark routes as pooled)."""
        Z0 = self._pooled(k) if start is None else start
        Zsq = row_sq_norms(Z0).unsqueeze(-2)
        labels, sums, sizes = [], 0, 0
        for a, b in chunk_ranges(k.shape[-2], self.chunk):
            kc = k[..., a:b, :]
            # nearest landmark of every key (‖k‖² is the same for all landmarks of a key)
            lab = (Zsq - 2.0 * (kc @ Z0.mT)).argmin(-1)
            w = self._weight(a, b, kc).expand(*lab.shape, 1)
            s = kc.new_zeros(*lab.shape[:-1], self.m, kc.shape[-1])
            kw = kc if self.keep is None else kc * w
            sums = sums + s.scatter_add_(-2, lab.unsqueeze(-1).expand_as(kc), kw)
            c = kc.new_zeros(*lab.shape[:-1], self.m)
            sizes = sizes + c.scatter_add_(-1, lab, w[..., 0])
            labels.append(lab)
        self.labels, self.sizes = torch.cat(labels, -1), sizes
        self.Z = torch.where(
            (sizes > 0).unsqueeze(-1), sums / sizes.clamp_min(1.0).unsqueeze(-1), Z0
        )
        return self.Z

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
        for a, b in chunk_ranges(k.shape[-2], self.chunk):
            Z = Z + self._select_matrix(a, b) @ k[..., a:b, :]
        return Z

    def route(self, dZ: torch.Tensor, dk: torch.Tensor) -> None:
        """``dk += Pᵀ dZ`` (the landmarks' gradient reaching the keys)."""
        if self.kind == "select":
            for a, b in chunk_ranges(dk.shape[-2], self.chunk):
                dk[..., a:b, :] += (self._select_matrix(a, b).mT @ dZ).expand_as(dk[..., a:b, :])
            return
        pooled = dZ / self.counts.unsqueeze(-1)
        if self.kind == "kmeans":
            nonempty = (self.sizes > 0).unsqueeze(-1)
            member = torch.where(nonempty, dZ / self.sizes.clamp_min(1.0).unsqueeze(-1), 0.0)
            pooled = torch.where(nonempty, 0.0, pooled)
        for a, b in chunk_ranges(dk.shape[-2], self.chunk):
            g = pooled.index_select(-2, self.lo[a:b])
            twice = self._twice_in(a, b, dZ.device)
            if twice is not None:  # keys in more than one segment get each one's share
                g = g.index_add(-2, twice[0], pooled.index_select(-2, twice[1]))
            if self.kind == "kmeans":
                lab = self.labels[..., a:b].unsqueeze(-1)
                g = g + member.gather(-2, lab.expand(*lab.shape[:-1], dZ.shape[-1]))
            if self.keep is not None:
                g = g * self._weight(a, b, dk[..., a:b, :])
            dk[..., a:b, :] += g.expand_as(dk[..., a:b, :])
