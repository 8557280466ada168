r"""Incremental causal decoding: the prefix sums of the causal pass, one step at a time."""

from __future__ import annotations

import contextlib
import math

import torch

from snnk._utils import check_in, compute_dtype
from snnk.features import PositiveFeatures
from snnk.nn.attention.chunk import NEG, causal_chunk
from snnk.nn.attention.functional import check_qkv
from snnk.nn.attention.methods import CAUSAL_METHODS, METHODS, make_method


class DecodingState:
    r"""Incremental causal decoding in ``O(m·E)`` memory, whatever the length so far.

    Holds ``S = Σ_j φ(k_j) v_jᵀ e^{-c}``, ``z = Σ_j φ(k_j) e^{-c}`` and (``"favor+"``) the
    running per-feature key maximum ``c``; :meth:`step` appends tokens and returns their
    outputs, equal (up to rounding) to the corresponding rows of the full causal pass.

    Parameters
    ----------
    method : {"favor+", "linear"}
    scale : float, optional
        Logit scale (default ``1/√E``, resolved at the first step).
    feature_map : PositiveFeatures, optional
        Required for ``"favor+"``: the same features as the full pass.
    """

    def __init__(
        self,
        method: str = "favor+",
        *,
        scale: float | None = None,
        feature_map: PositiveFeatures | None = None,
    ):
        check_in(method, "method", METHODS)
        if method not in CAUSAL_METHODS:
            raise ValueError(
                f"method={method!r} has no causal form (its landmarks see the future); "
                f"incremental decoding exists for {list(CAUSAL_METHODS)}"
            )
        if method == "favor+" and feature_map is None:
            raise ValueError("method='favor+' needs the feature_map used by the full pass")
        self.method, self.scale, self.feature_map = method, scale, feature_map
        self.S: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.length = 0

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Append ``T >= 1`` tokens (shapes ``(..., T, E)``) and return ``(..., T, Ev)``."""
        check_qkv(q, k, v)
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"step needs as many queries as keys, got {q.shape} and {k.shape}")
        if self.S is not None and (
            tuple(q.shape[:-2]) != tuple(self.S.shape[:-2]) or v.shape[-1] != self.S.shape[-1]
        ):
            raise ValueError(
                f"step continues a state of batch shape {tuple(self.S.shape[:-2])} and value "
                f"width {self.S.shape[-1]}, got query {tuple(q.shape)} and value "
                f"{tuple(v.shape)}; use a fresh DecodingState for another batch"
            )
        if self.feature_map is not None and q.shape[-1] != self.feature_map.in_features:
            raise ValueError(
                f"query has head dimension {q.shape[-1]} but feature_map has in_features="
                f"{self.feature_map.in_features}"
            )
        scale = 1.0 / math.sqrt(q.shape[-1]) if self.scale is None else self.scale
        spec = make_method(self.method, scale, feature_map=self.feature_map)
        work = compute_dtype(q.dtype)
        meta = q.device.type == "meta"
        with contextlib.nullcontext() if meta else torch.autocast(q.device.type, enabled=False):
            qw, kw, vw = q.to(work), k.to(work), v.to(work)
            S, z, c = self.S, self.z, self.c
            if S is None:
                m = spec.query_map(qw[..., :1, :], None).shape[-1]
                S = qw.new_zeros(*q.shape[:-2], m, v.shape[-1])
                z = qw.new_zeros(*q.shape[:-2], m)
                if spec.stab == "feature":
                    c = qw.new_full((*q.shape[:-2], 1, m), NEG)
            out, S, z, c = causal_chunk(spec, qw, kw, vw, None, S, z, c)
        # commit only after every step of the update succeeded
        self.S, self.z, self.c, self.scale = S, z, c, scale
        self.length += q.shape[-2]
        return out.to(q.dtype)

    def __repr__(self) -> str:
        return f"DecodingState(method={self.method!r}, length={self.length})"
