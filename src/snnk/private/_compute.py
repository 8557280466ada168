"""The arithmetic of kernel-sum releases: the private statistic and the query kernel.

Statistic (curator side, float64 throughout). ``T_g = Σ_{x∈g} z(x)`` is accumulated over
cache-sized row blocks as ``T += O_b Z_b`` with the block's one-hot group matrix ``O_b``
(one ``(G x b) @ (b x D)`` product per block instead of a scatter; never a ``(G, n)``
matrix for large ``G·n``), and the finiteness check rides
on quantities the statistic needs anyway (a NaN / Inf entry makes its row's norm, or its
features, non-finite), so ``X`` is read once. Why float64: the noise is
calibrated to the sensitivity of the *computed* ``T``. Every row's feature vector is
evaluated exactly up to float64 rounding (``cos``/``sin`` of whatever phase the product
gave: ``‖z‖₂ = 1`` for every phase), and the float64 sum of ``n`` rows differs from the exact
sum by at most ``(n−1)u·Σ|z|`` per coordinate, so neighbouring sums differ by ``z(x)`` plus at
most ``2n²u·Δ`` (``u = 2⁻⁵³``: ``2.2·10⁻⁸ Δ`` at ``n = 10⁴``, negligible, though not added
to the calibration). In float32 the same bound is ``12 Δ`` at ``n = 10⁴``, and a float32
product would make each row's phases depend on which rows share its block (BLAS kernels
differ by block shape), so ``T(X ∪ {x}) − T(X)`` would no longer be one bounded ``z(x)``:
float32 is kept for the public query side only.

Query (post-processing of public data, no privacy constraint). ``D(y) = z(Py)ᵀ S̃`` with the
amplitudes and the scale of the projection folded into cached matrices:
``θ = (y P̃ᵀ) Ωᵀ`` (dense map) or ``θ = (Q(s ∘ y))_I Ω̃ᵀ`` (Fourier map: one real FFT,
a gather, the scale folded into ``Ω̃``), ``D(y) = cos(θ) C + sin(θ) S``; it runs in the
compute dtype of the queries (float32 queries in float32, float64 in float64), with one
finiteness check on the answers (non-finite input gives a non-finite answer) and a float64
retry for rows whose float32 phases overflow.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from snnk._utils import check_finite, compute_dtype, iter_blocks
from snnk._utils.threads import single_thread_if

#: elements of one row block (rows x max(d, D)): 2 MB in float64, an L2 cache's worth
BLOCK_ELEMENTS = 1 << 18
#: the same for query blocks: larger, so that the unprojected ``(b x d) @ (d x M)`` product
#: reaches its peak (1,000 float32 queries at d = D = 2,048, one thread: 28-29 ms in blocks
#: of 512 rows or more against 32 ms in blocks of 128)
QUERY_BLOCK_ELEMENTS = 1 << 20


def _block_rows(width: int, elements: int = BLOCK_ELEMENTS) -> int:
    return max(16, elements // max(1, width))


def safe_row_norms(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norms of the rows of ``x`` (in its dtype), exact for finite rows whose sum of
    squares overflows (rescaled by the row's max); non-finite rows give NaN / Inf. Rows below
    ``1e-154`` may underflow to a smaller value (callers use ``max(‖x‖, ℓ)`` only)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        xb = x[bad]
        if bool(torch.isfinite(xb).all()):
            s = xb.abs().amax(1, keepdim=True)
            norms[bad] = torch.linalg.vector_norm(xb / s, dim=1) * s[:, 0]
    return norms


class GroupWeights:
    """``(G, b)`` float64 matrices of row blocks: ``W[g_i, i] = w_i`` (``1`` without ``w``),
    so that ``W @ Z_block`` adds every row to its group's sum. The whole ``(G, n)``
    indicator is built once when it is small (``G·n ≤ 2²²``), else block by block."""

    def __init__(self, groups: torch.Tensor | None, n: int, n_groups: int):
        self.groups, self.G = groups, n_groups
        self.full = None
        if groups is not None and n_groups * n <= 1 << 22:
            self.full = self._build(groups, n)

    def _build(self, g: torch.Tensor, b: int) -> torch.Tensor:
        W = torch.zeros(self.G, b, dtype=torch.float64)
        W[g, torch.arange(b)] = 1.0
        return W

    def __call__(self, rows: slice, w: torch.Tensor | None = None) -> torch.Tensor:
        b = rows.stop - rows.start
        if self.groups is None:
            return torch.ones(1, b, dtype=torch.float64) if w is None else w[None, :]
        W = self.full[:, rows] if self.full is not None else self._build(self.groups[rows], b)
        return W if w is None else W * w


def linear_statistic(
    X: torch.Tensor, groups: torch.Tensor | None, n_groups: int, bound: float
) -> torch.Tensor:
    """``T_g = Σ_{x∈g} x / max(‖x‖₂, ℓ)`` in float64, one read of ``X`` (any float dtype);
    ``ValueError`` if ``X`` holds NaN or Inf."""
    n, d = X.shape
    weights = GroupWeights(groups, n, n_groups)
    T = torch.zeros(n_groups, d, dtype=torch.float64)
    # small memory-bound steps: one thread (waking a second costs more than it brings, and
    # milliseconds per step when the other core is busy)
    with single_thread_if(True):
        for rows in iter_blocks(n, _block_rows(d)):
            xb = X[rows].to(torch.float64)
            norms = safe_row_norms(xb)
            if not bool(torch.isfinite(norms).all()):
                check_finite(X, "X")
            w = 1.0 / torch.clamp(norms, min=bound)
            T.addmm_(weights(rows, w), xb)
    return T


def feature_statistic(
    X: torch.Tensor, groups: torch.Tensor | None, n_groups: int, fmap: torch.nn.Module
) -> torch.Tensor:
    """``T_g = Σ_{x∈g} z(x)`` in float64 over row blocks, one read of ``X``. Rows whose
    features are not finite are checked: NaN / Inf input raises ``ValueError``; a finite row
    so large that its float64 phases overflow contributes ``0`` (its kernel value with any
    finite point is ``0`` to float64 precision; ``‖0‖ ≤`` every bound)."""
    n = X.shape[0]
    D = fmap.num_features
    weights = GroupWeights(groups, n, n_groups)
    T = torch.zeros(n_groups, D, dtype=torch.float64)
    for rows in iter_blocks(n, _block_rows(max(D, X.shape[1]))):
        Z = fmap(X[rows])
        ok = torch.isfinite(Z).all(1)
        if not bool(ok.all()):
            check_finite(X, "X")
            Z[~ok] = 0.0
        T.addmm_(weights(rows), Z)
    return T


class QueryKernel:
    """``y ↦ z(Py)ᵀ S̃`` for a fixed release, with the public matrices cached per dtype.

    Parameters
    ----------
    fmap : KernelFeatureMap
        The release's public feature map.
    sketches : tensor of shape (G, D), float64
        The noisy sketches.
    """

    def __init__(self, fmap, sketches: torch.Tensor):
        self.linear = fmap.kernel == "linear"
        self.bound = fmap.lengthscale
        self.fourier = fmap.projection if fmap.projection_kind == "fourier" else None
        mats: dict[str, torch.Tensor] = {}
        scale = None
        if self.fourier is not None:
            mats["signs"] = self.fourier.signs
            scale = self.fourier.scale
        elif fmap.projection is not None:
            mats["P"] = fmap.projection.weight / math.sqrt(fmap.projection_dim)
        if self.linear:
            if scale is not None:
                mats["scale"] = scale
            mats["S"] = sketches.T.contiguous()
        else:
            omegas, amps = [], []
            for w, f in zip(fmap.weights, fmap.maps, strict=True):
                omegas.append(f.projection.weight)
                amps.append(
                    torch.full(
                        (f.num_frequencies,), f.amplitude * math.sqrt(w), dtype=torch.float64
                    )
                )
            a = torch.cat(amps).to(torch.float64)
            # z = [cos(Ω_j x), sin(Ω_j x)]·a_j per component: regroup the sketch columns so
            # that one cos and one sin of the stacked Ω serve every component
            cols = torch.cat(
                [
                    torch.arange(s, s + f.num_frequencies)
                    for s, f in zip(_starts(fmap.maps), fmap.maps, strict=True)
                ]
            )
            sin_cols = cols + torch.cat(
                [torch.full((f.num_frequencies,), f.num_frequencies) for f in fmap.maps]
            )
            W = omegas[0] if len(omegas) == 1 else torch.cat(omegas, 0)
            # the Fourier map's per-coordinate scale folds into the frequencies
            mats["W"] = W if scale is None else W * scale
            mats["C"] = sketches[:, cols].T * a[:, None]
            mats["S"] = sketches[:, sin_cols].T * a[:, None]
        self._mats = {torch.float64: {k: v.contiguous() for k, v in mats.items()}}
        # widest per-row temporary: the input row, or cos θ and sin θ
        self.width = max(fmap.in_features, 2 * mats["S"].shape[0])

    def _get(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if dtype not in self._mats:
            self._mats[dtype] = {k: v.to(dtype) for k, v in self._mats[torch.float64].items()}
        return self._mats[dtype]

    def _block(self, y: torch.Tensor, m: dict[str, torch.Tensor]) -> torch.Tensor:
        if "P" in m:
            y = y @ m["P"].T
        elif self.fourier is not None:
            y = self.fourier.sampled_transform(y, m["signs"])
        if self.linear:
            if "scale" in m:
                y = y * m["scale"]
            # norms in float64: a float32 row can have a norm above float32's range
            w = 1.0 / torch.clamp(safe_row_norms(y.to(torch.float64)), min=self.bound)
            return (y * w.to(y.dtype)[:, None]) @ m["S"]
        cos, sin = _cos_sin(y @ m["W"].T)
        return torch.addmm(cos @ m["C"], sin, m["S"])

    def __call__(self, Y: torch.Tensor) -> torch.Tensor:
        """Answers ``(q, G)`` in float64 for queries ``(q, d)`` (validated shape, any float
        dtype; NaN / Inf raise ``ValueError``)."""
        dtype = compute_dtype(Y.dtype)
        m = self._get(dtype)
        q = Y.shape[0]
        G = m["S"].shape[1]
        out = torch.empty(q, G, dtype=torch.float64)
        with torch.no_grad():
            for rows in iter_blocks(q, _block_rows(self.width, QUERY_BLOCK_ELEMENTS)):
                out[rows] = self._block(Y[rows].to(dtype), m)
            bad = ~torch.isfinite(out).all(1)
            if bool(bad.any()):
                check_finite(Y, "Y")
                # finite but huge queries: phases overflowed the compute dtype
                out[bad] = self._block(Y[bad].to(torch.float64), self._get(torch.float64))
                out[~torch.isfinite(out)] = 0.0
        return out


def _cos_sin(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos θ, sin θ``; float32 through NumPy's SIMD kernels, float64 through torch. Two
    contiguous arrays (and two products with ``C`` and ``S``) beat writing both into halves
    of one buffer for one product: 1.15 against 1.45 ms for 2·10⁶ float32 values here."""
    if theta.dtype == torch.float32 and theta.device.type == "cpu":
        a = theta.numpy()
        with np.errstate(invalid="ignore"):  # overflowed phases: NaN, handled by the caller
            return torch.from_numpy(np.cos(a)), torch.from_numpy(np.sin(a))
    return torch.cos(theta), torch.sin(theta)


def _starts(maps) -> list[int]:
    """Column offset of each component's ``[cos, sin]`` block in ``z``."""
    starts, s = [], 0
    for f in maps:
        starts.append(s)
        s += 2 * f.num_frequencies
    return starts
