"""snnk: scalable kernels in PyTorch.

A kernel is one object that snnk can evaluate exactly (:mod:`snnk.kernels`) and approximate
with random features (:mod:`snnk.features`).
"""

from snnk import features, kernels
from snnk._version import __version__

__all__ = ["__version__", "features", "kernels"]
