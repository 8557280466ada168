r"""Sliding-window softmax plus kernel attention with one shared normaliser (LoLCATs / Based).

For query ``i`` the keys split into a window ``W_i`` (``|i − j| < w``; causal:
``0 <= i − j < w``) and the far set ``F_i`` (every other allowed key). With ``s_ij = q_iᵀk_j·
scale`` and a positive kernel ``κ(q, k) = φ_q(q)ᵀφ_k(k)`` that estimates ``exp(s)`` in
absolute scale (:class:`~snnk.nn.attention.learned.LearnedFeatureMap`, FAVOR+ at
initialisation, or the snapped landmark kernel of :mod:`snnk.nn.attention.snap`)

``Ô_i = (Σ_{W_i} e^{s_ij} v_j + Σ_{F_i} κ(q_i, k_j) v_j)
/ (Σ_{W_i} e^{s_ij} + Σ_{F_i} κ(q_i, k_j))``

(LoLCATs eq. 7 with ``ρ_i = 1`` in the absolute-scale convention of
``shared/reference/pretrained-attention.md`` §5). ``w >= L`` is exact softmax attention;
``w = 0`` is pure (learned) linear attention. Both parts are merged in the log domain like
FlashAttention blocks: the window's row maximum and the kernel's row shift are combined by
their maximum, so nothing overflows and no epsilon is added.

Computation, per ``(batch, head)``, in blocks of ``c >= w`` rows: the key sums
``S_t = Σ_{j∈t} φ_k(k_j) v_jᵀ`` and ``z_t`` of every key block ``t`` (key features shifted by
their detached per-feature maximum over all keys), their exclusive prefix and suffix sums
(forward sums of positive terms: no "total − window" cancellation), then for query block
``t`` the dense ``c x 3c`` window logits and kernel values over key blocks ``t−1..t+1``
(causal: ``t−1, t``) plus the far states. Time ``O(L·(c·(E + m) + m·E))``, memory
``O(c² + (L/c)·m·E)`` per head: each block runs under activation checkpointing when a
gradient is needed, so backward recomputes the blocks instead of storing them.

A far kernel with a value correction (the snapped map's ``value_terms`` and
``value_correction``, :mod:`snnk.nn.attention.snap`) adds a function of the query and of the
far masses ``mass_f(q_i) = φ_q(q_i)_f Σ_{j∈F_i} φ_k(k_j)_f`` of every feature ``f`` to the
numerator only (the normaliser is unchanged); it costs ``O(m·r·(E + Ev))`` per query.

A map with cluster labels of the keys it was bound to (the snapped map's ``labels``, shape
``(..., H, S)``; ``hybrid_forward`` must then get those keys) has one-hot key features: they
are built from the labels (no nearest-centre search), and the far keys of the neighbouring
blocks enter by a gather and a scatter instead of products with one-hot matrices (same
values). The far states of all query blocks are one ``nb x nb`` 0/1 matrix times the block
sums (sums of positive terms).
"""

from __future__ import annotations

import numbers

import torch
from torch.utils.checkpoint import checkpoint

from snnk.nn.attention.chunk import NEG, chunk_ranges
from snnk.nn.attention.snap import SnapMap

__all__ = ["FAR_KERNELS", "SnapMap", "check_window", "default_block", "hybrid_forward"]

#: kernels of the far keys: a trainable LearnedFeatureMap, or the snapped landmark kernel
FAR_KERNELS = ("learned", "nystrom")

#: default rows per block when ``window`` is smaller
DEFAULT_BLOCK = 64


def _key_log(fmap, k, lw):
    lk = fmap.log_features(k, "key")
    return lk if lw is None else lk + lw.unsqueeze(-1)


def _key_feats(fmap, k, lw, lab, cmax):
    """Shifted key features ``exp(log φ_k(k) + lw − cmax)``, ``(..., n, m)``; from the bound
    keys' cluster labels ``lab`` (``(..., n)``) when the map has them (a snapped map)."""
    if lab is None:
        return torch.exp(_key_log(fmap, k, lw) - cmax)
    return fmap.label_features(lab, lw, cmax)


def _key_shift(fmap, k, lw, c: int, lab=None) -> torch.Tensor:
    """Detached per-feature maximum of the key log-features, ``(..., 1, m)``."""
    with torch.no_grad():
        if lab is not None:
            return fmap.label_shift(lab, lw).clamp_min(NEG)
        cmax = None
        for a, b in chunk_ranges(k.shape[-2], c):
            mx = _key_log(fmap, k[..., a:b, :], None if lw is None else lw[..., a:b]).amax(
                -2, keepdim=True
            )
            cmax = mx if cmax is None else torch.maximum(cmax, mx)
        return cmax.clamp_min(NEG)


def _maybe_checkpoint(fn, *args):
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _exclusive_sums(x: torch.Tensor, dim: int):
    """Exclusive prefix (blocks ``< t``) and suffix (blocks ``> t``) sums of the blocks of
    ``x`` along ``dim``: sums of positive terms, no "total − window" cancellation."""
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    n = x.shape[dim]
    pre = torch.cat([zero, x.cumsum(dim).narrow(dim, 0, n - 1)], dim)
    suf = x.flip(dim).cumsum(dim).flip(dim)
    return pre, torch.cat([suf.narrow(dim, 1, n - 1), zero], dim)


def _far_sums(x: torch.Tensor, dim: int, lo, hi):
    """``Σ_{u < lo_t} x_u + Σ_{u > hi_t} x_u`` for every block ``t`` (blocks along ``dim``;
    ``hi`` None: the first sum only), one small matrix product of sums of positive terms; the
    exclusive prefix and suffix sums when ``x`` is not finite (``0·∞``) or under tracing."""
    n = x.shape[dim]
    u = torch.arange(n, device=x.device)
    lo_t = torch.as_tensor(lo, device=x.device).unsqueeze(-1)
    mask = u < lo_t
    if hi is not None:
        mask = mask | (u > torch.as_tensor(hi, device=x.device).unsqueeze(-1))
    if not torch.compiler.is_compiling() and bool(torch.isfinite(x.detach()).all()):
        trailing = x.shape[dim:][1:]  # dim is -2 or -3: blocks, then one or two dims
        return (mask.to(x.dtype) @ x.flatten(dim + 1)).unflatten(-1, trailing)
    pre, suf = _exclusive_sums(x, dim)
    out = pre.index_select(dim, torch.as_tensor(lo, device=x.device))
    if hi is not None:
        out = out + suf.index_select(dim, torch.as_tensor(hi, device=x.device))
    return out


def _far_neighbours(fmap, fq, kf, vf, lwf, labf, cmax, far, state, terms):
    """``(num, den, count)`` of a query block plus its far keys ``kf`` in the neighbouring
    key blocks (``far``: the ``(c, n)`` far mask); ``count`` (the far key features summed
    per query) only when the map has a value correction. Keys with cluster labels ``labf``
    (one-hot features ``e_j`` at column ``c(j)``): ``fq φ_kᵀ`` is a gather of ``fq`` and
    ``far·φ_k`` a scatter, with the values of the products."""
    num, den, count = state
    if labf is not None:
        e = fmap.label_weights(labf, lwf, cmax).unsqueeze(-2)
        idx = labf.unsqueeze(-2).expand(*fq.shape[:-1], labf.shape[-1])
        Kl = fq.gather(-1, idx) * e * far
        if terms[0] is not None:
            count = count + torch.zeros_like(fq).scatter_add_(-1, idx, far * e)
    else:
        fk = _key_feats(fmap, kf, lwf, labf, cmax)
        Kl = (fq @ fk.mT) * far
        if terms[0] is not None:
            count = count + far.to(fk.dtype) @ fk
    return num + Kl @ vf, den + Kl.sum(-1, keepdim=True), count


def _correct(fmap, num, qc, fq, count, terms):
    """``num`` plus the map's value correction of the far masses ``fq·count``
    (``(..., c, m)``; ``terms`` from its ``value_terms``, ``(None,)`` when it has none)."""
    if terms[0] is None:
        return num
    return num + fmap.value_correction(qc, fq * count, terms)


def hybrid_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lw: torch.Tensor | None,
    fmap,
    window: int,
    causal: bool,
    scale: float,
    block: int,
) -> torch.Tensor:
    """The hybrid on validated inputs (``(..., H, L, E)``; ``lw`` the per-key log-weights
    ``(..., H, S)`` or None); differentiable w.r.t. ``q, k, v`` and the map's parameters."""
    L, S = q.shape[-2], k.shape[-2]
    w = window
    c = block
    lab = getattr(fmap, "labels", None)  # a snapped map's cluster of every bound key
    if lab is not None and lab.shape != k.shape[:-1]:
        lab = None
    cmax = _key_shift(fmap, k, lw, c, lab)
    vt = fmap.value_terms(k, v, lw) if hasattr(fmap, "value_terms") else None
    vt = (None,) if vt is None else vt

    def block_sums(kb, vb, lwb, labb):
        fk = _key_feats(fmap, kb, lwb, labb, cmax)
        return fk.mT @ vb, fk.sum(-2)

    def part(x, a, b):
        return None if x is None else x[..., a:b]

    sums = [
        _maybe_checkpoint(
            block_sums, k[..., a:b, :], v[..., a:b, :], part(lw, a, b), part(lab, a, b)
        )
        for a, b in chunk_ranges(S, c)
    ]
    Sb = torch.stack([s for s, _ in sums], -3)  # (..., nb, m, Ev)
    zb = torch.stack([z for _, z in sums], -2)  # (..., nb, m)
    nb = Sb.shape[-3]
    local = w > 0 or causal
    if local:  # far states of query block t: key blocks < lo_t and (bidirectional) > hi_t
        lo = [max(0, t - 1) if w > 0 else t for t in range(nb)]
        hi = None if causal else [min(nb - 1, t + 1) for t in range(nb)]
        F, Fz = _far_sums(Sb, -3, lo, hi), _far_sums(zb, -2, lo, hi)
    else:
        total, total_z = Sb.sum(-3), zb.sum(-2)

    def query_block(qc, kl, vl, lwl, labl, Sf, zf, i0: int, j0: int, *terms):
        lq = fmap.log_features(qc, "query") + cmax
        M = lq.detach().amax(-1, keepdim=True)
        fq = torch.exp(lq - M)
        num = fq @ Sf
        den = fq @ zf.unsqueeze(-1)
        count = zf.unsqueeze(-2)
        if kl is None:
            num = _correct(fmap, num, qc, fq, count, terms)
            return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
        pi = torch.arange(i0, i0 + qc.shape[-2], device=qc.device)
        pj = torch.arange(j0, j0 + kl.shape[-2], device=qc.device)
        d = pi.unsqueeze(-1) - pj.unsqueeze(-2)
        if causal:
            win, far = (d >= 0) & (d < w), d >= w
        else:
            win = d.abs() < w
            far = ~win
        # key columns with a far entry: when the block fits in the window (c <= w) the
        # query block's own keys are all in the window, so only the outer blocks count
        cols = slice(None)
        n = qc.shape[-2]
        if n <= w:  # offsets of the keys before and after the query block (shapes only)
            cols = torch.cat(
                [torch.arange(0, i0 - j0), torch.arange(i0 - j0 + n, kl.shape[-2])]
            ).to(qc.device)
        kf, vf = kl[..., cols, :], vl[..., cols, :]
        lwf = None if lwl is None else lwl[..., cols]
        labf = None if labl is None else labl[..., cols]
        if kf.shape[-2]:
            num, den, count = _far_neighbours(
                fmap, fq, kf, vf, lwf, labf, cmax, far[..., cols], (num, den, count), terms
            )
        num = _correct(fmap, num, qc, fq, count, terms)
        if w == 0:
            return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
        s = (qc @ kl.mT) * scale
        if lwl is not None:
            s = s + lwl.unsqueeze(-2)
        s = s.masked_fill(~win, float("-inf"))
        T = torch.maximum(s.detach().amax(-1, keepdim=True), M)
        ew = torch.exp(s - T)
        ek = torch.exp(M - T)
        num = ew @ vl + ek * num
        den = ew.sum(-1, keepdim=True) + ek * den
        return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)

    outs = []
    for t, (a, b) in enumerate(chunk_ranges(L, c)):
        qc = q[..., a:b, :]
        if not local:
            outs.append(
                _maybe_checkpoint(
                    query_block, qc, None, None, None, None, total, total_z, a, 0, *vt
                )
            )
            continue
        j0, j1 = lo[t] * c, min(S, ((t if causal else hi[t]) + 1) * c)
        outs.append(
            _maybe_checkpoint(
                query_block,
                qc,
                k[..., j0:j1, :],
                v[..., j0:j1, :],
                part(lw, j0, j1),
                part(lab, j0, j1),
                F[..., t, :, :],
                Fz[..., t, :],
                a,
                j0,
                *vt,
            )
        )
    return torch.cat(outs, -2)


def default_block(window: int, L: int) -> int:
    """Block rows: at least the window (so the window spans neighbouring blocks only)."""
    return max(1, min(max(window, DEFAULT_BLOCK), max(L, 1)))


def check_window(window, name: str = "window") -> int:
    """``window`` as a non-negative int (``ValueError``/``TypeError`` naming it)."""
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(
            f"{name} must be a non-negative int (keys at distance < window attend exactly), "
            f"got {type(window).__name__} {window!r}"
        )
    if window < 0:
        raise ValueError(
            f"{name} must be >= 0 (0: no exact window, pure kernel attention), got {window}"
        )
    return int(window)
