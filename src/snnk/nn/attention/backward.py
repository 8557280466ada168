r"""The backward passes of non-causal feature attention.

Forward stores only the inputs, the ``m x E`` key sums and the output; every backward here
recomputes the features chunk by chunk, so backward memory is ``O(chunk·m)`` too.

- :func:`affine_backward`: hand-written, for methods whose log-features are an affine form
  ``t = x Pᵀ + const − γ‖x‖²/2`` (``"favor+"``, ``"nystrom"``, ``"softmax-free"``).
- :func:`hermite_backward`: hand-written, for ``"hermite"``'s polynomial features.
- :func:`autograd_backward`: autograd on each chunk (``"linear"``, and any method without a
  hand-written form).

Each returns the gradients of ``(q, k, v, lw, spec, chunk)``, the engine's inputs.
"""

from __future__ import annotations

import torch

from snnk.nn.attention.chunk import (
    autograd_grads,
    chunk_ranges,
    key_features,
    key_log,
    lw_slice,
    query_features,
    query_out,
)


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
    db += (f.mT @ dD)[..., 0]  # a matrix-vector product, no (rows, m) temporary
    return (dN @ B.mT).addcmul_(dD, b.unsqueeze(-2))


def _sums_backward(spec, Zg, Ssum, zsum, dB, db):
    """Gradients of the key sums (and landmarks) from those of ``(B, b) = finish(Z, S, z)``."""
    if not spec.has_finish:
        return dB, db, None
    with torch.enable_grad():
        Sg, zg = Ssum.detach().requires_grad_(), zsum.detach().requires_grad_()
        Bn, bn = spec.finish(Zg, Sg, zg)
        return autograd_grads([Bn, bn], [Sg, zg, Zg], [dB, db])


def affine_backward(ctx, g):
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
        Pg, cg = spec.affine(Zg)
    P, const = Pg.detach().to(q.dtype), cg.detach().to(q.dtype)
    dP, dconst = torch.zeros_like(P), torch.zeros_like(const)
    dB, db = torch.zeros_like(B), torch.zeros_like(b)
    for a, e in chunk_ranges(L, chunk):
        qc, gc = q[..., a:e, :], g[..., a:e, :]
        f = query_features(spec, qc, None, c, (P, const))
        if spec.normalize:
            df = _normalised_query_grad(f, gc, out_all[..., a:e, :], B, b, dB, db)
        else:
            df = gc @ B.mT
            dB += f.mT @ gc
        dq[..., a:e, :] = _logit_backward(df.mul_(f), qc, P, spec.query_sq, spec.gamma, dP, dconst)
    dS, dz, dZ = _sums_backward(spec, Zg, Ssum, zsum, dB, db)
    for a, e in chunk_ranges(S, chunk):
        kc, vc = k[..., a:e, :], v[..., a:e, :]
        fk = key_features(spec, key_log(spec, kc, None, lw_slice(lw, a, e), (P, const)), c)
        dfk = vc @ dS.mT + dz.unsqueeze(-2)
        dv[..., a:e, :] = fk @ dS
        dk[..., a:e, :] = _logit_backward(dfk.mul_(fk), kc, P, spec.key_sq, spec.gamma, dP, dconst)
    if Zg is not None:
        dZ = dZ + torch.autograd.grad([Pg, cg], Zg, [dP.to(Pg.dtype), dconst.to(cg.dtype)])[0]
        ctx.pool.route(dZ, dk)
    return dq, dk, dv, None, None, None


def autograd_backward(ctx, g):
    """Backward by autograd on each recomputed chunk (queries, then the sums, then keys)."""
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
        for a, e in chunk_ranges(L, chunk):
            qc = q[..., a:e, :].detach().requires_grad_()
            out = query_out(spec, qc, Zg, c, Bg, bg)
            gr = autograd_grads(out, [qc, *small], g[..., a:e, :])
            dq[..., a:e, :] = gr[0]
            dB += gr[1]
            db += gr[2]
            if dZ is not None:
                dZ += gr[3]
        dS, dz, dZm = _sums_backward(spec, Zg, Ssum, zsum, dB, db)
        if dZm is not None:
            dZ += dZm
        for a, e in chunk_ranges(S, chunk):
            kc = k[..., a:e, :].detach().requires_grad_()
            vc = v[..., a:e, :].detach().requires_grad_()
            lk = key_log(spec, kc, Zg, lw_slice(lw, a, e))
            fk = key_features(spec, lk, c)
            ins = [kc, vc] + ([Zg] if Zg is not None else [])
            gr = autograd_grads([fk.mT @ vc, fk.sum(-2)], ins, [dS, dz])
            dk[..., a:e, :] = gr[0]
            dv[..., a:e, :] = gr[1]
            if dZ is not None:
                dZ += gr[2]
        if dZ is not None:
            # Landmarks are a linear map of the keys: route dZ back to them.
            ctx.pool.route(dZ, dk)
    return dq, dk, dv, None, None, None


def hermite_backward(ctx, g):
    r"""Hand-written backward of ``"hermite"`` (``ctx.spec`` is a :class:`.methods.Hermite`).

    Features are polynomials of ``x' = r·x`` (keys: ``r·(k − k̄)``) and ``p = x'Uᵀ``: query
    ``f = [1, x', p²/2]``, key ``f = ω·[1, x', p²]``. With ``∂f`` (queries: from
    :func:`_normalised_query_grad`): ``∂x' = ∂f_lin + (∂f_quad ⊙ p·c) U``,
    ``∂U += (∂f_quad ⊙ p·c)ᵀ x'`` (``c = 1`` for queries, 2 for keys); ``U = normalize(Z_l −
    k̄)`` and ``k̄ = Z_last`` get their gradient by autograd on the small landmark tensors,
    then reach the keys through the landmark map.
    """
    q, k, v, lw, Z, Ssum, zsum, _, B, b, out_all = ctx.saved_tensors
    spec, chunk, E = ctx.spec, ctx.chunk, q.shape[-1]
    r = spec.r
    with torch.enable_grad():
        Zg = Z.detach().requires_grad_()
        Ug = spec.directions(Zg)
    U, kbar = Ug.detach(), Z[..., -1:, :]
    dU = torch.zeros_like(U)
    dB, db = torch.zeros_like(B), torch.zeros_like(b)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for a, e in chunk_ranges(q.shape[-2], chunk):
        # alpha: the detached tempering factor (1 in the faithful regime); xs, pq tempered
        f, pq, xs, alpha = spec.query_features(q[..., a:e, :] * r, U)
        df = _normalised_query_grad(f, g[..., a:e, :], out_all[..., a:e, :], B, b, dB, db)
        dquad = df[..., 1 + E :] * pq
        dq[..., a:e, :] = (r * alpha) * (df[..., 1 : 1 + E] + dquad @ U)
        dU += (dquad.mT @ xs).sum_to_size(U.shape)
    dS, dz, dZ = _sums_backward(spec, Zg, Ssum, zsum, dB, db)
    dkbar = torch.zeros_like(kbar)
    for a, e in chunk_ranges(k.shape[-2], chunk):
        xs, vc = (k[..., a:e, :] - kbar) * r, v[..., a:e, :]
        f, pk = spec.polynomial(xs, U, False)
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
