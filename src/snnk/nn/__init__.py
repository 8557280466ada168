"""Neural-network faces of kernels (``snnk.nn``): SNNK layers and network bundling."""

from snnk.nn.bundle import BundledNetwork, bundle
from snnk.nn.snnk_linear import ACTIVATIONS, SNNKLinear, SNNKMaps, snnkify

__all__ = ["ACTIVATIONS", "BundledNetwork", "SNNKLinear", "SNNKMaps", "bundle", "snnkify"]
