"""Differentially private ℓ1 and ℓ2 distance sums ``Σ_x ‖x − y‖`` by noisy dyadic trees.

ℓ1 (BLMST24 §4, in the prefix-sum form of Liu et al. 2024): ``Σ_x ‖x − y‖₁ = Σ_i Σ_x |x_i − y_i|``
is one 1-D problem per coordinate. Coordinate ``i`` (declared bounds ``[lo_i, hi_i]``, range
``R_i``) gets a complete binary tree over ``2^L`` leaves of width ``w_i = R_i/2^L``; every node
(empty ones included) stores the count of points in its interval and the sum of their
``(x_i − lo_i)/R_i``. One point lies in ``L + 1`` nodes per tree, so the whole vector of
``2d(2^{L+1} − 1)`` node values has L1 sensitivity ``Δ₁ = 2d(L + 1)`` and L2 sensitivity
``Δ₂ = √(2d(L + 1))`` (add/remove; ×2 for replace-one). With one Laplace scale ``b = Δ₁/ε``
each coordinate spends ``ε/d``, its count tree and its sum tree ``ε/(2d)`` each (basic
composition: the shares sum to ``ε``). A query adds ≤ ``L`` noisy nodes per prefix:

``Σ_x |x_i − y_i| = y·N_{<t} − S_{<t} + S_{>t} − y·N_{>t} + n_t·|c_t − y|``

with ``t`` the leaf of ``y_i`` and ``c_t`` its centre, so the answer is exact up to ``w_i/2``
per point of ``y``'s own leaf plus the noise (additive error ``Õ(d^{1.5} R L^{1.5}/ε)``,
``Õ(d R L^{1.5}√log(1/δ)/ε)`` with Gaussian noise).

ℓ2 (BLMST24 §6): ``‖v‖₂ = √(π/2)·E|gᵀv|`` for ``g ~ N(0, I)``; a public ``G ∈ R^{k×d}`` maps
points (clipped to the declared norm ``R₂``) to ``Gx`` with coordinates clipped to
``±c·R₂`` and the ℓ1 structure runs there; the answer is ``√(π/2)/k`` times the ℓ1 answer.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from snnk._persist import HeaderError
from snnk._utils import as_float_tensor, check_positive, check_positive_int
from snnk.private.accountant import PrivacyLeakWarning, resolve_accountant, warn_delta
from snnk.private.kde import check_privacy
from snnk.private.mechanisms import NoiseSource, calibrate
from snnk.private.mechanisms import check_seed as _check_seed
from snnk.private.mechanisms import public_seed as _public_seed
from snnk.private.release import Release


def _offsets(levels: int) -> np.ndarray:
    """Start of each level (level j: nodes of 2^j leaves, 2^{L-j} of them) in the flat array."""
    sizes = [1 << (levels - j) for j in range(levels + 1)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _tree_values(u: np.ndarray, leaves: np.ndarray, levels: int, weights: np.ndarray | None):
    """Per-coordinate node sums of ``weights`` (or counts) over all levels: ``(d, N)``."""
    d = u.shape[1]
    off = _offsets(levels)
    out = np.zeros((d, int(off[-1])), dtype=np.float64)
    for i in range(d):
        w = None if weights is None else weights[:, i]
        leaf = np.bincount(leaves[:, i], weights=w, minlength=1 << levels).astype(np.float64)
        for j in range(levels + 1):
            out[i, off[j] : off[j + 1]] = leaf
            leaf = leaf.reshape(-1, 2).sum(1) if leaf.size > 1 else leaf
    return out


def _prefix(nodes: np.ndarray, t: np.ndarray, levels: int) -> np.ndarray:
    """``Σ`` of the leaves ``[0, t)`` for every query/coordinate: ``t`` of shape ``(q, d)``."""
    off = _offsets(levels)
    cols = np.arange(nodes.shape[0])[None, :]
    out = np.zeros(t.shape, dtype=np.float64)
    for j in range(levels + 1):
        hit = ((t >> j) & 1).astype(bool)
        idx = off[j] + np.where(hit, (t >> j) - 1, 0)
        out += np.where(hit, nodes[cols, idx], 0.0)
    return out


class DistanceSumRelease(Release):
    """A published DP distance-sum structure (noisy dyadic count and sum trees).

    Attributes
    ----------
    counts, sums : ndarray of shape (k, 2^{L+1} − 1)
        Noisy node counts and normalised node sums, per coordinate, all levels.
    lower, upper : ndarray of shape (k,)
        The declared (public) coordinate bounds of the tree.
    embedding : ndarray of shape (k, d) (``metric="l2"``) or (0, d)
        The public Gaussian ℓ2→ℓ1 map ``G``.
    """

    _params: ClassVar[dict[str, tuple[type, ...]]] = {
        "metric": (str,),
        "in_features": (int,),
        "levels": (int,),
        "noise": (str,),
        "epsilon": (float,),
        "delta": (float,),
        "neighboring": (str,),
        "scale": (float,),
        "sensitivity": (float,),
        "data_norm": (float, type(None)),
        "public_seed": (int,),
    }
    _arrays: ClassVar[dict[str, int]] = {
        "counts": 2,
        "sums": 2,
        "lower": 1,
        "upper": 1,
        "embedding": 2,
    }

    def _post_init(self) -> None:
        k, N = self.counts.shape
        if self.sums.shape != (k, N) or N != (1 << (self.levels + 1)) - 1:
            raise HeaderError("tensors.counts", "tree shapes disagree with levels")
        if (
            self.lower.shape != (k,)
            or self.upper.shape != (k,)
            or not np.all(self.upper > self.lower)
        ):
            raise HeaderError("tensors.lower", "bounds must have shape (k,) with upper > lower")
        if self.metric == "l2" and self.embedding.shape != (k, self.in_features):
            raise HeaderError("tensors.embedding", f"expected shape ({k}, {self.in_features})")

    def budget_split(self) -> dict[str, float]:
        """The ε share of each component: every coordinate's count and sum trees (Laplace:
        each node value carries the same noise, so a component's share is its part of the
        L1 sensitivity). The shares sum to ``epsilon``."""
        k = self.counts.shape[0]
        part = self.epsilon / (2 * k)
        out = {}
        for i in range(k):
            out[f"coordinate{i}.count"] = part
            out[f"coordinate{i}.sum"] = part
        return out

    def _embed(self, Y: torch.Tensor) -> np.ndarray:
        y = Y.reshape(-1, self.in_features).to(torch.float64).numpy()
        return y @ self.embedding.T if self.metric == "l2" else y

    def query(self, Y) -> np.ndarray:
        """DP estimate of ``Σ_x ‖x − y‖`` (ℓ1 or ℓ2) for every row of ``Y``: shape ``(q,)``."""
        Y = as_float_tensor(Y, "Y", last_dim=self.in_features, allow_empty=True)
        y = self._embed(Y)
        lo, hi = self.lower[None, :], self.upper[None, :]
        R = hi - lo
        L = self.levels
        yc = np.clip(y, lo, hi)
        u = (yc - lo) / R  # in [0, 1]
        t = np.clip(np.floor(u * (1 << L)).astype(np.int64), 0, (1 << L) - 1)
        c_lt, s_lt = _prefix(self.counts, t, L), _prefix(self.sums, t, L)
        c_le, s_le = _prefix(self.counts, t + 1, L), _prefix(self.sums, t + 1, L)
        root = (1 << (L + 1)) - 2
        n_all, s_all = self.counts[:, root][None, :], self.sums[:, root][None, :]
        centre = (t + 0.5) / (1 << L)
        per = (
            u * c_lt
            - s_lt
            + (s_all - s_le)
            - u * (n_all - c_le)
            + (c_le - c_lt) * np.abs(centre - u)
        ) * R
        per += n_all * np.abs(y - yc)  # queries outside the box: every point is that much further
        total = per.sum(1)
        if self.metric == "l2":
            total *= math.sqrt(math.pi / 2) / self.counts.shape[0]
        return total

    def query_noise_std(self) -> float:
        """Rough s.d. of the privacy noise of one answer (``≤ 2L`` noisy nodes per term)."""
        per = {"laplace": math.sqrt(2.0), "gaussian": 1.0}.get(self.noise, 0.0) * self.scale
        k = self.counts.shape[0]
        R = float(np.mean(self.upper - self.lower))
        s = per * R * math.sqrt(k * 4 * (self.levels + 1))
        return s * (math.sqrt(math.pi / 2) / k if self.metric == "l2" else 1.0)


def _check_bounds(bounds: Any, d: int) -> tuple[np.ndarray, np.ndarray]:
    if bounds is None:
        raise ValueError(
            "bounds=(lower, upper) must be declared (public, data-independent coordinate "
            "bounds); taking them from the private data (min/max) leaks"
        )
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lower, upper), got {bounds!r}") from None
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (d,)).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (d,)).copy()
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and np.all(hi > lo)):
        raise ValueError(f"bounds must be finite with upper > lower, got {bounds!r}")
    return lo, hi


def private_distance_sums(
    X,
    *,
    metric: str = "l1",
    bounds=None,
    data_norm: float | None = None,
    epsilon: float,
    delta: float = 0.0,
    noise: str = "laplace",
    neighboring: str = "add_remove",
    levels: int = 10,
    embedding_dim: int = 64,
    clip_sigmas: float = 4.0,
    accountant=None,
    random_state=None,
    public_seed: int | None = None,
) -> DistanceSumRelease:
    r"""Release a DP structure answering ``Σ_{x∈X} ‖x − y‖₁`` (``metric="l1"``) or
    ``‖x − y‖₂`` (``"l2"``) for any later query ``y``.

    Parameters
    ----------
    X : array of shape (n, d)
    metric : {"l1", "l2"}
    bounds : (lower, upper)
        ``"l1"``: declared coordinate bounds (scalars or arrays of shape ``(d,)``); points are
        clipped into them. Required.
    data_norm : float
        ``"l2"``: declared bound ``R₂`` on ``‖x‖₂`` (rows are scaled down to it). Required.
    epsilon, delta, noise, neighboring, accountant, random_state, public_seed
        As in :func:`~snnk.private.private_kernel_sum`.
    levels : int
        ``L``: ``2^L`` leaves per coordinate (public; the leaf width bounds the rounding error
        ``w = R/2^L`` per point near the query).
    embedding_dim : int
        ``k`` of the ℓ2→ℓ1 embedding (relative error ``≈ 1/√k`` per distance).
    clip_sigmas : float
        Embedded coordinates are clipped to ``± clip_sigmas·R₂``.
    """
    if metric not in ("l1", "l2"):
        raise ValueError(f"metric must be 'l1' or 'l2', got {metric!r}")
    eps, delta, noise, neighboring = check_privacy(epsilon, delta, noise, neighboring)
    levels = check_positive_int(levels, "levels")
    if levels > 24:
        raise ValueError(f"levels must be <= 24 (2^levels leaves per coordinate), got {levels}")
    X = as_float_tensor(X, "X", allow_empty=True)
    if X.ndim != 2 or X.shape[1] == 0:
        raise ValueError(f"X must have shape (n, d) with d >= 1, got {tuple(X.shape)}")
    n, d = X.shape
    x = X.to(torch.float64).numpy()
    seed = _public_seed(random_state) if public_seed is None else _check_seed(public_seed)
    if metric == "l2":
        if data_norm is None:
            raise ValueError(
                "data_norm must be declared for metric='l2' (a public bound on ||x||_2); "
                "taking it from the private data leaks"
            )
        R2 = check_positive(data_norm, "data_norm")
        k = check_positive_int(embedding_dim, "embedding_dim")
        c = check_positive(clip_sigmas, "clip_sigmas")
        gen = torch.Generator().manual_seed(seed % 2**63)
        G = torch.randn(k, d, generator=gen, dtype=torch.float64).numpy()
        lo, hi = np.full(k, -c * R2), np.full(k, c * R2)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x * np.minimum(1.0, R2 / np.maximum(norms, 1e-300))
        x = x @ G.T
    else:
        R2, G = None, np.zeros((0, d))
        lo, hi = _check_bounds(bounds, d)
    acct = resolve_accountant(accountant)
    spend = (0.0, 0.0) if math.isinf(eps) else (eps, delta)
    acct.check(*spend)
    warn_delta(delta, n)
    clipped = int(np.sum(np.any((x < lo) | (x > hi), axis=1)))
    if clipped:
        warnings.warn(
            f"{clipped} row(s) were clipped into the declared bounds",
            PrivacyLeakWarning,
            stacklevel=2,
        )
    u = (np.clip(x, lo, hi) - lo) / (hi - lo)
    leaves = np.clip(np.floor(u * (1 << levels)).astype(np.int64), 0, (1 << levels) - 1)
    counts = _tree_values(u, leaves, levels, None)
    sums = _tree_values(u, leaves, levels, u)
    k = counts.shape[0]
    factor = 2.0 if neighboring == "replace_one" else 1.0
    nodes = 2 * k * (levels + 1)
    sens = factor * (nodes if noise == "laplace" else math.sqrt(nodes))
    mech = calibrate(noise, sens, eps, delta, 2 * counts.size)
    source = NoiseSource(random_state)
    noisy = mech.release(np.stack([counts, sums]), source)
    del counts, sums
    params = {
        "metric": metric,
        "in_features": d,
        "levels": levels,
        "noise": noise,
        "epsilon": eps,
        "delta": delta,
        "neighboring": neighboring,
        "scale": float(mech.scale),
        "sensitivity": float(sens),
        "data_norm": R2,
        "public_seed": seed,
    }
    arrays = {"counts": noisy[0], "sums": noisy[1], "lower": lo, "upper": hi, "embedding": G}
    release = DistanceSumRelease(params, arrays)
    acct.spend(*spend)
    return release
