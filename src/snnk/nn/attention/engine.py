r"""The chunked engines of feature attention: custom autograd functions over the sequence.

:class:`FeatureAttention` (non-causal) accumulates the key sums ``S = Σ φ_k vᵀ`` and
``z = Σ φ_k`` chunk by chunk with an online per-feature (or scalar) maximum, finishes them
into ``(B, b)`` and computes the query rows chunk by chunk; its backward is the method's
(:mod:`.backward`). :class:`CausalFeatureAttention` carries the prefix sums from chunk to
chunk and differentiates each chunk by autograd, last chunk first. Both store only the
inputs and ``m x E`` states, so memory is ``O(chunk·m)``.
"""

from __future__ import annotations

import torch

from snnk.nn.attention.chunk import (
    NEG,
    autograd_grads,
    causal_chunk,
    chunk_ranges,
    combine,
    key_features,
    key_log,
    lw_slice,
    query_out,
    shift_of,
)
from snnk.nn.attention.landmarks import Landmarks


class _PlainContext:
    """Stands in for the autograd context when an engine's forward runs as plain code."""

    def save_for_backward(self, *tensors) -> None:
        pass


def run_engine(fn, q, k, v, lw, spec, chunk):
    """``fn.apply(q, k, v, lw, spec, chunk)``, or ``fn.forward`` as plain differentiable
    code while ``torch.compile`` traces.

    Dynamo cannot trace the hand-written backwards (they call ``torch.autograd.grad`` on
    recomputed chunks), so compiled code differentiates the chunked forward itself: the
    same values, with the memory of ordinary autograd (``O(L·m)``, all chunks kept).
    """
    if torch.compiler.is_compiling():
        return fn.forward(_PlainContext(), q, k, v, lw, spec, chunk)
    return fn.apply(q, k, v, lw, spec, chunk)


def _cast_affine(spec, Z, dtype):
    if not spec.has_affine:
        return None
    P, const = spec.affine(Z)
    return P.to(dtype), const.to(dtype)


class FeatureAttention(torch.autograd.Function):
    """Non-causal feature attention, ``O(chunk·m)`` working memory in forward and backward.

    ``apply(q, k, v, lw, spec, chunk)``: ``lw`` the per-key log-weights ``(..., S)`` or None,
    ``spec`` an :class:`~snnk.nn.attention.methods.AttentionMethod`.
    """

    @staticmethod
    def forward(ctx, q, k, v, lw, spec, chunk):
        L, S = q.shape[-2], k.shape[-2]
        Z = pool = None
        if spec.num_landmarks:
            keep = None if lw is None else torch.isfinite(lw).to(k.dtype)
            pool = Landmarks(
                spec.landmarks, S, min(spec.num_landmarks, S), keep, chunk, k, spec.lloyd_steps
            )
            Z = pool.compute(k)
        aff = _cast_affine(spec, Z, q.dtype)
        acc = None
        for a, b in chunk_ranges(S, chunk):
            lk = key_log(spec, k[..., a:b, :], Z, lw_slice(lw, a, b), aff)
            c = shift_of(spec, lk)
            fk = key_features(spec, lk, c)
            part = (fk.mT @ v[..., a:b, :], fk.sum(-2), c)
            acc = part if acc is None else combine(acc, part)
        Ssum, zsum, c = acc
        B, b = spec.finish(Z, Ssum, zsum)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        for a, b_ in chunk_ranges(L, chunk):
            out[..., a:b_, :] = query_out(spec, q[..., a:b_, :], Z, c, B, b, aff)
        ctx.spec, ctx.chunk, ctx.pool, ctx.has_lw = spec, chunk, pool, lw is not None
        # ``out`` is saved as an output (no copy): backward reuses it instead of f·B.
        ctx.save_for_backward(q, k, v, lw, Z, Ssum, zsum, c, B, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        return ctx.spec.backward(ctx, g)


class CausalFeatureAttention(torch.autograd.Function):
    """Causal feature attention by chunked prefix sums; states are kept per chunk only."""

    @staticmethod
    def forward(ctx, q, k, v, lw, spec, chunk):
        L = q.shape[-2]
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        m = spec.query_map(q[..., :1, :], None).shape[-1]
        S = q.new_zeros(*batch, m, v.shape[-1])
        z = q.new_zeros(*batch, m)
        c = None
        if spec.stab == "feature":
            c = q.new_full((*batch, 1, m), NEG)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        states = []
        for a, b in chunk_ranges(L, chunk):
            states.append((S, z, c))
            o, S, z, c_new = causal_chunk(
                spec, q[..., a:b, :], k[..., a:b, :], v[..., a:b, :], lw_slice(lw, a, b), S, z, c
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
        bounds = list(chunk_ranges(L, chunk))
        dS = dz = None
        with torch.enable_grad():
            for i in range(n - 1, -1, -1):
                a, b = bounds[i]
                S0 = states[i][0].detach().requires_grad_()
                z0 = states[i][1].detach().requires_grad_()
                qc = q[..., a:b, :].detach().requires_grad_()
                kc = k[..., a:b, :].detach().requires_grad_()
                vc = v[..., a:b, :].detach().requires_grad_()
                out, S1, z1, _ = causal_chunk(
                    spec, qc, kc, vc, lw_slice(lw, a, b), S0, z0, cs[i], cs[i + 1]
                )
                outs, gs = [out], [g[..., a:b, :]]
                if dS is not None:
                    outs += [S1, z1]
                    gs += [dS, dz]
                gr = autograd_grads(outs, [qc, kc, vc, S0, z0], gs)
                dq[..., a:b, :], dk[..., a:b, :], dv[..., a:b, :] = gr[0], gr[1], gr[2]
                dS, dz = gr[3], gr[4]
        return dq, dk, dv, None, None, None
