"""Empirical privacy audit (slow tier: ``pytest -m audit tests/private``).

For each mechanism: fix the public randomness, build worst-case neighbours ``X`` and ``X'``
(the pair that attains the claimed sensitivity), draw the *whole release* (sketches and noisy
counts, or every tree node) ``N`` times for each with the noise mechanism the builder
calibrated, and run the optimal (likelihood-ratio) distinguisher. A threshold chosen on one
half of the draws is evaluated on the other half; Clopper-Pearson bounds on its true- and
false-positive rates give ``ε_lb = ln((TPR_low − δ)/FPR_high)``, a 95 %-confidence lower bound
on the privacy loss actually achieved.

Requirements: ``ε_lb ≤ ε`` (no violation found) and ``ε_lb ≥ 0.5 ε`` (the audit has power),
and each mutant (halved noise, a missed factor 2 for replace-one, the noiseless statistic left
on the release) is caught.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from snnk.private import NoiseSource, private_distance_sums, private_kernel_sum
from snnk.private import distance as dist_mod
from snnk.private import kde as kde_mod
from snnk.private.distance import _tree_values

pytestmark = pytest.mark.audit
N = 400_000
EPS = 1.0
#: δ of the Gaussian audits: large enough that the (ε, δ) trade-off is reachable with ~1e6
#: draws (at δ = 1e-5 the optimal test lives beyond 4σ)
DELTA = 1e-3
N_GAUSS = 1_000_000


def clopper_pearson(k: int, n: int, alpha: float = 0.025) -> tuple[float, float]:
    lo = 0.0 if k == 0 else stats.beta.ppf(alpha, k, n - k + 1)
    hi = 1.0 if k == n else stats.beta.ppf(1 - alpha, k + 1, n - k)
    return float(lo), float(hi)


def epsilon_lower_bound(s0: np.ndarray, s1: np.ndarray, delta: float = 0.0) -> float:
    """``ε_lb`` of the threshold test ``s > τ`` (``s0`` under X, ``s1`` under X')."""
    h = len(s0) // 2
    taus = np.unique(np.quantile(s0[:h], 1 - np.geomspace(0.5, 2e-4, 200)))
    best, tau = -np.inf, taus[0]
    n0, n1 = h, len(s1) // 2
    for t in taus:  # choose τ on the first half, by its own conservative bound
        k0, k1 = int(np.sum(s0[:h] > t)), int(np.sum(s1[:n1] > t))
        v = math.log(max(clopper_pearson(k1, n1)[0] - delta, 1e-300) / clopper_pearson(k0, n0)[1])
        if v > best:
            best, tau = v, t
    k0, k1 = int(np.sum(s0[h:] > tau)), int(np.sum(s1[n1:] > tau))
    fpr_hi = clopper_pearson(k0, len(s0) - h)[1]
    tpr_lo = clopper_pearson(k1, len(s1) - n1)[0]
    return math.log(max(tpr_lo - delta, 1e-300) / fpr_hi)


def llr(o, T0, T1, noise, scales):
    """Log-likelihood ratio ``log p₁(o)/p₀(o)`` of independent Laplace / Gaussian coordinates."""
    if noise == "laplace":
        return ((np.abs(o - T0) - np.abs(o - T1)) / scales).sum(-1)
    return ((np.square(o - T0) - np.square(o - T1)) / (2 * scales**2)).sum(-1)


class Spy:
    """Records the mechanisms a builder calibrates; ``mutate`` rewrites them (mutants)."""

    def __init__(self, module, monkeypatch, mutate=None):
        self.mechs = []
        real = module.calibrate

        def spy(noise, sens, eps, delta, dim):
            if mutate is not None:
                noise, sens, eps, delta, dim = mutate(noise, sens, eps, delta, dim)
            m = real(noise, sens, eps, delta, dim)
            self.mechs.append(m)
            return m

        monkeypatch.setattr(module, "calibrate", spy)


def _features(release):
    f = kde_mod.KernelFeatureMap(
        release.kernel,
        release.lengthscale,
        release.in_features,
        release.num_features,
        release.projection_dim,
        release.public_seed,
        release.projection,
    )
    return lambda A: f(torch.as_tensor(np.atleast_2d(A), dtype=torch.float64)).sum(0).numpy(), f


def audit_kde(
    monkeypatch,
    noise="laplace",
    neighboring="add_remove",
    mutate=None,
    groups=False,
    projection=None,
):
    """ε_lb of the RFF kernel-sum release on its worst-case neighbours; ``projection`` (a
    map name) projects to ``k = 3`` first, and the worst case is then found through ``W P``."""
    D = 4
    X = np.array([[0.5, -0.2, 0.1, 0.3], [1.0, 0.4, -0.6, 0.0]])
    y = np.array([0, 1])
    delta = DELTA if noise == "gaussian" else 0.0
    kw = dict(
        kernel="gaussian",
        lengthscale=1.0,
        epsilon=EPS,
        delta=delta,
        noise=noise,
        neighboring=neighboring,
        num_features=D,
        public_seed=5,
        random_state=0,
    )
    if groups:
        kw.update(groups=y, n_groups=2)
    if projection is not None:
        kw.update(projection_dim=3, projection=projection)
    spy = Spy(kde_mod, monkeypatch, mutate)
    rel = private_kernel_sum(X, **kw)
    zsum, f = _features(rel)
    W = f.maps[0].projection.weight.numpy()
    if projection is not None:  # phases W P x: solve through the (public) linear map P
        W = W @ f.project(torch.eye(X.shape[1], dtype=torch.float64)).numpy().T
    xs = np.linalg.lstsq(W, np.full(D // 2, math.pi / 4), rcond=None)[0]
    xr = np.linalg.lstsq(W, np.full(D // 2, math.pi / 4 + math.pi), rcond=None)[0]
    G = 2 if groups else 1
    T0 = np.zeros((G, D))
    c0 = np.zeros(G)
    for row, g in zip(X, y if groups else [0, 0], strict=True):
        T0[g] += zsum(row)
        c0[g] += 1
    if neighboring == "add_remove":  # X' = X ∪ {x*} (class 0)
        T1, c1 = T0.copy(), c0.copy()
        T1[0] += zsum(xs)
        c1[0] += 1
        T0 = T0.copy()
    else:  # replace a record by x* in one, by x_r = "antipodal x*" in the other
        T0[0] += zsum(xs)
        T1 = T0 - zsum(xs) + zsum(xr)
        c1 = c0 = c0 + np.eye(G)[0]
    sk, *cnt = spy.mechs
    src = NoiseSource(11, warn=False)
    N = N_GAUSS if noise == "gaussian" else globals()["N"]
    if rel.count_weight > 0:  # Gaussian: the counts are coordinates a·n_g of the one release
        a = rel.count_weight
        T0, T1 = np.hstack([T0, a * c0[:, None]]), np.hstack([T1, a * c1[:, None]])
    o0 = [sk.release(T0.ravel(), src, size=N)]
    o1 = [sk.release(T1.ravel(), src, size=N)]
    a0, a1 = [T0.ravel()], [T1.ravel()]
    sc = [np.full(T0.size, sk.scale)]
    if cnt and cnt[0].noise != "none":
        o0.append(cnt[0].release(c0, src, size=N))
        o1.append(cnt[0].release(c1, src, size=N))
        a0.append(c0)
        a1.append(c1)
        sc.append(np.full(G, cnt[0].scale))
    o0, o1 = np.concatenate(o0, 1), np.concatenate(o1, 1)
    a0, a1, sc = np.concatenate(a0), np.concatenate(a1), np.concatenate(sc)
    return epsilon_lower_bound(llr(o0, a0, a1, noise, sc), llr(o1, a0, a1, noise, sc), delta), rel


def audit_tree(monkeypatch, noise="laplace", mutate=None):
    L, delta = 2, (DELTA if noise == "gaussian" else 0.0)
    X = np.array([[0.1], [0.6]])
    spy = Spy(dist_mod, monkeypatch, mutate)
    private_distance_sums(
        X, bounds=(0, 1), epsilon=EPS, delta=delta, noise=noise, levels=L, random_state=0
    )
    mech = spy.mechs[0]

    def stat(A):
        u = np.clip(A, 0, 1)
        leaves = np.clip(np.floor(u * (1 << L)).astype(np.int64), 0, (1 << L) - 1)
        return np.stack([_tree_values(u, leaves, L, None), _tree_values(u, leaves, L, u)]).ravel()

    T0, T1 = stat(X), stat(np.vstack([X, [[1.0]]]))
    src = NoiseSource(12, warn=False)
    N = N_GAUSS if noise == "gaussian" else globals()["N"]
    o0, o1 = mech.release(T0, src, size=N), mech.release(T1, src, size=N)
    sc = np.full(T0.size, mech.scale)
    return epsilon_lower_bound(llr(o0, T0, T1, noise, sc), llr(o1, T0, T1, noise, sc), delta)


def find_leaks(release, arrays) -> list[str]:
    """Attribute names (or 'pickle') of the release that hold any of ``arrays``."""
    found = []
    blob = pickle.dumps(release)
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        for name, v in vars(release).items():
            vv = v.numpy() if isinstance(v, torch.Tensor) else v
            if (
                isinstance(vv, np.ndarray)
                and vv.size == a.size
                and np.allclose(vv.ravel(), a.ravel())
            ):
                found.append(name)
        if a.tobytes() in blob:
            found.append("pickle")
    return found


# -- the audits ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "noise, neighboring, groups, projection",
    [
        ("laplace", "add_remove", False, None),
        ("laplace", "replace_one", False, None),
        ("gaussian", "add_remove", False, None),
        ("laplace", "add_remove", True, None),
        ("laplace", "add_remove", False, "fourier"),
    ],
)
def test_kde_audit(monkeypatch, noise, neighboring, groups, projection):
    eps_lb, _ = audit_kde(monkeypatch, noise, neighboring, groups=groups, projection=projection)
    print(
        f"kde {noise} {neighboring} groups={groups} projection={projection}: "
        f"eps_lb={eps_lb:.3f} (eps={EPS})"
    )
    assert eps_lb <= EPS
    assert eps_lb >= 0.5 * EPS


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_tree_audit(monkeypatch, noise):
    eps_lb = audit_tree(monkeypatch, noise)
    print(f"tree {noise}: eps_lb={eps_lb:.3f} (eps={EPS})")
    assert 0.5 * EPS <= eps_lb <= EPS


# -- mutants: each must be caught ----------------------------------------------------------------
def _halve(noise, sens, eps, delta, dim):
    return noise, sens / 2, eps, delta, dim  # the calibrated noise is half what it should be


def test_mutant_halved_noise_is_caught(monkeypatch):
    eps_lb, _ = audit_kde(monkeypatch, "laplace", mutate=_halve)
    assert eps_lb > EPS
    monkeypatch.undo()
    assert audit_tree(monkeypatch, "laplace", mutate=_halve) > EPS


def test_mutant_missed_replace_one_factor_is_caught(monkeypatch):
    # the builder forgets the ×2 of replace-one (calibrates the add/remove sensitivity)
    eps_lb, _ = audit_kde(
        monkeypatch, "laplace", "replace_one", mutate=lambda n, s, e, d, m: (n, s / 2, e, d, m)
    )
    assert eps_lb > EPS


def test_mutant_noiseless_statistic_on_release_is_caught(monkeypatch):
    X = np.random.default_rng(0).normal(size=(30, 3))
    kw = dict(
        kernel="gaussian",
        lengthscale=1.0,
        epsilon=EPS,
        num_features=16,
        public_seed=2,
        random_state=0,
    )
    honest = private_kernel_sum(X, **kw)
    zsum, _ = _features(honest)
    T = zsum(X)
    assert find_leaks(honest, [T, X]) == []

    stash = {}
    real_stats, real_post = kde_mod._statistics, kde_mod.KernelSumRelease._post_init

    def leaky_stats(*a):
        stash["T"] = real_stats(*a)
        return stash["T"]

    def leaky_post(self):
        real_post(self)
        object.__setattr__(self, "_debug_sketch", stash["T"][0].clone())

    monkeypatch.setattr(kde_mod, "_statistics", leaky_stats)
    monkeypatch.setattr(kde_mod.KernelSumRelease, "_post_init", leaky_post)
    mutant = private_kernel_sum(X, **kw)
    assert "_debug_sketch" in find_leaks(mutant, [T])
