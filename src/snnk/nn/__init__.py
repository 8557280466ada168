"""Neural-network faces of kernels (``snnk.nn``): SNNK layers and network bundling."""

from snnk.nn.adapters import (
    SUPPORTED_ARCHITECTURES,
    AdapterConfig,
    SNNKAdapter,
    UptrainReport,
    active_adapters,
    adapter_state_dict,
    add_adapter,
    add_adapters,
    delete_adapter,
    disable_adapters,
    enable_adapters,
    list_adapters,
    load_adapters,
    save_adapters,
    set_adapter,
    trainable_parameters,
    unload_adapters,
    uptrain,
)
from snnk.nn.attention import (
    AttentionRegimeWarning,
    DecodingState,
    KernelAttention,
    LearnedFeatureMap,
    LearnedSnapMap,
    fit_feature_map,
    hybrid_attention,
    kernel_attention,
)
from snnk.nn.bundle import BundledNetwork, bundle
from snnk.nn.convert import (
    fit_attention,
    linearize,
    load_linearized,
    save_linearized,
    unlinearize,
)
from snnk.nn.snnk_linear import ACTIVATIONS, SNNKLinear, SNNKMaps, snnkify

__all__ = ["ACTIVATIONS", "BundledNetwork", "SNNKLinear", "SNNKMaps", "bundle", "snnkify"]
__all__ += [
    "SUPPORTED_ARCHITECTURES",
    "AdapterConfig",
    "SNNKAdapter",
    "UptrainReport",
    "active_adapters",
    "adapter_state_dict",
    "add_adapter",
    "add_adapters",
    "delete_adapter",
    "disable_adapters",
    "enable_adapters",
    "list_adapters",
    "load_adapters",
    "save_adapters",
    "set_adapter",
    "trainable_parameters",
    "unload_adapters",
    "uptrain",
]
__all__ += ["fit_attention", "linearize", "load_linearized", "save_linearized", "unlinearize"]
__all__ += [
    "AttentionRegimeWarning",
    "DecodingState",
    "KernelAttention",
    "LearnedFeatureMap",
    "LearnedSnapMap",
    "fit_feature_map",
    "hybrid_attention",
    "kernel_attention",
]
