"""The one feature-map factory: the random feature map that approximates a given kernel."""

from __future__ import annotations

import torch

from snnk.features.arccosine import ArcCosineFeatures
from snnk.features.fourier import FourierFeatures
from snnk.features.nngp import NNGPFeatures
from snnk.kernels import NNGP, NTK, ArcCosine, Kernel


def make_feature_map(
    kernel: Kernel,
    in_features: int,
    num_features: int,
    *,
    sampler: str = "orthogonal",
    phases: str = "random",
    seed: int | torch.Generator | None = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.nn.Module:
    r"""The random feature map ``z: R^d -> R^D`` of ``kernel``, with ``z(x)ᵀz(y) ≈ k(x, y)``.

    Shift-invariant kernels (Gaussian, Laplace, Matérn, and scaled versions of them) get
    :class:`~snnk.features.FourierFeatures`: frequencies ``ω_j`` drawn from the kernel's
    spectral measure by ``sampler`` and ``z(x) = √(2/D) cos(Ωᵀx + b)`` (``phases="random"``)
    or ``√(1/m) [cos(Ωᵀx), sin(Ωᵀx)]`` with ``m = D/2`` (``phases="paired"``).
    :class:`~snnk.kernels.ArcCosine` gets :class:`~snnk.features.ArcCosineFeatures` of its
    order (``phases`` unused). :class:`~snnk.kernels.NNGP` (depth ``≥ 1``) gets
    :class:`~snnk.features.NNGPFeatures`, a random network of width ``D`` (``phases``
    unused); the NTK has no random feature map here (use Nyström).

    Parameters
    ----------
    kernel : snnk.kernels.Kernel
        The kernel to approximate.
    in_features : int
        ``d``, the input dimension.
    num_features : int
        ``D``, the number of features (the output width of the map).
    sampler : str, default "orthogonal"
        How the random directions are drawn (one of :data:`snnk.features.SAMPLERS`).
    phases : {"random", "paired"}, default "random"
        Fourier features only (see above).
    seed : int, torch.Generator or None, default 0
        Seeds the draw; no global RNG is touched.
    dtype : torch.dtype, default torch.float64
        dtype of the random buffers and of the output.

    Returns
    -------
    torch.nn.Module
        Maps ``(..., d)`` to ``(..., D)``.

    Raises
    ------
    ValueError
        For a kernel without a random feature map (e.g. polynomial): use Nyström instead.
    """
    if kernel.shift_invariant:
        return FourierFeatures(
            kernel,
            in_features,
            num_features,
            sampler=sampler,
            phases=phases,
            seed=seed,
            dtype=dtype,
        )
    if isinstance(kernel, ArcCosine):
        return ArcCosineFeatures(
            in_features, num_features, kernel.order, sampler=sampler, seed=seed, dtype=dtype
        )
    if isinstance(kernel, NNGP):
        return NNGPFeatures(
            kernel, in_features, num_features, sampler=sampler, seed=seed, dtype=dtype
        )
    if isinstance(kernel, NTK):
        raise ValueError(
            f"no random feature map for {kernel!r}: the NTK's gradient features have one "
            f"coordinate per network parameter; use snnk.models.NystromRidge or KernelRidgeCG "
            f"with kernel='ntk', or kernel='nngp' for random-network features"
        )
    raise ValueError(
        f"no random feature map for {kernel!r}: use a shift-invariant kernel (gaussian, "
        f"laplace, matern), arccosine or nngp, or snnk.models.NystromRidge for any kernel"
    )
