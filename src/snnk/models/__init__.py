"""Scikit-learn estimators (``snnk.models``)."""

from snnk.models.bundled import BundledClassifier, BundledRegressor
from snnk.models.gp import RandomFeatureGP
from snnk.models.nystrom import KernelRidgeCG, NystromRidge

__all__ = [
    "BundledClassifier",
    "BundledRegressor",
    "KernelRidgeCG",
    "NystromRidge",
    "RandomFeatureGP",
]
