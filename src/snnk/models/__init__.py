"""Scikit-learn estimators (``snnk.models``)."""

from snnk.models.bundled import BundledClassifier, BundledRegressor

__all__ = ["BundledClassifier", "BundledRegressor"]
