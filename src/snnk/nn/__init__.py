"""Neural-network faces of kernels (``snnk.nn``): SNNK layers and network bundling."""

from snnk.nn.adapters import (
    SUPPORTED_ARCHITECTURES,
    SNNKAdapter,
    UptrainReport,
    adapter_state_dict,
    add_adapters,
    load_adapters,
    save_adapters,
    trainable_parameters,
    uptrain,
)
from snnk.nn.attention import DecodingState, KernelAttention, kernel_attention
from snnk.nn.bundle import BundledNetwork, bundle
from snnk.nn.snnk_linear import ACTIVATIONS, SNNKLinear, SNNKMaps, snnkify

__all__ = ["ACTIVATIONS", "BundledNetwork", "SNNKLinear", "SNNKMaps", "bundle", "snnkify"]
__all__ += [
    "SUPPORTED_ARCHITECTURES",
    "SNNKAdapter",
    "UptrainReport",
    "adapter_state_dict",
    "add_adapters",
    "load_adapters",
    "save_adapters",
    "trainable_parameters",
    "uptrain",
]
__all__ += ["DecodingState", "KernelAttention", "kernel_attention"]
