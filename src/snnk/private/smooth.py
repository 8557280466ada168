"""Smooth kernels as non-negative sums of exponentials, and the public feature map of a release.

``1/(1+t) = ∫₀^∞ e^{-s} e^{-st} ds``; with ``s = e^u`` and the trapezoid rule on
``u ∈ [u_min, u_max]`` (step ``h``): ``1/(1+t) ≈ Σ_j c_j e^{-s_j t}``, ``s_j = e^{u_j}``,
``c_j = h s_j e^{-s_j} ≥ 0`` (BLMST24 §8-9 reduce smooth kernels ``1/(1+h(x,y))`` to such
sums). The weights are then refitted by non-negative least squares on a grid of ``t`` (rates
fixed), which keeps ``c_j ≥ 0`` and lowers the error further.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import nnls

from snnk.features import RandomProjection, make_feature_map
from snnk.kernels import Gaussian, GaussianSpectrum, Laplace, Matern
from snnk.private._compute import safe_row_norms
from snnk.private.projection import PROJECTIONS, FourierProjection

KERNELS = ("gaussian", "exponential", "laplace", "cauchy", "linear")


def _grid(t_max: float) -> np.ndarray:
    return np.concatenate([[0.0], np.geomspace(1e-4, t_max, 4000)])


@lru_cache(maxsize=16)
def _fit(tol: float, t_max: float, max_terms: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    t = _grid(t_max)
    target = 1.0 / (1.0 + t)
    u_min = -math.log(t_max) - 2.0
    for terms in range(4, max_terms + 1):
        u = np.linspace(u_min, 3.5, terms)
        s = np.exp(u)
        A = np.exp(-np.outer(t, s))
        # relative weighting: the error is measured in absolute terms, but the tail needs
        # care, so fit on the absolute error (max error is what is promised)
        c, _ = nnls(A, target)
        if np.max(np.abs(A @ c - target)) <= tol:
            return tuple(float(x) for x in c), tuple(float(x) for x in s)
    raise ValueError(
        f"no non-negative exponential sum with <= {max_terms} terms reaches tol={tol} on "
        f"[0, {t_max}]; raise max_terms or tol"
    )


def exponential_sum(
    tol: float = 1e-3, t_max: float = 1e4, max_terms: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    r"""Weights ``c ≥ 0`` and rates ``s > 0`` with ``max_{t∈[0, t_max]} |1/(1+t) − Σ c_j e^{−s_j t}|
    ≤ tol`` and the fewest terms (at most ``max_terms``), fitted once and cached.

    Returns
    -------
    weights, rates : ndarray of shape (J,)
    """
    if not (0 < tol < 1 and t_max > 0):
        raise ValueError(f"need 0 < tol < 1 and t_max > 0, got tol={tol}, t_max={t_max}")
    c, s = _fit(float(tol), float(t_max), int(max_terms))
    keep = np.asarray(c) > 0
    return np.asarray(c)[keep], np.asarray(s)[keep]


def kernel_components(kernel: str, lengthscale: float) -> list[tuple[float, object]]:
    r"""``k = Σ_j w_j k_j`` as a list of ``(w_j, snnk kernel k_j)``.

    ``"gaussian"``: ``exp(−‖δ‖²/(2ℓ²))``; ``"exponential"``: ``exp(−‖δ‖₂/ℓ)``;
    ``"laplace"``: ``exp(−‖δ‖₁/ℓ)``; ``"linear"``: ``⟨x, y⟩/ℓ²`` on rows clipped to norm ``ℓ``
    (no components); ``"cauchy"``: ``1/(1 + ‖δ‖²/ℓ²)``, a non-negative sum of
    Gaussians ``exp(−s_j‖δ‖²/ℓ²)`` (lengthscales ``ℓ/√(2 s_j)``) from :func:`exponential_sum`.
    """
    if kernel == "gaussian":
        return [(1.0, Gaussian(lengthscale))]
    if kernel == "exponential":
        return [(1.0, Matern(0.5, lengthscale))]
    if kernel == "laplace":
        return [(1.0, Laplace(lengthscale))]
    if kernel == "linear":
        return []
    if kernel == "cauchy":
        c, s = exponential_sum()
        return [
            (float(cj), Gaussian(lengthscale / math.sqrt(2 * sj)))
            for cj, sj in zip(c, s, strict=True)
        ]
    raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")


def exact_kernel(kernel: str, lengthscale: float, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """The exact Gram matrix ``k(X, Y)`` of a private-module kernel name (tests, benchmarks)."""
    if kernel == "cauchy":
        return 1.0 / (1.0 + torch.cdist(X, Y).square() / lengthscale**2)
    if kernel == "linear":
        return clip_norm(X, lengthscale) @ clip_norm(Y, lengthscale).T
    return kernel_components(kernel, lengthscale)[0][1](X, Y)


def clip_norm(X: torch.Tensor, bound: float) -> torch.Tensor:
    """Rows of ``X`` scaled down to norm ``≤ bound``, then divided by ``bound``; a finite row
    whose sum of squares overflows keeps its direction (as in the statistic and the query)."""
    flat = X.reshape(-1, X.shape[-1])
    norms = safe_row_norms(flat).reshape(*X.shape[:-1], 1)
    return X / torch.clamp(norms, min=bound)


def _sampler(dim: int, rows: int) -> str:
    """Orthogonal blocks (lower variance) when ``16 <= dim <= 2·rows``; i.i.d. otherwise: for
    tiny ``dim`` blocks of a few orthogonal rows gain little, and for ``rows << dim`` each
    block still costs a full ``dim x dim`` QR (e.g. the JL projection ``k << d``)."""
    return "orthogonal" if 16 <= dim <= 2 * rows else "iid"


class KernelFeatureMap(torch.nn.Module):
    r"""The public randomness of a kernel-sum release: ``x ↦ z(Px)`` with ``z(x)ᵀz(y) ≈ k(x, y)``.

    ``P`` is an optional KDE-preserving Johnson-Lindenstrauss map ``R^d → R^k``: with
    ``projection="gaussian"`` a dense matrix (rows ``N(0, I)/√k``, orthogonal blocks when
    ``16 ≤ d ≤ 2k``; ``d·k`` per row), with ``"fourier"`` the subsampled randomized Fourier
    transform (:class:`~snnk.private.projection.FourierProjection`, ``O(d log d)`` per row,
    ``k ≤ d``). Either is public, data-independent and applied to data and queries alike.
    ``z = [√w_j z_j]_j`` concatenates
    paired Fourier feature maps (:func:`snnk.features.make_feature_map`) of the components
    ``k_j`` with ``2 m_j`` features, ``m_j ∝ w_j``. Then ``‖z(x)‖₂² = Σ_j w_j`` exactly, and
    ``‖z(x)‖₁ ≤ Σ_j √(w_j)·√(2 m_j)``: the L2 / L1 bounds that calibrate the noise.
    Everything is drawn from ``seed`` only, never from data.
    """

    def __init__(
        self,
        kernel: str,
        lengthscale: float,
        in_features: int,
        num_features: int,
        projection_dim: int | None,
        seed: int,
        projection: str = "gaussian",
    ):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {list(PROJECTIONS)}, got {projection!r}")
        self.kernel, self.lengthscale = kernel, float(lengthscale)
        self.in_features, self.projection_dim, self.seed = in_features, projection_dim, seed
        self.projection_kind = projection
        gen = torch.Generator().manual_seed(int(seed) % 2**63)
        comps = kernel_components(kernel, lengthscale)
        inner = in_features
        if projection_dim is not None:
            if kernel == "laplace":
                raise ValueError(
                    "projection_dim needs a Euclidean kernel (gaussian, exponential, cauchy): "
                    "a Johnson-Lindenstrauss map does not preserve L1 distances; use "
                    "projection_dim=None with kernel='laplace'"
                )
            if projection == "fourier":
                self.projection = FourierProjection(in_features, projection_dim, gen)
            else:
                self.projection = RandomProjection(
                    in_features,
                    projection_dim,
                    GaussianSpectrum(),
                    _sampler(in_features, projection_dim),
                    gen,
                    dtype=torch.float64,
                )
            inner = projection_dim
        else:
            self.projection = None
        if kernel == "linear":
            # k(x, y) = <x, y>/ℓ² on rows clipped to norm ℓ (the declared norm bound): the
            # "features" are the clipped rows themselves, ‖z‖₂ ≤ 1, ‖z‖₁ ≤ √dim
            self.maps, self.weights = torch.nn.ModuleList(), ()
            self.num_features = inner
            self.l2_bound, self.l1_bound = 1.0, math.sqrt(inner)
            return
        total = sum(w for w, _ in comps)
        pairs = [max(1, round(num_features / 2 * w / total)) for w, _ in comps]
        self.maps = torch.nn.ModuleList(
            make_feature_map(
                k,
                inner,
                2 * m,
                sampler="iid" if kernel == "laplace" else _sampler(inner, m),
                phases="paired",
                seed=gen,
            )
            for (_, k), m in zip(comps, pairs, strict=True)
        )
        for f in self.maps:
            # inputs are validated by the callers (release.features, the statistic's own
            # finiteness check on the features): no second pass over every block
            f.check_values = False
        self.weights = tuple(float(w) for w, _ in comps)
        self.num_features = 2 * sum(pairs)
        self.l2_bound = math.sqrt(sum(self.weights))
        self.l1_bound = sum(math.sqrt(w * 2 * m) for w, m in zip(self.weights, pairs, strict=True))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``P x`` (``(n, d) -> (n, k)``, norms kept in expectation); ``x`` itself without
        a projection."""
        if self.projection is None:
            return x
        if self.projection_kind == "fourier":
            return self.projection(x)
        return self.projection(x) / math.sqrt(self.projection_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, d) -> (n, D)`` in float64 (``(0, D)`` for no rows)."""
        if x.shape[0] == 0:
            return torch.zeros(0, self.num_features, dtype=torch.float64, device=x.device)
        x = self.project(x.to(torch.float64))
        if self.kernel == "linear":
            return clip_norm(x, self.lengthscale)
        zs = [
            f(x) * math.sqrt(w) if w != 1.0 else f(x)
            for w, f in zip(self.weights, self.maps, strict=True)
        ]
        return zs[0] if len(zs) == 1 else torch.cat(zs, dim=-1)
