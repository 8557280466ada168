"""Lattice and digital-net designs with structured Gram matrices (``snnk.lattice``).

Designs (:mod:`.points`): rank-1 lattices with a random shift and base-2 digital nets
(Sobol', linear matrix scrambling + digital shift), both in radical-inverse order so that every
prefix of ``n = 2^m`` points is a group. Matching kernels (:mod:`.kernels`): shift-invariant
(SI) and digitally-shift-invariant (DSI) product kernels. Their Gram matrices are diagonalised
by FFTBR / FWHT (:mod:`.transforms`), which gives eigenvalues, matvec, solve and log-det in
``O(n log n)`` (:mod:`.operator`), fast GPs and Bayesian cubature (:mod:`.gp`).

>>> from snnk.lattice import Lattice, SIKernel, StructuredGram
>>> x = Lattice(4, seed=0)(1024)
>>> K = StructuredGram(SIKernel(4, alpha=2), x, nugget=1e-8)
>>> K.eigenvalues.shape
torch.Size([1024])
"""

from snnk.lattice.gp import CubatureResult, FastGP, bayesian_cubature, profiled_nll
from snnk.lattice.kernels import DSIKernel, SIKernel, dsi_factor, si_factor
from snnk.lattice.operator import StructuredGram, check_design, eigenvalues_from_column
from snnk.lattice.points import DigitalNet, Lattice, PointSet
from snnk.lattice.transforms import double, fftbr, fwht, ifftbr, omega

__all__ = [
    "CubatureResult",
    "DSIKernel",
    "DigitalNet",
    "FastGP",
    "Lattice",
    "PointSet",
    "SIKernel",
    "StructuredGram",
    "bayesian_cubature",
    "check_design",
    "double",
    "dsi_factor",
    "eigenvalues_from_column",
    "fftbr",
    "fwht",
    "ifftbr",
    "omega",
    "profiled_nll",
    "si_factor",
]
