"""Random features of the arc-cosine kernels (ReLU-type features)."""

from __future__ import annotations

import math

import torch

from snnk._utils import check_in, check_positive_int
from snnk.features._base import RandomFeatures


class ArcCosineFeatures(RandomFeatures):
    r"""Random features of the arc-cosine kernel of order ``n`` (Cho & Saul, 2009).

    ``φ(x) = √(2/D) · Θ(Gx) ⊙ (Gx)^n`` with Gaussian rows ``g_j`` (``n = 0``: step,
    ``n = 1``: ReLU, ``n = 2``: ReLU²). Then ``E[φ(x)ᵀφ(y)] = k_n(x, y)`` of
    :class:`snnk.kernels.ArcCosine` exactly. This is the ReLU-SNNK of the SNNK paper up to the
    factor ``√2`` per side: ``D^{-1/2} ReLU(Gx)`` estimates ``k_1/2``, not ``ReLU(wᵀx)``.
    The i.i.d. variance for ``n = 1`` is ``(‖x‖²‖y‖² J₂(θ)/π − k_1²)/D`` per pair.

    Parameters
    ----------
    in_features, num_features : int
        ``d`` and ``D``.
    order : {0, 1, 2}, default 1
    sampler : {"iid", "orthogonal", "structured", "qmc", "halton"}, default "orthogonal"
    seed, dtype, device
        As for :class:`FourierFeatures`.
    """

    def __init__(
        self,
        in_features: int,
        num_features: int,
        order: int = 1,
        *,
        sampler: str = "orthogonal",
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        in_features = check_positive_int(in_features, "in_features")
        num_features = check_positive_int(num_features, "num_features")
        if isinstance(order, bool) or not isinstance(order, int):
            raise TypeError(f"order must be one of [0, 1, 2], got {order!r}")
        check_in(order, "order", (0, 1, 2))
        super().__init__(in_features, num_features, seed)
        self.order, self.sampler = order, sampler
        self.amplitude = math.sqrt(2.0 / num_features)
        self._draw(dtype, device)

    def _draw(self, dtype, device) -> None:
        self.projection = self._gaussian_projection(self.num_features, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead, out_dtype = self._prepare(x)
        p = self.projection(x2)
        if self.order == 0:
            z = (p > 0).to(p.dtype)
        else:
            z = torch.relu(p)
            if self.order == 2:
                z = z.square()
        out = (z * self.amplitude).reshape(*lead, self.num_features).to(out_dtype)
        return out if self.order == 0 else self._check_output(out, x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}, sampler={self.sampler!r}"
