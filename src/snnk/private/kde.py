"""Differentially private kernel sums and kernel density (random features + calibrated noise).

The curator computes ``T = Σ_{x∈X} z(x) ∈ R^D`` (one row per group for grouped data) with a
public random feature map ``z`` (:class:`~snnk.private.smooth.KernelFeatureMap`), adds noise
calibrated to the sensitivity of ``T`` and publishes ``S̃``. Any query is then
``D(y) = z(y)ᵀ S̃ ≈ Σ_x k(x, y)`` (LSQ-RFF, Wagner et al. 2023), divided by a noisy (or
public) count for the density. With ``projection_dim=k`` the data and the queries first go
through a data-independent Johnson-Lindenstrauss map to ``R^k`` (BLMST24 §7): the average
kernel value is kept up to ``O(α)`` with ``k = O(α⁻² log(1/α))`` whatever ``n`` and ``d``, and
a query costs ``O(dk + kD)`` (dense Gaussian map) or ``O(d log d + kD)`` (``projection=
"fourier"``, a subsampled randomized Fourier transform) instead of ``O(dD)``. The map is
public and data-independent and the features of any input have norm 1, so the sensitivity
below holds with or without it.

Sensitivity (``z`` paired Fourier features, ``‖z(x)‖₂² = Σ_j w_j = 1`` up to the exponential-
sum weights): add/remove changes ``T`` by one ``z(x)``, so ``Δ₂ = ‖z‖₂ = 1`` and
``Δ₁ = max_x ‖z(x)‖₁ ≤ √D``; replace-one doubles both.
"""

from __future__ import annotations

import math
import warnings
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch

from snnk._persist import HeaderError
from snnk._utils import as_float_tensor, check_positive, check_positive_int
from snnk.private._compute import QueryKernel, feature_statistic, linear_statistic
from snnk.private.accountant import (
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    ParallelEvent,
    PrivacyLeakWarning,
    check_delta,
    check_epsilon,
    check_neighboring,
    resolve_accountant,
    warn_delta,
)
from snnk.private.mechanisms import NOISES, NoiseSource, calibrate
from snnk.private.mechanisms import check_seed as _check_seed
from snnk.private.mechanisms import public_seed as _public_seed
from snnk.private.projection import PROJECTIONS
from snnk.private.release import Release, readonly
from snnk.private.smooth import KERNELS, KernelFeatureMap

#: weight ``a`` of the count coordinates in a joint Gaussian release ``[T_g, a·n_g]``
_COUNT_WEIGHT = 1.0


def check_privacy(epsilon, delta, noise, neighboring) -> tuple[float, float, str, str]:
    """Validated ``(epsilon, delta, noise, neighboring)``; ``epsilon = inf`` (no privacy) is
    accepted with a :class:`PrivacyLeakWarning`."""
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {list(NOISES)}, got {noise!r}")
    eps = check_epsilon(epsilon, allow_inf=True)
    if math.isinf(eps):
        warnings.warn(
            "epsilon=inf: the release is NOT private (no noise, exact counts); use it only "
            "as the non-private reference",
            PrivacyLeakWarning,
            stacklevel=3,
        )
        return eps, 0.0, noise, check_neighboring(neighboring)
    return eps, check_delta(delta, noise), noise, check_neighboring(neighboring)


def check_lengthscale(lengthscale: Any) -> float:
    """The declared bandwidth; ``None`` is refused (a bandwidth chosen from the private data,
    e.g. by the median heuristic, leaks)."""
    if lengthscale is None:
        raise ValueError(
            "lengthscale must be declared (a public, data-independent bandwidth); choosing it "
            "from the private data (median heuristic) leaks - pick it from public data or "
            "domain knowledge"
        )
    return check_positive(lengthscale, "lengthscale")


class KernelSumRelease(Release):
    """A published DP kernel-sum sketch: query it any number of times at no privacy cost.

    Attributes
    ----------
    sketches : ndarray of shape (G, D)
        Noisy ``Σ_{x in group g} z(x)``.
    counts : ndarray of shape (G,)
        Noisy group sizes (exact only when declared public, see ``n_public``).
    public_randomness : mapping of str to ndarray
        The feature map's random matrices (data-independent, drawn from ``public_seed``).
    """

    _params: ClassVar[dict[str, tuple[type, ...]]] = {
        "kernel": (str,),
        "lengthscale": (float,),
        "in_features": (int,),
        "num_features": (int,),
        "projection_dim": (int, type(None)),
        "projection": (str,),
        "public_seed": (int,),
        "noise": (str,),
        "epsilon": (float,),
        "delta": (float,),
        "neighboring": (str,),
        "sketch_epsilon": (float,),
        "count_epsilon": (float,),
        "sketch_delta": (float,),
        "count_delta": (float,),
        "sketch_scale": (float,),
        "count_scale": (float,),
        "sketch_sensitivity": (float,),
        "count_sensitivity": (float,),
        "count_weight": (float,),
        "n_public": (bool,),
        "n_groups": (int,),
        "labels": (list, type(None)),
    }
    _arrays: ClassVar[dict[str, int]] = {"sketches": 2, "counts": 1}

    def __init__(
        self,
        params: dict[str, Any],
        arrays: dict[str, Any],
        *,
        feature_map: KernelFeatureMap | None = None,
    ):
        public = {k[9:]: readonly(v) for k, v in arrays.items() if k.startswith("features.")}
        own = {k: v for k, v in arrays.items() if not k.startswith("features.")}
        object.__setattr__(self, "public_randomness", MappingProxyType(public))
        # the builder hands over the map it drew (the same arrays): no second draw
        object.__setattr__(self, "_given_map", feature_map)
        super().__init__(params, own)

    def _post_init(self) -> None:
        fmap = self._given_map or KernelFeatureMap(
            self.kernel,
            self.lengthscale,
            self.in_features,
            self.num_features,
            self.projection_dim,
            self.public_seed,
            self.projection,
        )
        object.__delattr__(self, "_given_map")
        state = fmap.state_dict()
        if set(state) != set(self.public_randomness):
            raise HeaderError(
                "tensors", f"public randomness {sorted(self.public_randomness)} != {sorted(state)}"
            )
        for k, t in state.items():
            if tuple(t.shape) != self.public_randomness[k].shape:
                raise HeaderError(f"tensors.features.{k}", f"expected shape {tuple(t.shape)}")
        fmap.load_state_dict(
            {k: torch.from_numpy(v.copy()) for k, v in self.public_randomness.items()}
        )
        if self.sketches.shape != (self.n_groups, fmap.num_features) or self.counts.shape != (
            self.n_groups,
        ):
            raise HeaderError("tensors.sketches", "shape disagrees with n_groups / num_features")
        self._cache("_features", fmap)
        self._cache("_query", QueryKernel(fmap, torch.from_numpy(self.sketches.copy())))

    def arrays(self) -> dict[str, np.ndarray]:
        out = super().arrays()
        out.update({f"features.{k}": v for k, v in self.public_randomness.items()})
        return out

    @classmethod
    def _check(cls, params, arrays):
        super()._check(params, {k: v for k, v in arrays.items() if not k.startswith("features.")})

    # -- queries ---------------------------------------------------------------------------
    def features(self, Y) -> torch.Tensor:
        """The public feature map ``z(Py)`` of queries ``Y`` (shape ``(q, D)``, float64)."""
        Y = as_float_tensor(Y, "Y", last_dim=self.in_features, allow_empty=True)
        with torch.no_grad():
            return self._features(Y.reshape(-1, self.in_features))

    def query(self, Y, *, average: bool = True) -> np.ndarray:
        """DP estimate of ``Σ_x k(x, y)`` (``average=False``) or of the kernel density
        ``(1/n) Σ_x k(x, y)`` for every row ``y`` of ``Y``.

        Returns shape ``(q,)`` for an ungrouped release, ``(q, G)`` for a grouped one. The
        average divides by ``max(ñ_g, 1)`` (post-processing of the noisy count).
        """
        Y = as_float_tensor(
            Y, "Y", last_dim=self.in_features, allow_empty=True, check_finite_values=False
        )
        out = self._query(Y.reshape(-1, self.in_features))
        res = out.numpy()
        if average:
            res = res / np.maximum(self.counts, 1.0)
        return res[:, 0] if self.n_groups == 1 else res

    def query_noise_std(self, *, average: bool = True) -> np.ndarray:
        """Standard deviation of the privacy noise in :meth:`query` (given the public
        randomness): ``std(η)·‖z(y)‖₂``, exact since ``‖z(y)‖₂`` is the same for every ``y``;
        the average divides by the count (the count's own noise is not included)."""
        per = {"laplace": math.sqrt(2.0), "gaussian": 1.0}.get(self.noise, 0.0)
        std = per * self.sketch_scale * self._features.l2_bound
        s = np.full(self.n_groups, std)
        return s / np.maximum(self.counts, 1.0) if average else s

    def dp_event(self):
        """A dp_accounting-style description of the release: the sketches (one event, in
        parallel over the groups), then the counts when they were released."""
        events = []
        parts = (
            (self.sketch_epsilon, self.sketch_delta, self.sketch_scale, self.sketch_sensitivity),
            (self.count_epsilon, self.count_delta, self.count_scale, self.count_sensitivity),
        )
        if self.count_weight > 0:  # counts ride in the sketch's Gaussian release
            parts = parts[:1]
        for eps, delta, scale, sens in parts:
            if not (scale > 0):
                continue
            if self.noise == "laplace":
                ev = LaplaceEvent(scale / sens)
            else:
                ev = GaussianEvent(scale / sens, eps, delta)
            events.append(ParallelEvent(ev, self.n_groups) if self.n_groups > 1 else ev)
        return ComposedEvent(tuple(events))


def _statistics(X, groups, n_groups, fmap) -> tuple[torch.Tensor, torch.Tensor]:
    n = X.shape[0]
    with torch.no_grad():
        if fmap.kernel == "linear" and fmap.projection is None:
            T = linear_statistic(X, groups, n_groups, fmap.lengthscale)
        else:
            T = feature_statistic(X, groups, n_groups, fmap)
    if groups is None:
        counts = torch.full((1,), float(n), dtype=torch.float64)
    else:
        counts = torch.bincount(groups, minlength=n_groups).to(torch.float64)
    return T, counts


def _check_groups(groups, n, n_groups):
    if groups is None:
        return None, 1
    n_groups = check_positive_int(n_groups, "n_groups")
    g = np.asarray(groups)
    if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
        raise ValueError(
            f"groups must be an integer array of shape ({n},) (one group per row: the groups "
            f"partition X, which is what makes per-group sketches parallel-composed), got "
            f"{g.dtype} of shape {g.shape}"
        )
    if n and (g.min() < 0 or g.max() >= n_groups):
        raise ValueError(f"groups must lie in [0, n_groups={n_groups})")
    return torch.from_numpy(g.astype(np.int64)), n_groups


def private_kernel_sum(
    X,
    *,
    kernel: str = "gaussian",
    lengthscale: float | None = None,
    epsilon: float,
    delta: float = 0.0,
    noise: str = "laplace",
    neighboring: str = "add_remove",
    num_features: int = 1024,
    projection_dim: int | None = None,
    projection: str = "gaussian",
    public_n: int | None = None,
    count_fraction: float = 0.1,
    groups=None,
    n_groups: int | None = None,
    labels: list | None = None,
    accountant=None,
    random_state=None,
    public_seed: int | None = None,
) -> KernelSumRelease:
    r"""Release a DP kernel-sum sketch of the private rows ``X`` (shape ``(n, d)``).

    Parameters
    ----------
    X : array of shape (n, d)
        The private data (finite floats). Nothing about it is stored except noisy sums.
    kernel : {"gaussian", "exponential", "laplace", "cauchy", "linear"}
        ``exp(−‖δ‖²/(2ℓ²))``, ``exp(−‖δ‖₂/ℓ)``, ``exp(−‖δ‖₁/ℓ)``, ``1/(1+‖δ‖²/ℓ²)`` (a
        non-negative sum of ≤ 25 Gaussians, one feature block each) or ``⟨x, y⟩/ℓ²`` with
        rows clipped to norm ``ℓ`` (then ``z(x)`` is the clipped row: ``D = d``).
    lengthscale : float
        Public bandwidth ``ℓ`` (for ``"linear"``: the declared norm bound); required (never
        chosen from the data).
    epsilon, delta : float
        Privacy parameters; ``delta = 0`` (pure ε-DP) with Laplace noise, ``> 0`` with Gaussian.
        ``epsilon = inf`` is the explicit non-private mode (a :class:`PrivacyLeakWarning`).
    noise : {"laplace", "gaussian"}
        Laplace noise on ``Δ₁``, or analytic-Gaussian noise on ``Δ₂`` (its query error does
        not grow with ``num_features``).
    neighboring : {"add_remove", "replace_one"}
        The neighbouring relation; ``"replace_one"`` doubles every sensitivity and makes the
        total ``n`` public (neighbours have the same size).
    num_features : int
        ``D``, the sketch length (paired Fourier features).
    projection_dim : int or None
        ``k`` of the KDE-preserving JL projection (``None``: no projection).
    projection : {"gaussian", "fourier"}
        The JL map when ``projection_dim`` is set: a dense Gaussian ``k x d`` matrix (``d·k``
        per query) or the subsampled randomized Fourier transform (``O(d log d)`` per query
        whatever ``k``, ``k ≤ d``; :mod:`snnk.private.projection`). Both are public,
        data-independent and applied to the data and the queries alike: the sketch is
        ``Σ_x z(Px)`` with ``‖z(·)‖₂ = 1`` for any input, so the sensitivity (hence the noise)
        is the same with either map or none.
    public_n : int or None
        Declare ``n`` public (it must equal ``len(X)``): no budget is spent on the count.
    count_fraction : float in (0, 1)
        Laplace noise: share of ``ε`` spent on the noisy count(s) when they are released.
        Gaussian noise releases the counts jointly with the sketch instead (extra coordinates
        ``a·n_g``, ``a = 1``; ``Δ₂ = √(‖z‖² + a²)``), which costs less than a split.
    groups, n_groups : int array of shape (n,), int
        Per-group sketches (classes): the groups partition ``X``, so all sketches together cost
        ``ε`` once (parallel composition); noisy group counts likewise.
    labels : list or None
        Public names of the groups (JSON scalars, stored with the release).
    accountant : BudgetAccountant or None
        Checked before the data is touched, charged ``(ε, δ)`` after the release.
    random_state : None or int
        ``None``: secure noise and a fresh public seed. An int makes both reproducible (tests
        only; :class:`PrivacyLeakWarning`).
    public_seed : int or None
        Seed of the public randomness alone (feature frequencies, projection); it may be
        shared and published. ``None``: derived from ``random_state``.

    Returns
    -------
    KernelSumRelease
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    ell = check_lengthscale(lengthscale)
    eps, delta, noise, neighboring = check_privacy(epsilon, delta, noise, neighboring)
    num_features = check_positive_int(num_features, "num_features")
    if projection_dim is not None:
        projection_dim = check_positive_int(projection_dim, "projection_dim")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {list(PROJECTIONS)}, got {projection!r}")
    frac = check_positive(count_fraction, "count_fraction")
    if frac >= 1:
        raise ValueError(f"count_fraction must lie in (0, 1), got {count_fraction!r}")
    # finiteness is checked during the one pass over X that computes the statistic
    X = as_float_tensor(X, "X", allow_empty=True, check_finite_values=False)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (n, d), got {tuple(X.shape)}")
    n, d = X.shape
    if d == 0:
        raise ValueError("X has no columns; at least one feature is needed")
    grp, G = _check_groups(groups, n, n_groups)
    if public_n is not None:
        if grp is not None:
            raise ValueError("public_n applies to ungrouped releases; group sizes are private")
        if check_positive_int(public_n, "public_n") != n:
            raise ValueError(f"public_n={public_n} was declared but X has {n} rows")
    n_public = grp is None and (public_n is not None or neighboring == "replace_one")
    acct = resolve_accountant(accountant)
    spend_eps, spend_delta = (0.0, 0.0) if math.isinf(eps) else (eps, delta)
    acct.check(spend_eps, spend_delta)
    warn_delta(delta, n)

    seed = _public_seed(random_state) if public_seed is None else _check_seed(public_seed)
    fmap = KernelFeatureMap(kernel, ell, d, num_features, projection_dim, seed, projection)
    source = NoiseSource(random_state)
    factor = 2.0 if neighboring == "replace_one" else 1.0
    count_eps = 0.0 if (n_public or math.isinf(eps)) else frac * eps
    # Gaussian noise: counts join the sketch as extra coordinates a·n_g of one release (L2
    # sensitivities add in squares, cheaper than splitting (ε, δ)); Laplace: a split.
    joint = noise == "gaussian" and count_eps > 0
    weight = _COUNT_WEIGHT if joint else 0.0
    if joint:
        count_eps = 0.0
    sketch_eps = eps - count_eps
    count_delta = frac * delta if count_eps > 0 else 0.0
    sketch_delta = delta - count_delta
    bound = fmap.l1_bound if noise == "laplace" else math.hypot(fmap.l2_bound, weight)
    dim = fmap.num_features + (1 if joint else 0)
    sk_mech = calibrate(noise, factor * bound, sketch_eps, sketch_delta, G * dim)
    # a record moves one group's count by 1 (add/remove) or two counts by 1 (replace-one)
    count_sens = factor if noise == "laplace" else math.sqrt(factor)
    T, counts = _statistics(X, grp, G, fmap)
    if joint:
        out = sk_mech.release(torch.cat([T, weight * counts[:, None]], 1).numpy(), source)
        sketches, counts_out = out[:, :-1], out[:, -1] / weight
        count_scale, count_sens = sk_mech.scale / weight, 0.0
    else:
        sketches = sk_mech.release(T.numpy(), source)
        counts_out, count_scale = counts.numpy().copy(), 0.0
    if count_eps > 0:
        cnt_mech = calibrate(noise, count_sens, count_eps, count_delta, G)
        counts_out, count_scale = cnt_mech.release(counts.numpy(), source), cnt_mech.scale
    del T, counts
    params = {
        "kernel": kernel,
        "lengthscale": ell,
        "in_features": d,
        "num_features": num_features,
        "projection_dim": projection_dim,
        "projection": projection,
        "public_seed": seed,
        "noise": noise,
        "epsilon": eps,
        "delta": delta,
        "neighboring": neighboring,
        "sketch_epsilon": sketch_eps,
        "count_epsilon": count_eps,
        "sketch_delta": sketch_delta,
        "count_delta": count_delta,
        "sketch_scale": float(sk_mech.scale),
        "count_scale": float(count_scale),
        "sketch_sensitivity": float(factor * bound),
        "count_sensitivity": float(count_sens),
        "count_weight": weight,
        "n_public": bool(n_public),
        "n_groups": G,
        "labels": None if labels is None else list(labels),
    }
    arrays = {"sketches": sketches, "counts": counts_out}
    arrays.update({f"features.{k}": v.numpy() for k, v in fmap.state_dict().items()})
    release = KernelSumRelease(params, arrays, feature_map=fmap)
    acct.spend(spend_eps, spend_delta)
    return release
