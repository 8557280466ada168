r"""Whole-sequence forward of the global feature attentions, for calls without autograd.

The chunked engines (:mod:`.engine`, :mod:`.hybrid`) serve every case (causal, windows,
gradients, long sequences) in row chunks of ``O(chunk·m)`` memory; on a no-grad
bidirectional call with no window that generality costs dozens of small operations per
chunk. Here the same estimator runs on whole sequences, a block of heads at a time:

``"hedgehog"`` (:class:`~snnk.nn.attention.learned.LearnedFeatureMap`, ``window = 0``)

* ``G = K W_kᵀ − γ‖k‖²/2 (+ log-weights of the keys)``, one GEMM per block of heads; the key
  bias ``b_k`` is left out of ``G`` and moved to the query side (``φ_qᵀφ_k`` only sees
  ``b_q + b_k``);
* ``c = max_j G_j`` per head and feature (the key shift of :func:`.hybrid.hybrid_forward`,
  ``-1e30`` where every key is masked), ``Φ_k = exp(G − c)`` in place;
* ``S = Φ_kᵀ V`` (one GEMM), ``z = Φ_kᵀ 1``;
* ``T = Q W_qᵀ + b_q + b_k + c``, ``Φ_q = exp(T − max_f T)`` in place (the row maximum;
  ``−γ‖q‖²/2`` is a per-row constant that the normalisation cancels, so it is not added);
* ``out = Φ_q S / Φ_q z`` (rows whose every key is masked: 0).

Every key feature has a key with ``Φ_k = 1`` and every query row a feature with ``Φ_q = 1``,
so ``z_f >= 1`` and the denominator is ``>= 1`` (or exactly 0 when every key is masked):
nothing overflows or divides by ~0 for finite input. The result equals the chunked path's to
rounding.

``"linear"`` (``φ(x) = elu(x) + 1``, evaluated as ``exp(min(x, 0)) + max(x, 0)``, which
avoids ``aten::elu``): ``S = Φ_kᵀ V``, ``z = Φ_kᵀ 1`` (keys weighted by ``exp`` of their
log-weights), ``out = Φ_q S / Φ_q z``.

Blocks hold about :data:`FAST_BLOCK_ELEMENTS` feature entries (8 MiB in float32: every
head of a sequence of MiniLM's shape at L = 2,048 with m = 64 in one block; at that shape,
one thread, whole-sequence blocks ran 10-15 % faster than L2-sized blocks of 2¹⁸ entries).
The path is taken only when one head's ``(rows, m)`` features fit
:data:`snnk._utils.blocks.BLOCK_ELEMENTS`. Timings: ``docs/convert.md``.
"""

from __future__ import annotations

import math

import torch

from snnk._utils.blocks import BLOCK_ELEMENTS
from snnk.nn.attention.chunk import NEG

__all__ = ["FAST_BLOCK_ELEMENTS", "fast_path_applies", "learned_global", "linear_global"]

#: feature entries of one block of heads (or sequences) of the whole-sequence path
FAST_BLOCK_ELEMENTS = 1 << 21


def fast_path_applies(rows: int, width: int, *tensors: torch.Tensor) -> bool:
    """Whether the whole-sequence path serves a call: no gradient is needed for any of
    ``tensors`` (inputs and map parameters), ``torch.compile`` is not tracing (compiled
    code keeps the chunked forward it differentiates), and one head's ``(rows, width)``
    features fit the memory budget."""
    if torch.compiler.is_compiling() or rows * width > BLOCK_ELEMENTS:
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A block ``(nb, hb, rows, cols)`` as ``(nb·hb, rows, cols)`` (a copy only when its
    layout has no such view)."""
    return t.reshape(-1, *t.shape[-2:])


def _finish_rows(fq, Sk, z, dest) -> None:
    """``dest = (Φ_q S) / (Φ_q z)`` for 3-d ``fq`` (``dest``: a contiguous block); rows with
    ``Φ_q z = 0`` have ``Φ_q S = 0`` (every product term has a zero factor) and are divided
    by 1 instead. (One GEMM with ``[S | z]`` measured no faster.)"""
    o3 = torch.bmm(fq, Sk, out=dest.view(fq.shape[0], fq.shape[1], Sk.shape[-1]))
    den = torch.bmm(fq, z.unsqueeze(-1))
    o3.div_(torch.where(den > 0, den, 1.0))


def _blocks(batch: int, heads: int, rows: int, width: int):
    """``(b0, b1, h0, h1)`` blocks of about :data:`FAST_BLOCK_ELEMENTS` feature entries:
    whole sequences (all heads) when one fits, else head blocks of one sequence."""
    per_head = max(1, rows * width)
    hb = max(1, FAST_BLOCK_ELEMENTS // per_head)
    if hb >= heads:
        nb = max(1, FAST_BLOCK_ELEMENTS // (per_head * heads))
        for b0 in range(0, batch, nb):
            yield b0, min(batch, b0 + nb), 0, heads
        return
    for b0 in range(batch):
        for h0 in range(0, heads, hb):
            yield b0, b0 + 1, h0, min(heads, h0 + hb)


def _block_capacity(batch: int, heads: int, rows: int, width: int) -> int:
    """Largest ``nb·hb`` of :func:`_blocks` (the size of the reused feature buffer)."""
    return max((b1 - b0) * (h1 - h0) for b0, b1, h0, h1 in _blocks(batch, heads, rows, width))


def _per_block(t: torch.Tensor, nb: int, h0: int, h1: int) -> torch.Tensor:
    """Per-head ``(H, a, b)`` tensor for a block: ``(hb, a, b)``, or ``(nb·H, a, b)``."""
    t = t[h0:h1]
    return t if nb == 1 else t.expand(nb, *t.shape).reshape(-1, *t.shape[1:])


@torch.no_grad()
def learned_global(q, k, v, lw, fmap) -> torch.Tensor:
    """Bidirectional ``window = 0`` hybrid attention (pure learned kernel) on whole sequences.

    Parameters
    ----------
    q, k, v : Tensors ``(..., H, L, E)``, ``(..., H, S, E)``, ``(..., H, S, Ev)``
        Validated, one floating dtype (the compute dtype).
    lw : Tensor ``(..., H, S)`` or None
        Per-key log-weights (``-inf`` drops a key).
    fmap : LearnedFeatureMap
        ``H`` heads of dimension ``E``.

    Returns
    -------
    Tensor ``(..., H, L, Ev)`` (module docstring), equal to
    :func:`snnk.nn.attention.hybrid.hybrid_forward` with ``window = 0`` to rounding.
    """
    H, L = q.shape[-3:-1]
    S, Ev = k.shape[-2], v.shape[-1]
    m = fmap.num_features
    nseq = math.prod(q.shape[:-3])
    out = q.new_empty(*q.shape[:-1], Ev)
    if nseq == 0 or L == 0:
        return out
    q4, k4, v4 = (t.reshape(nseq, H, *t.shape[-2:]) for t in (q, k, v))
    o4 = out.view(nseq, H, L, Ev)
    lw4 = None if lw is None else lw.reshape(nseq, H, S)
    dt = q.dtype
    WqT, WkT = fmap.weight_q.to(dt).mT, fmap.weight_k.to(dt).mT  # (H, E, m)
    bias = (fmap.bias_q.to(dt) + fmap.bias_k.to(dt)).unsqueeze(-2)  # (H, 1, m)
    half_gamma = 0.5 * fmap.gamma
    rows = max(L, S)
    # one feature buffer for keys, then queries, reused by every block
    buf = q.new_empty(_block_capacity(nseq, H, rows, m) * rows * m)
    for b0, b1, h0, h1 in _blocks(nseq, H, rows, m):
        nb, n3 = b1 - b0, (b1 - b0) * (h1 - h0)
        ks = _flat(k4[b0:b1, h0:h1])
        G = torch.bmm(ks, _per_block(WkT, nb, h0, h1), out=buf[: n3 * S * m].view(n3, S, m))
        sq = torch.linalg.vector_norm(ks, dim=-1, keepdim=True).square_()
        G.add_(sq, alpha=-half_gamma)
        if lw4 is not None:
            G.add_(_flat(lw4[b0:b1, h0:h1].unsqueeze(-1)))
        c = G.amax(-2, keepdim=True).clamp_min_(NEG)  # (n3, 1, m)
        G.sub_(c).exp_()
        Sk = torch.bmm(G.mT, _flat(v4[b0:b1, h0:h1]))  # (n3, m, Ev)
        z = G.sum(-2)  # (n3, m)
        T = torch.bmm(
            _flat(q4[b0:b1, h0:h1]),
            _per_block(WqT, nb, h0, h1),
            out=buf[: n3 * L * m].view(n3, L, m),
        )
        T.add_(c.add_(_per_block(bias, nb, h0, h1)))
        T.sub_(T.amax(-1, keepdim=True)).exp_()
        _finish_rows(T, Sk, z, o4[b0:b1, h0:h1])
    return out


def _elu_plus_one(x: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1 = exp(min(x, 0)) + max(x, 0)`` written into ``out`` (``tmp``: a scratch
    buffer of at least as many entries); four cheap passes instead of ``aten::elu``."""
    torch.clamp_max(x, 0.0, out=out).exp_()
    return out.add_(torch.clamp_min(x, 0.0, out=tmp[: x.numel()].view(x.shape)))


@torch.no_grad()
def linear_global(q, k, v, lw) -> torch.Tensor:
    """Bidirectional ``"linear"`` attention (``φ = elu + 1``) on whole sequences.

    Parameters
    ----------
    q, k, v : Tensors ``(..., L, E)``, ``(..., S, E)``, ``(..., S, Ev)``
        Validated, one floating dtype.
    lw : Tensor ``(..., S)`` or None
        Per-key log-weights: key ``j``'s features are multiplied by ``exp(lw_j)``.

    Returns
    -------
    Tensor ``(..., L, Ev)``: ``Φ_q S / Φ_q z`` with ``S = Φ_kᵀ V``, ``z = Φ_kᵀ 1`` (rows
    whose denominator is 0 give 0), equal to the chunked engine's to rounding.
    """
    L, E = q.shape[-2:]
    S, Ev = k.shape[-2], v.shape[-1]
    batch = q.shape[:-2]
    n = math.prod(batch)
    out = q.new_empty(*q.shape[:-1], Ev)
    if n == 0 or L == 0:
        return out
    q3, k3, v3 = (t.reshape(n, *t.shape[-2:]) for t in (q, k, v))
    o3 = out.view(n, L, Ev)
    lw3 = None if lw is None else lw.reshape(n, S)
    rows = max(L, S)
    cap = _block_capacity(n, 1, rows, E) * rows * E
    buf, tmp = q.new_empty(cap), q.new_empty(cap)
    for b0, b1, _, _ in _blocks(n, 1, rows, E):
        nb = b1 - b0
        fk = _elu_plus_one(k3[b0:b1], buf[: nb * S * E].view(nb, S, E), tmp)
        if lw3 is not None:
            fk.mul_(lw3[b0:b1].exp().unsqueeze(-1))
        Sk = torch.bmm(fk.mT, v3[b0:b1])  # (nb, E, Ev)
        z = fk.sum(-2)  # (nb, E)
        fq = _elu_plus_one(q3[b0:b1], buf[: nb * L * E].view(nb, L, E), tmp)
        _finish_rows(fq, Sk, z, o3[b0:b1])
    return out
