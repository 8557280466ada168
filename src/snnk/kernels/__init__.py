"""Exact kernels (``snnk.kernels``): the ground truth of every approximation.

>>> import torch
>>> from snnk import kernels
>>> k = kernels.Gaussian(lengthscale=2.0) + 0.5 * kernels.Linear()
>>> K = k(torch.randn(5, 3, dtype=torch.float64))
"""

from snnk.kernels._base import (
    ArcCosine,
    Gaussian,
    Kernel,
    Laplace,
    Linear,
    Matern,
    Polynomial,
    ProductKernel,
    ScaledKernel,
    ShiftInvariantKernel,
    Softmax,
    SumKernel,
)
from snnk.kernels._spectral import (
    CauchySpectrum,
    GaussianSpectrum,
    Spectrum,
    StudentSpectrum,
)
from snnk.kernels.conv_nngp import (
    ConvNNGP,
    ConvNTK,
    ConvolutionalKernel,
    convolutional_kernels,
)
from snnk.kernels.factory import (
    kernel_names,
    make_kernel,
    resolve_kernel,
    split_scale,
    with_lengthscale,
)
from snnk.kernels.nngp import NNGP, NTK, FullyConnectedKernel, fully_connected_kernels
from snnk.kernels.operator import KernelMatrix

__all__ = [
    "NNGP",
    "NTK",
    "ArcCosine",
    "CauchySpectrum",
    "ConvNNGP",
    "ConvNTK",
    "ConvolutionalKernel",
    "FullyConnectedKernel",
    "Gaussian",
    "GaussianSpectrum",
    "Kernel",
    "KernelMatrix",
    "Laplace",
    "Linear",
    "Matern",
    "Polynomial",
    "ProductKernel",
    "ScaledKernel",
    "ShiftInvariantKernel",
    "Softmax",
    "Spectrum",
    "StudentSpectrum",
    "SumKernel",
    "convolutional_kernels",
    "fully_connected_kernels",
    "kernel_names",
    "make_kernel",
    "resolve_kernel",
    "split_scale",
    "with_lengthscale",
]
