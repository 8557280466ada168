"""Fast Walsh–Hadamard transforms, structured to stay compute-bound.

A butterfly loop in torch makes ``log2(p)`` passes over memory and loses to a single dense
GEMM. Instead we use the Sylvester identity ``H_p = H_{p1} ⊗ H_{p2}`` (``p = p1·p2``): viewing
each row as a ``p1 × p2`` matrix ``T``, ``H_p t`` is ``H_{p1} T H_{p2}``, i.e. two small GEMMs
with ``p1 + p2`` instead of ``p`` flops per element (``64`` instead of ``1024`` at p = 1024).
"""

from __future__ import annotations

import math

import torch


def hadamard_matrix(p: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthonormal Sylvester–Hadamard matrix ``H_p / √p`` (``p`` a power of two)."""
    if p < 1 or p & (p - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {p}")
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(p)


def split_power_of_two(p: int) -> tuple[int, int]:
    """Factor ``p = p1 · p2`` with both factors powers of two and as equal as possible."""
    k = p.bit_length() - 1
    return 1 << ((k + 1) // 2), 1 << (k // 2)


def hadamard_transform(t: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """Apply ``H_{p1} ⊗ H_{p2}`` to the last dimension of ``t`` (size ``p1·p2``).

    The result comes back with its two factor axes transposed, i.e. permuted by a fixed
    permutation of the ``p`` coordinates. Structured random features only need *some* fixed
    orthogonal map, and a permutation of an orthogonal map is orthogonal, so we skip the copy
    that undoing the transpose would cost. Exact for ``p2 = 1`` (one dense ``H_p``).
    """
    p1, p2 = h1.shape[0], h2.shape[0]
    lead = t.shape[:-1]
    if p2 == 1:
        return t @ h1
    u = t.reshape(-1, p1, p2) @ h2  # contracts the p2 axis: (N, p1, p2)
    v = u.transpose(-1, -2) @ h1  # contracts the p1 axis: (N, p2, p1)
    return v.reshape(*lead, p1 * p2)
