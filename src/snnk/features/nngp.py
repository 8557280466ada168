r"""Random features of NNGP kernels: random wide networks (composed arc-cosine features).

A finite fully connected network with random Gaussian weights is an unbiased-in-the-limit
feature map of its NNGP kernel: with hidden widths ``n_ℓ`` and last hidden width ``D``,

.. math:: φ(x) = \big[\sqrt{σ_w^2/D}\, a_L(x),\; σ_b\big], \qquad
          a_ℓ = φ\big(\sqrt{σ_w^2/n_{ℓ-1}}\, W_ℓ a_{ℓ-1} + σ_b b_ℓ\big),\; a_0 = x,

and ``φ(x)ᵀφ(x′) → Σᴸ⁺¹(x, x′)`` (:class:`snnk.kernels.NNGP`) as the widths grow. With one
hidden layer the estimate is unbiased at any width (it is the arc-cosine / URF feature map
of the first layer); deeper maps carry an ``O(1/n)`` bias from the composition. For ReLU
every layer is a rescaled :class:`~snnk.features.ArcCosineFeatures` map of the layer below.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from snnk._utils import check_positive_int
from snnk.features._base import RandomFeatures
from snnk.features._projection import RandomProjection
from snnk.kernels import GaussianSpectrum
from snnk.kernels.nngp import NNGP, activation_function

__all__ = ["NNGPFeatures"]


class NNGPFeatures(RandomFeatures):
    r"""Random features of :class:`snnk.kernels.NNGP`: a random network of finite width.

    Parameters
    ----------
    kernel : snnk.kernels.NNGP
        The kernel (depth ``≥ 1``, activation, ``σ_w²``, ``σ_b²``).
    in_features : int
        ``d``.
    num_features : int
        ``D``, the output width: the last hidden layer has ``D`` units (``D − 1`` and one
        constant feature ``σ_b`` when ``σ_b² > 0``).
    hidden_features : int, optional
        Width of the hidden layers before the last one (default ``num_features``).
    sampler : str, default "orthogonal"
        How each layer's Gaussian weight rows are drawn (:data:`snnk.features.SAMPLERS`).
    seed, dtype, device
        As for :class:`~snnk.features.FourierFeatures`.
    """

    def __init__(
        self,
        kernel: NNGP,
        in_features: int,
        num_features: int,
        *,
        hidden_features: int | None = None,
        sampler: str = "orthogonal",
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        if not isinstance(kernel, NNGP):
            raise TypeError(f"kernel must be a snnk.kernels.NNGP, got {kernel!r}")
        if kernel.depth < 1:
            raise ValueError(
                "an NNGP of depth 0 is the affine kernel σ_w²⟨x, x′⟩/d + σ_b²: use the exact "
                "features [σ_w x/√d, σ_b] (or kernel='linear'), not random ones"
            )
        in_features = check_positive_int(in_features, "in_features")
        num_features = check_positive_int(num_features, "num_features")
        self.has_bias = kernel.bias_variance > 0
        if num_features < 1 + int(self.has_bias):
            raise ValueError(f"num_features must be at least 2 with a bias, got {num_features}")
        self.hidden_features = check_positive_int(
            num_features if hidden_features is None else hidden_features, "hidden_features"
        )
        super().__init__(in_features, num_features, seed)
        self.kernel, self.sampler = kernel, sampler
        self._phi: Callable = activation_function(kernel.activation, kernel.negative_slope)
        self._draw(dtype, device)

    def _widths(self) -> list[int]:
        last = self.num_features - int(self.has_bias)
        return [self.in_features] + [self.hidden_features] * (self.kernel.depth - 1) + [last]

    def _draw(self, dtype, device) -> None:
        widths = self._widths()
        self.layers = nn.ModuleList(
            RandomProjection(
                n_in,
                n_out,
                GaussianSpectrum(),
                self.sampler,
                self.generator,
                dtype=dtype,
                device=device,
            )
            for n_in, n_out in itertools.pairwise(widths)
        )
        biases = [torch.randn(n, generator=self.generator, dtype=torch.float64) for n in widths[1:]]
        for i, b in enumerate(biases):
            self.register_buffer(
                f"bias{i}", b.to(dtype=dtype or torch.get_default_dtype(), device=device)
            )

    def _reference_buffer(self) -> torch.Tensor | None:
        return getattr(self, "bias0", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead, out_dtype = self._prepare(x)
        sw = math.sqrt(self.kernel.weight_variance)
        sb = math.sqrt(self.kernel.bias_variance)
        a = x2
        for i, proj in enumerate(self.layers):
            z = proj(a) * (sw / math.sqrt(a.shape[-1]))
            if self.has_bias:
                z = z + sb * getattr(self, f"bias{i}").to(z.dtype)
            a = self._phi(z)
        out = a * (sw / math.sqrt(a.shape[-1]))
        if self.has_bias:
            out = torch.cat([out, out.new_full((out.shape[0], 1), sb)], dim=1)
        out = out.reshape(*lead, self.num_features).to(out_dtype)
        return self._check_output(out, x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel!r}, sampler={self.sampler!r}"
