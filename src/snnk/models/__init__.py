"""Scikit-learn estimators (``snnk.models``)."""

from snnk.models.bundled import BundledClassifier, BundledRegressor
from snnk.models.gp import RandomFeatureGP
from snnk.models.nystrom import KernelRidgeCG, NystromRidge
from snnk.models.random_features import RandomFeatureClassifier, RandomFeatureRidge

__all__ = [
    "BundledClassifier",
    "BundledRegressor",
    "KernelRidgeCG",
    "NystromRidge",
    "RandomFeatureClassifier",
    "RandomFeatureGP",
    "RandomFeatureRidge",
]
