"""Scikit-learn estimators (``snnk.models``)."""

from snnk.models.bundled import BundledClassifier, BundledRegressor
from snnk.models.dkm import DeepKernelMachineClassifier, DeepKernelMachineRegressor
from snnk.models.gp import RandomFeatureGP
from snnk.models.nystrom import KernelRidgeCG, NystromRidge
from snnk.models.random_features import RandomFeatureClassifier, RandomFeatureRidge
from snnk.models.transformers import (
    NystromTransformer,
    PositiveFeatureTransformer,
    RandomFeatureTransformer,
)
from snnk.models.weighted_least_squares import OptimalWeightedLeastSquares

__all__ = [
    "BundledClassifier",
    "BundledRegressor",
    "DeepKernelMachineClassifier",
    "DeepKernelMachineRegressor",
    "KernelRidgeCG",
    "NystromRidge",
    "NystromTransformer",
    "OptimalWeightedLeastSquares",
    "PositiveFeatureTransformer",
    "RandomFeatureClassifier",
    "RandomFeatureGP",
    "RandomFeatureRidge",
    "RandomFeatureTransformer",
]
