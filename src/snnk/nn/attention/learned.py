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

from snnk._utils import check_finite, check_positive, check_positive_int
from snnk._utils.random import make_generator, numpy_seed_from
from snnk.features import PositiveFeatures
from snnk.nn.attention.hybrid import check_window, default_block, hybrid_forward
from snnk.nn.attention.snap import VALUE_RANK, SnapMap


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


class LearnedSnapMap(nn.Module):
    r"""Trainable far field of snapped landmarks: ``A``, ``α``, ``β``, ``γ`` per head
    (:mod:`snnk.nn.attention.snap`), initialised at the parameter-free estimator
    (``I``, 1, 0, 1).

    Parameters
    ----------
    num_heads, head_dim : int
        ``H`` and ``E``; inputs are ``(..., H, L, E)``.
    num_landmarks : int, default 256
        Clusters ``m`` per sequence and head.
    scale : float, optional
        Logit scale of the softmax being imitated, default ``1/√E``.
    value_rank : int, default 4
        Rank ``r`` of the first-order value correction of each cluster (0: none): the far
        keys of cluster ``c`` contribute ``mass_c(q)·(v̄_c + γ·s·U_c V_c q)`` instead of
        ``mass_c(q)·v̄_c`` (:mod:`snnk.nn.attention.snap`).

    Attributes
    ----------
    weight : Parameter ``(H, E, E)``
        ``W`` of the query map ``A = I + W/E`` applied before the landmark kernel (the
        ``1/E`` makes an Adam step move ``A`` by about ``lr`` in norm, like ``α`` and ``β``).
    spread : Parameter ``(H,)``
        ``α``, the weight of the second-moment factor.
    bias : Parameter ``(H,)``
        ``β``, the log-balance of far keys against the exact window.
    value_gain : Parameter ``(H,)``
        ``γ``, the gain of the value correction (1: the Gaussian value).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        num_landmarks: int = 256,
        *,
        scale: float | None = None,
        value_rank: int = VALUE_RANK,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.num_heads = check_positive_int(num_heads, "num_heads")
        self.head_dim = check_positive_int(head_dim, "head_dim")
        self.num_landmarks = check_positive_int(num_landmarks, "num_landmarks")
        if isinstance(value_rank, bool) or not isinstance(value_rank, int) or value_rank < 0:
            raise ValueError(
                f"value_rank must be a non-negative int (rank of the value correction, 0: "
                f"none), got {value_rank!r}"
            )
        self.value_rank = value_rank
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else check_positive(scale, "scale")
        fk = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, head_dim, **fk))
        self.spread = nn.Parameter(torch.empty(num_heads, **fk))
        self.bias = nn.Parameter(torch.empty(num_heads, **fk))
        self.value_gain = nn.Parameter(torch.empty(num_heads, **fk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Back to the parameter-free estimator: ``A = I``, ``α = 1``, ``β = 0``, ``γ = 1``."""
        with torch.no_grad():
            self.weight.zero_()
            self.spread.fill_(1.0)
            self.bias.zero_()
            self.value_gain.fill_(1.0)

    def query_map(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``A = I + W/E``, ``(H, E, E)``."""
        eye = torch.eye(self.head_dim, dtype=self.weight.dtype, device=self.weight.device)
        A = eye + self.weight / self.head_dim
        return A if dtype is None else A.to(dtype)

    def bind(self, q, k, lw, chunk: int) -> SnapMap:
        """The kernel for one set of (validated) queries and keys."""
        return SnapMap(
            k, lw, self.num_landmarks, self.scale, chunk, q=q, params=self, rank=self.value_rank
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        window: int = 64,
        key_padding_mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        r"""Bidirectional hybrid attention with this far field: exact softmax for
        ``|i − j| < window``, the snapped kernel for the other keys, one normaliser
        (:mod:`snnk.nn.attention.hybrid`).

        Parameters
        ----------
        q, k, v : Tensors ``(..., H, L, E)``, ``(..., H, L, E)``, ``(..., H, L, Ev)``
        window : int, default 64
        key_padding_mask : bool Tensor ``(..., L)``, optional
            True marks padding (left out of window, clusters and sums).
        chunk_size : int, optional
            Rows per block (raised to ``window``).

        Returns
        -------
        Tensor ``(..., H, L, Ev)`` in ``q``'s dtype.
        """
        window = check_window(window)
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"{name} must be a floating torch.Tensor, got {type(t).__name__}")
            if t.ndim < 3 or t.shape[-3] != self.num_heads:
                raise ValueError(
                    f"{name} must be shaped (..., H, L, E) with H = {self.num_heads}, got "
                    f"{tuple(t.shape)}"
                )
            check_finite(t, name)
        if q.shape != k.shape or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != self.head_dim:
            raise ValueError(
                f"q and k must share one shape (..., H, L, E = {self.head_dim}) and v its "
                f"leading dimensions, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        L = q.shape[-2]
        block = default_block(window, L)
        if chunk_size is not None:
            block = max(1, min(max(window, check_positive_int(chunk_size, "chunk_size")), L))
        work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        qw, kw, vw = q.to(work), k.to(work), v.to(work)
        lw = None
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (
                *q.shape[:-3],
                L,
            ):
                raise ValueError(
                    f"key_padding_mask must be a bool tensor of shape {(*q.shape[:-3], L)}, "
                    f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
                )
            lw = torch.zeros(key_padding_mask.shape, dtype=work, device=q.device)
            lw = lw.masked_fill(key_padding_mask, float("-inf")).unsqueeze(-2)
            lw = lw.expand(*q.shape[:-1])
        fmap = self.bind(qw, kw, lw, block)
        out = hybrid_forward(qw, kw, vw, lw, fmap, window, False, self.scale, block)
        return out.to(q.dtype)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"num_landmarks={self.num_landmarks}, scale={self.scale:.4g}, "
            f"value_rank={self.value_rank}"
        )
