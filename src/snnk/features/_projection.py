"""Random projections ``x ↦ Ω x`` with rows drawn from a spectral measure.

Samplers
--------
``"iid"``
    Rows i.i.d. from the spectrum.
``"orthogonal"``
    Orthogonal random features (Yu et al., 2016): stacked blocks of ``d`` orthonormal
    directions (QR of a Gaussian matrix, Haar distributed), each row rescaled by an
    independent radius from the spectrum's radial law (``χ_d`` for the Gaussian), so every
    row keeps the right marginal and estimators stay unbiased; rows within a block are
    exactly orthogonal, which lowers the variance.
``"structured"``
    Structured orthogonal random features (SORF, Yu et al. 2016): blocks ``H S₁ H S₂ H S₃``
    of Walsh–Hadamard matrices ``H`` and random sign diagonals ``Sᵢ`` (``S₃`` shared), inputs
    zero-padded to ``p = 2^⌈log₂ d⌉``,
    applied in ``O(p (p1 + p2))`` per block with :mod:`Kronecker-factored <._hadamard>`
    Hadamard transforms. Rows are unit vectors of ``R^p`` given radii from the spectrum's
    ``p``-dimensional radial law: the first ``d`` coordinates of such a frequency follow the
    ``d``-dimensional spectrum exactly (Gaussian and Student-t laws are closed under
    marginals). Only ``O(D)`` numbers are stored. For ``p <= 64`` it stores dense
    ``"orthogonal"`` blocks instead: there one GEMM is as fast as any structured transform,
    and products of small Hadamard matrices take few distinct values, so their rows are far
    from uniform on the sphere (biased estimates).
``"qmc"`` / ``"halton"``
    Scrambled Sobol (``"qmc"``) or scrambled Halton points pushed through the spectrum's
    inverse CDF: a low-discrepancy cover of the spectrum (unbiased thanks to scrambling).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.stats import qmc
from torch import nn

from snnk._utils import check_in
from snnk._utils.blocks import PROJECTION_BLOCK_ELEMENTS, STRUCTURED_BLOCK_ELEMENTS
from snnk._utils.random import numpy_seed_from
from snnk._utils.threads import single_thread_if
from snnk._utils.validation import check_float_dtype
from snnk.features._hadamard import hadamard_matrix, hadamard_transform, split_power_of_two
from snnk.kernels import Spectrum

SAMPLERS = ("iid", "orthogonal", "structured", "qmc", "halton")

#: up to this padded size "structured" stores dense orthogonal blocks (see RandomProjection)
_SMALL = 64


def orthogonal_directions(m: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``m`` unit rows in ``R^d``, in blocks of ``d`` mutually orthogonal rows (float64).

    The QR factorisations of ``d <= 1024`` run on one thread: Householder QR synchronises
    its threads once per panel, and on a busy machine a descheduled thread stalls every
    barrier (a 784 x 784 QR on a 2-core VM: 17 ms idle, 0.27-0.74 s with the other core
    busy; on one thread 60-100 ms busy). The values do not depend on it.
    """
    blocks = []
    with single_thread_if(d <= 1024):
        for _ in range(math.ceil(m / d)):
            g = torch.randn(d, d, generator=generator, dtype=torch.float64)
            q, r = torch.linalg.qr(g)
            # Sign fix makes Q Haar distributed (QR alone is biased towards diag(R) > 0).
            q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
            blocks.append(q.T)
    return torch.cat(blocks, 0)[:m]


def qmc_frequencies(
    m: int, d: int, spectrum: Spectrum, generator: torch.Generator, kind: str
) -> torch.Tensor:
    """``m`` frequencies from a scrambled Sobol or Halton sequence through the inverse CDF."""
    dim = spectrum.qmc_dim(d)
    rng = np.random.default_rng(numpy_seed_from(generator))
    if kind == "qmc":
        engine = qmc.Sobol(dim, scramble=True, seed=rng)
        with warnings.catch_warnings():  # balance needs a power of two; any prefix is valid
            warnings.simplefilter("ignore", UserWarning)
            u = engine.random(m)
    else:
        u = qmc.Halton(dim, scramble=True, seed=rng).random(m)
    u = np.clip(u, 1e-12, 1.0 - 1e-12)
    return torch.from_numpy(np.ascontiguousarray(spectrum.ppf(u, d), dtype=np.float64))


class RandomProjection(nn.Module):
    """``x ↦ Ω xᵀ / ℓ`` with ``Ω ∈ R^{m×d}`` drawn once from ``spectrum`` by ``sampler``.

    The draw is kept in persistent buffers (``weight`` for dense samplers; ``signs`` and
    ``scale`` for ``"structured"``) so ``state_dict`` round-trips bit for bit.

    Parameters
    ----------
    in_features : int
        ``d``.
    num_rows : int
        ``m``.
    spectrum : Spectrum
        Row distribution at unit lengthscale.
    sampler : str
        One of ``"iid"``, ``"orthogonal"``, ``"structured"``, ``"qmc"``, ``"halton"``.
    generator : torch.Generator
        CPU generator the draw comes from.
    lengthscale : float
        Rows are divided by it.
    """

    @property
    def block_elements(self) -> int:
        """Good size (elements of the ``(rows, m)`` output) of one block of rows.

        Small Hadamard GEMMs want their temporaries in cache (about 1 MB); one dense GEMM
        wants large blocks to reach its peak (about 16 MB).
        """
        return STRUCTURED_BLOCK_ELEMENTS if self.structured else PROJECTION_BLOCK_ELEMENTS

    def __init__(
        self,
        in_features: int,
        num_rows: int,
        spectrum: Spectrum,
        sampler: str,
        generator: torch.Generator,
        *,
        lengthscale: float = 1.0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        check_in(sampler, "sampler", SAMPLERS)
        if sampler in ("orthogonal", "structured") and not spectrum.rotation_invariant:
            raise ValueError(
                f"sampler={sampler!r} needs a rotation-invariant spectrum, but "
                f"{type(spectrum).__name__} is not (e.g. the L1 Laplace kernel); "
                f"use sampler='iid', 'qmc' or 'halton'"
            )
        self.in_features, self.num_rows, self.sampler = in_features, num_rows, sampler
        dtype = check_float_dtype(dtype) or torch.get_default_dtype()
        d, m = in_features, num_rows
        p = 1 << max(0, (d - 1).bit_length())
        self.structured = sampler == "structured" and p > _SMALL
        if self.structured:
            nblocks = math.ceil(m / p)
            self.pad, self.nblocks = p, nblocks
            # S₁ᵇ, S₂ᵇ per block; the innermost S₃ is shared by all blocks (one row of signs).
            signs = torch.randint(0, 2, (2 * nblocks + 1, p), generator=generator)
            signs = signs.to(torch.float64).mul_(2.0).sub_(1.0)
            self.register_buffer("signs", signs.to(dtype=dtype, device=device))
            p1, p2 = split_power_of_two(p)
            self.register_buffer(
                "h1", hadamard_matrix(p1, dtype=dtype, device=device), persistent=False
            )
            self.register_buffer(
                "h2", hadamard_matrix(p2, dtype=dtype, device=device), persistent=False
            )
            # Rows of the structured map are unit vectors of R^p. A rotation-invariant
            # spectrum in R^p (radii from its p-dimensional radial law) has the d-dimensional
            # spectrum as the marginal of its first d coordinates, so restricting the rows to
            # the d real inputs (zero padding) keeps every frequency's law exact.
            scale = spectrum.radius(m, p, generator) / lengthscale
            self.register_buffer("scale", scale.to(dtype=dtype, device=device))
        else:
            if sampler == "iid":
                w = spectrum.sample(m, d, generator)
            elif sampler in ("orthogonal", "structured"):
                w = (
                    orthogonal_directions(m, d, generator)
                    * spectrum.radius(m, d, generator)[:, None]
                )
            else:
                w = qmc_frequencies(m, d, spectrum, generator, sampler)
            self.register_buffer("weight", (w / lengthscale).to(dtype=dtype, device=device))

    def _structured(self, x, signs, h1, h2):
        """Structured map on rows of ``x`` (N, d) -> (N, m) (before the ``scale`` factor).

        Block ``b`` is ``H S₁ᵇ H S₂ᵇ H S₃`` (up to fixed coordinate permutations, see
        :func:`hadamard_transform`); the innermost ``H S₃`` is shared by all blocks, so it is
        computed once per row, and each block stays an orthogonal SORF block.
        """
        n, d = x.shape
        if d < self.pad:
            x = torch.nn.functional.pad(x, (0, self.pad - d))
        B = self.nblocks
        t = hadamard_transform(x * signs[2 * B], h1, h2)  # (N, p), shared first stage
        t = t.unsqueeze(1) * signs[B : 2 * B]  # (N, B, p)
        t = hadamard_transform(t, h1, h2)
        t.mul_(signs[:B])
        t = hadamard_transform(t, h1, h2)
        return t.reshape(n, -1)[:, : self.num_rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project rows: ``(N, d) -> (N, m)`` in ``x``'s dtype (no validation: internal)."""
        if self.structured:
            dt = x.dtype
            out = self._structured(x, self.signs.to(dt), self.h1.to(dt), self.h2.to(dt))
            return out.mul_(self.scale.to(dt))
        return x @ self.weight.to(x.dtype).T

    def dense_weight(self) -> torch.Tensor:
        """The explicit ``(m, d)`` matrix ``Ω / ℓ`` (materialised for ``"structured"``)."""
        if not self.structured:
            return self.weight
        eye = torch.eye(self.in_features, dtype=self.signs.dtype, device=self.signs.device)
        return self.forward(eye).T.contiguous()

    def row_sq_norms(self) -> torch.Tensor:
        """``‖ω_j‖²`` for every row, shape ``(m,)``."""
        return self.dense_weight().square().sum(1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_rows={self.num_rows}, sampler={self.sampler!r}"
