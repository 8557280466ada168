"""Random feature maps (``snnk.features``): the URF engine.

Every map is a ``torch.nn.Module`` whose random draw is a set of persistent buffers from a
seeded ``torch.Generator``; ``φ(x)ᵀφ(y)`` estimates a kernel (or ``f(wᵀx + b)`` for URFs).
"""

from snnk.features._base import RandomFeatures
from snnk.features._projection import SAMPLERS, RandomProjection
from snnk.features.arccosine import ArcCosineFeatures
from snnk.features.centers import (
    CenterFactor,
    register_center_method,
    select_center_factor,
    select_center_indices,
    select_centers,
)
from snnk.features.factory import make_feature_map
from snnk.features.fourier import FourierFeatures
from snnk.features.nngp import NNGPFeatures
from snnk.features.nystrom import NystromFeatures
from snnk.features.positive import (
    PositiveFeatures,
    VarianceWarning,
    positive_log_features,
    positive_log_offsets,
)
from snnk.features.urf import (
    URF,
    DiscreteMeasure,
    GaussianMeasure,
    LaplaceMeasure,
    SpectralMeasure,
)

__all__ = [
    "SAMPLERS",
    "URF",
    "ArcCosineFeatures",
    "CenterFactor",
    "DiscreteMeasure",
    "FourierFeatures",
    "GaussianMeasure",
    "LaplaceMeasure",
    "NNGPFeatures",
    "NystromFeatures",
    "PositiveFeatures",
    "RandomFeatures",
    "RandomProjection",
    "SpectralMeasure",
    "VarianceWarning",
    "make_feature_map",
    "positive_log_features",
    "positive_log_offsets",
    "register_center_method",
    "select_center_factor",
    "select_center_indices",
    "select_centers",
]
