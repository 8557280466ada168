r"""Learned (Hedgehog-style) positive feature maps, one per attention head.

:class:`LearnedFeatureMap` holds, for each of ``H`` heads, separate query and key maps

``log φ_q(q) = q W_qᵀ + b_q − γ‖q‖²/2``,   ``log φ_k(k) = k W_kᵀ + b_k − γ‖k‖²/2``

(``W`` of shape ``(H, m, E)``, ``b`` of shape ``(H, m)``, ``γ = scale``, all four tensors
trainable ``nn.Parameter`` s) so that ``κ(q, k) = φ_q(q)ᵀφ_k(k) = Σ_f exp(log φ_q + log φ_k)``
is positive. At initialisation ``W_q = W_k = [Ω; −Ω]·√scale`` with ``Ω`` orthogonal random
Gaussian directions and ``b = −½ log m``: the antithetic ("hyperbolic") FAVOR+ features of
:class:`snnk.features.PositiveFeatures`, so that ``E κ(q, k) = exp(qᵀk·scale)`` in absolute
scale (the hybrid's window and kernel parts then share one normaliser without any learned
gain). Training (:func:`snnk.nn.attention.transfer.fit_feature_map`) moves the directions and
offsets towards the data: Hedgehog's ``exp(Wx + b)`` maps with their ``±`` pairs (Zhang et
al., ICLR 2024), plus the fixed ``−γ‖x‖²/2`` term that keeps the absolute scale of the
random-feature start. A shift of every ``b_k`` by ``β`` multiplies the kernel by ``e^β``:
that is LoLCATs' learned window/kernel balance, so no separate gain parameter exists.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from snnk._utils import check_positive, check_positive_int
from snnk._utils.random import make_generator, numpy_seed_from
from snnk.features import PositiveFeatures


class LearnedFeatureMap(nn.Module):
    r"""Trainable positive feature maps ``φ_q``, ``φ_k`` per head (see the module docstring).

    Parameters
    ----------
    num_heads : int
        ``H``; inputs are ``(..., H, L, E)``.
    head_dim : int
        ``E``.
    num_features : int, default 64
        ``m`` (even: ``m/2`` directions and their negatives).
    scale : float, optional
        Logit scale of the softmax being imitated, default ``1/√E``.
    seed : int, torch.Generator or None
        Seeds the initial directions (never the global RNG).

    Attributes
    ----------
    weight_q, weight_k : Parameter of shape ``(H, m, E)``
    bias_q, bias_k : Parameter of shape ``(H, m)``
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        num_features: int = 64,
        *,
        scale: float | None = None,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.num_heads = check_positive_int(num_heads, "num_heads")
        self.head_dim = check_positive_int(head_dim, "head_dim")
        self.num_features = check_positive_int(num_features, "num_features")
        if num_features % 2:
            raise ValueError(
                f"num_features must be even for a learned feature map (m/2 directions and "
                f"their negatives), got {num_features}"
            )
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else check_positive(scale, "scale")
        self.generator, self.seed = make_generator(seed)
        shape = (num_heads, num_features, head_dim)
        fk = {"dtype": dtype, "device": device}
        self.weight_q = nn.Parameter(torch.empty(shape, **fk))
        self.weight_k = nn.Parameter(torch.empty(shape, **fk))
        self.bias_q = nn.Parameter(torch.empty(num_heads, num_features, **fk))
        self.bias_k = nn.Parameter(torch.empty(num_heads, num_features, **fk))
        self.reset_parameters()

    @property
    def gamma(self) -> float:
        """``γ`` of the ``−γ‖x‖²/2`` term (``= scale``)."""
        return self.scale

    def reset_parameters(self) -> None:
        """Back to the FAVOR+ start (a restarted generator when ``seed`` is an int)."""
        if self.seed is not None:
            self.generator = make_generator(self.seed)[0]
        A, b = [], []
        for _ in range(self.num_heads):
            pf = PositiveFeatures(
                self.head_dim,
                self.num_features,
                temperature=1.0 / self.scale,
                hyperbolic=True,
                seed=numpy_seed_from(self.generator),
                dtype=torch.float64,
            )
            a, off, _ = pf.affine_form()
            A.append(a)
            b.append(off)
        with torch.no_grad():
            for w in (self.weight_q, self.weight_k):
                w.copy_(torch.stack(A).to(w.dtype))
            for p in (self.bias_q, self.bias_k):
                p.copy_(torch.stack(b).to(p.dtype))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim < 3 or x.shape[-3] != self.num_heads or x.shape[-1] != self.head_dim:
            raise ValueError(
                f"a LearnedFeatureMap for num_heads={self.num_heads}, head_dim={self.head_dim} "
                f"needs inputs shaped (..., H, L, E) = (..., {self.num_heads}, L, "
                f"{self.head_dim}), got {tuple(x.shape)}"
            )

    def log_features(self, x: torch.Tensor, which: str = "query") -> torch.Tensor:
        """``log φ(x)`` of shape ``(..., H, L, m)`` for ``x`` of shape ``(..., H, L, E)``;
        ``which`` is ``"query"`` or ``"key"``."""
        self._check(x)
        if which == "query":
            W, b = self.weight_q, self.bias_q
        elif which == "key":
            W, b = self.weight_k, self.bias_k
        else:
            raise ValueError(f"which must be 'query' or 'key', got {which!r}")
        W, b = W.to(x.dtype), b.to(x.dtype)
        sq = x.square().sum(-1, keepdim=True)
        return x @ W.mT + b.unsqueeze(-2) - (0.5 * self.gamma) * sq

    def forward(self, x: torch.Tensor, which: str = "query") -> torch.Tensor:
        """``φ(x)``, may overflow for large inputs (attention works with :meth:`log_features`)."""
        return torch.exp(self.log_features(x, which))

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"num_features={self.num_features}, scale={self.scale:.4g}, seed={self.seed}"
        )
