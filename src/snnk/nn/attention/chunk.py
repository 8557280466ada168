r"""Chunk-level pieces of feature attention, shared by the engine and the backwards.

A method (:mod:`.methods`) gives key and query maps (log-features or features), a key shift
rule and the map from key sums to the inner products ``(B, b)``; the functions here turn one
chunk of rows into features, stabilise them, merge partial sums and finish the rows. They are
differentiable and run under ``no_grad`` in forward and under autograd in backward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from snnk.features.positive import positive_log_features

#: shift used for features whose every key is masked (``exp(-inf - c)`` must stay 0, not NaN)
NEG = -1e30


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum(-1)


def chunk_ranges(n: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(n, a + size)


def lw_slice(lw, a, b):
    return None if lw is None else lw[..., a:b]


def autograd_grads(outputs, inputs, grads):
    """``torch.autograd.grad`` that tolerates inputs the outputs do not depend on (and
    outputs that depend on no input, such as one-hot key features)."""
    if not isinstance(outputs, list | tuple):
        outputs, grads = [outputs], [grads]
    pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    res = torch.autograd.grad(
        [o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(res, inputs, strict=True)]


def _affine_logits(x, P, const, sq: bool, gamma: float):
    """``x Pᵀ + const`` (minus ``γ‖x‖²/2`` when ``sq``), shape ``(..., rows, m)``: the
    positive-feature affine form (:func:`snnk.features.positive_log_features`)."""
    sq_norms = row_sq_norms(x).unsqueeze(-1) if sq else None
    return positive_log_features(x @ P.mT, sq_norms, const.unsqueeze(-2), gamma)


def key_log(spec, k_c, Z, lw_c, aff=None):
    if aff is None:
        t = spec.key_map(k_c, Z)
    else:
        t = _affine_logits(k_c, *aff, spec.key_sq, spec.gamma)
    if spec.max_log is not None:
        t = t.clamp_max_(spec.max_log)  # in place: t is a fresh tensor no op saved
    if lw_c is None:
        return t
    if spec.log_domain:
        return t + lw_c.unsqueeze(-1)
    return t * torch.exp(lw_c).unsqueeze(-1)


def shift_of(spec, lk: torch.Tensor) -> torch.Tensor | None:
    """Detached key shift ``c`` of shape ``(..., 1, m)`` or ``(..., 1, 1)`` (or None)."""
    if spec.stab is None:
        return None
    with torch.no_grad():
        c = lk.amax(-2, keepdim=True)
        if spec.stab == "scalar":
            c = c.amax(-1, keepdim=True)
        return c.clamp_min(NEG)


def key_features(spec, lk, c):
    if not spec.log_domain:
        return lk
    return torch.exp(lk - c) if c is not None else torch.exp(lk)


def query_features(spec, q_c, Z, c, aff=None):
    if aff is None:
        t = spec.query_map(q_c, Z)
    else:
        t = _affine_logits(q_c, *aff, spec.query_sq, spec.gamma)
    if spec.max_log is not None:
        t = t.clamp_max_(spec.max_log)  # in place: t is a fresh tensor no op saved
    if not spec.log_domain:
        return t
    if spec.stab == "feature":
        t = t + c
    if spec.normalize:
        t = t - t.detach().amax(-1, keepdim=True)
    return torch.exp(t)


def _finish(spec, num, den):
    if not spec.normalize:
        return num
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), 0.0)


def _rescale(S, z, c_old, c_new):
    if c_new is None:
        return S, z
    r = torch.exp(c_old - c_new)  # (..., 1, m) or (..., 1, 1)
    return S * r.mT, z * r[..., 0, :]


def combine(a, b):
    """Online merge of two ``(S, z, c)`` triples with different key shifts."""
    (S1, z1, c1), (S2, z2, c2) = a, b
    if c1 is None:
        return S1 + S2, z1 + z2, None
    c = torch.maximum(c1, c2)
    S1, z1 = _rescale(S1, z1, c1, c)
    S2, z2 = _rescale(S2, z2, c2, c)
    return S1 + S2, z1 + z2, c


def query_out(spec, q_c, Z, c, B, b, aff=None):
    fq = query_features(spec, q_c, Z, c, aff)
    num = fq @ B
    den = (fq @ b.unsqueeze(-1)) if spec.normalize else None
    return _finish(spec, num, den)


def causal_chunk(spec, q_c, k_c, v_c, lw_c, S, z, c_in, c_out=None):
    """One causal chunk: outputs of its queries and the state after its keys.

    Queries ``i`` of the chunk see the carried state (all earlier chunks) and keys ``j <= i``
    of the chunk itself. ``c_out`` (the running key maximum after this chunk) is computed
    when not given.
    """
    lk = key_log(spec, k_c, None, lw_c)
    if spec.stab is not None and c_out is None:
        c_out = torch.maximum(c_in, shift_of(spec, lk))
    fk = key_features(spec, lk, c_out)
    fq = query_features(spec, q_c, None, c_out)
    S, z = _rescale(S, z, c_in, c_out)
    A = (fq @ fk.mT).tril()
    num = fq @ S + A @ v_c
    den = fq @ z.unsqueeze(-1) + A.sum(-1, keepdim=True)
    out = _finish(spec, num, den)
    return out, S + fk.mT @ v_c, z + fk.sum(-2), c_out
