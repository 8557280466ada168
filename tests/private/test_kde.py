"""DP kernel sums: sensitivity, noise, public randomness, leakage, validation, persistence."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from snnk.private import (
    BudgetAccountant,
    BudgetError,
    KernelFeatureMap,
    KernelSumRelease,
    PrivacyLeakWarning,
    exact_kernel,
    load_release,
    private_kernel_sum,
)

KERNELS = ["gaussian", "exponential", "laplace", "cauchy", "linear"]


def _T(fmap, X) -> np.ndarray:
    with torch.no_grad():
        return fmap(torch.as_tensor(X, dtype=torch.float64)).sum(0).numpy()


def _fmap(release: KernelSumRelease) -> KernelFeatureMap:
    f = KernelFeatureMap(
        release.kernel,
        release.lengthscale,
        release.in_features,
        release.num_features,
        release.projection_dim,
        release.public_seed,
    )
    for k, v in f.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), release.public_randomness[k])
    return f


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
def test_sensitivity_bound_holds_on_random_and_adversarial_pairs(kernel, neighboring):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    r = private_kernel_sum(
        X,
        kernel=kernel,
        lengthscale=1.5,
        epsilon=1.0,
        num_features=64,
        neighboring=neighboring,
        random_state=0,
    )
    f = _fmap(r)
    T = _T(f, X)
    l1 = r.sketch_sensitivity
    factor = 2 if neighboring == "replace_one" else 1
    assert l1 == pytest.approx(factor * f.l1_bound)
    candidates = [rng.normal(size=3) * s for s in (0.0, 1.0, 1e3, 1e8)] + [X[0], -X[1]]
    for xs in candidates:
        if neighboring == "add_remove":
            T2 = T + _T(f, xs[None])
        else:
            T2 = T - _T(f, X[:1]) + _T(f, xs[None])
        assert np.abs(T2 - T).sum() <= l1 * (1 + 1e-12)
        assert np.linalg.norm(T2 - T) <= factor * f.l2_bound * (1 + 1e-12)


def test_l1_sensitivity_is_tight_for_an_adversarial_point():
    """With m <= d frequencies, x* solving Ωx* = π/4 puts |cos| = |sin| = 1/√2 on every pair:
    ‖z(x*)‖₁ = √D exactly; x' with Ωx' = Ωx* + π gives z(x') = -z(x*) (replace-one: 2√D)."""
    d, D = 8, 8
    r = private_kernel_sum(
        np.zeros((5, d)),
        kernel="gaussian",
        lengthscale=1.0,
        epsilon=1.0,
        num_features=D,
        random_state=3,
    )
    f = _fmap(r)
    W = f.maps[0].projection.weight.numpy()
    xs = np.linalg.lstsq(W, np.full(D // 2, math.pi / 4), rcond=None)[0]
    xr = np.linalg.lstsq(W, np.full(D // 2, math.pi / 4 + math.pi), rcond=None)[0]
    z, zr = _T(f, xs[None]), _T(f, xr[None])
    assert np.abs(z).sum() == pytest.approx(f.l1_bound, rel=1e-9)
    assert f.l1_bound == pytest.approx(math.sqrt(D))
    assert np.abs(z - zr).sum() == pytest.approx(2 * f.l1_bound, rel=1e-9)
    # the L2 bound is attained by every point
    assert np.linalg.norm(z) == pytest.approx(f.l2_bound, rel=1e-12)


def test_linear_kernel_bounds_are_tight():
    """kernel="linear": z(x) is x clipped to norm ℓ, over ℓ; the corner direction attains
    ‖z‖₁ = √d, every row of norm ≥ ℓ attains ‖z‖₂ = 1."""
    d = 6
    r = private_kernel_sum(
        np.zeros((3, d)), kernel="linear", lengthscale=2.0, epsilon=1.0, random_state=0
    )
    f = _fmap(r)
    z = _T(f, np.full((1, d), 50.0))
    assert np.abs(z).sum() == pytest.approx(f.l1_bound) and f.l1_bound == pytest.approx(d**0.5)
    assert np.linalg.norm(z) == pytest.approx(f.l2_bound)
    assert r.sketches.shape == (1, d) and r.public_randomness == {}


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_end_to_end_noise_is_calibrated(noise):
    """One build with D = 2^17 coordinates: sketch - T(X) is Laplace(Δ₁/ε) / N(σ(ε,δ)Δ₂)."""
    X = np.array([[0.3], [-1.2]])
    delta = 1e-6 if noise == "gaussian" else 0.0
    r = private_kernel_sum(
        X,
        kernel="gaussian",
        lengthscale=1.0,
        epsilon=0.8,
        delta=delta,
        noise=noise,
        num_features=1 << 17,
        random_state=1,
        public_n=2,
    )
    f = _fmap(r)
    err = r.sketches[0] - _T(f, X)
    assert r.n_public and r.count_epsilon == 0 and r.sketch_epsilon == 0.8
    if noise == "laplace":
        assert r.sketch_scale == pytest.approx(f.l1_bound / 0.8, rel=1e-5)
        ref = stats.laplace(scale=r.sketch_scale)
    else:
        from snnk.private import analytic_gaussian_sigma

        assert r.sketch_scale == pytest.approx(analytic_gaussian_sigma(0.8, delta, 1.0), rel=1e-5)
        ref = stats.norm(scale=r.sketch_scale)
    assert stats.kstest(err, ref.cdf).pvalue > 1e-3
    assert abs(err.mean()) < 5 * err.std() / math.sqrt(err.size)


def test_budget_split_sums_to_epsilon():
    X, y = np.random.default_rng(0).normal(size=(40, 2)), np.arange(40) % 3
    for kw in ({}, {"groups": y, "n_groups": 3}, {"public_n": 40}):
        for noise, delta in (("laplace", 0.0), ("gaussian", 1e-6)):
            r = private_kernel_sum(
                X,
                lengthscale=1.0,
                epsilon=0.9,
                noise=noise,
                delta=delta,
                random_state=0,
                num_features=16,
                **kw,
            )
            assert r.sketch_epsilon + r.count_epsilon == pytest.approx(0.9)
            assert r.sketch_delta + r.count_delta == pytest.approx(delta)
            e, dl = r.dp_event().epsilon_delta() if noise == "gaussian" else (None, None)
            if noise == "gaussian":
                assert e == pytest.approx(0.9) and dl == pytest.approx(delta)
            else:
                eps = sum(
                    1 / getattr(ev, "event", ev).noise_multiplier for ev in r.dp_event().events
                )
                assert eps == pytest.approx(0.9, rel=1e-5)


def test_public_randomness_is_byte_identical_across_datasets():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(50, 20)), rng.uniform(size=(7, 20)) * 100
    for kw in ({"random_state": 4}, {"public_seed": 11}, {"public_seed": 11, "random_state": None}):
        ra = private_kernel_sum(
            A,
            kernel="cauchy",
            lengthscale=2.0,
            epsilon=1.0,
            projection_dim=8,
            num_features=64,
            **kw,
        )
        rb = private_kernel_sum(
            B,
            kernel="cauchy",
            lengthscale=2.0,
            epsilon=1.0,
            projection_dim=8,
            num_features=64,
            **kw,
        )
        assert ra.public_seed == rb.public_seed
        for k, v in ra.public_randomness.items():
            assert v.tobytes() == rb.public_randomness[k].tobytes()


def test_release_leaks_nothing():
    rng = np.random.default_rng(2)
    n = 377
    X = rng.normal(size=(n, 4))
    r = private_kernel_sum(X, lengthscale=1.0, epsilon=1.0, num_features=32, random_state=0)
    T = _T(_fmap(r), X)
    blob = pickle.dumps(r)
    for a in list(r.arrays().values()):
        assert not np.allclose(a.ravel()[: T.size], T[: a.size]) or a.shape != T.shape
        for row in X:
            assert row.tobytes() not in a.tobytes()
    assert T.tobytes() not in blob and X[0].tobytes() not in blob
    assert r.counts[0] != n and n not in r.params().values()
    assert not np.allclose(r.sketches[0], T)
    # immutable
    with pytest.raises(AttributeError):
        r.sketches = T
    with pytest.raises(ValueError):
        r.sketches[0, 0] = 1.0
    assert pickle.loads(blob).query(X[:3]).tolist() == r.query(X[:3]).tolist()


def test_random_state_none_differs_and_int_repeats():
    X = np.random.default_rng(3).normal(size=(20, 3))
    a = private_kernel_sum(X, lengthscale=1.0, epsilon=1.0, num_features=16, public_seed=0)
    b = private_kernel_sum(X, lengthscale=1.0, epsilon=1.0, num_features=16, public_seed=0)
    assert not np.array_equal(a.sketches, b.sketches)
    with pytest.warns(PrivacyLeakWarning, match="random_state"):
        c = private_kernel_sum(X, lengthscale=1.0, epsilon=1.0, num_features=16, random_state=9)
    d = private_kernel_sum(X, lengthscale=1.0, epsilon=1.0, num_features=16, random_state=9)
    np.testing.assert_array_equal(c.sketches, d.sketches)


def test_accountant_is_checked_before_and_charged_after():
    X = np.random.default_rng(4).normal(size=(10, 2))
    acc = BudgetAccountant(epsilon=1.0)
    private_kernel_sum(
        X, lengthscale=1.0, epsilon=0.6, accountant=acc, num_features=8, random_state=0
    )
    with pytest.raises(BudgetError):
        private_kernel_sum(X, lengthscale=1.0, epsilon=0.6, accountant=acc, num_features=8)
    assert acc.total()[0] == pytest.approx(0.6)
    with acc:
        private_kernel_sum(X, lengthscale=1.0, epsilon=0.4, num_features=8, random_state=0)
    assert acc.total()[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"lengthscale": None}, ValueError, "lengthscale must be declared"),
        ({"epsilon": 0.0}, ValueError, "epsilon"),
        ({"epsilon": -1.0}, ValueError, "epsilon"),
        ({"epsilon": float("nan")}, ValueError, "epsilon"),
        ({"epsilon": "1"}, TypeError, "epsilon"),
        ({"delta": 1.0, "noise": "gaussian"}, ValueError, "delta"),
        ({"delta": 0.0, "noise": "gaussian"}, ValueError, "delta > 0"),
        ({"delta": 1e-6}, ValueError, "pure epsilon-DP"),
        ({"neighboring": "swap"}, ValueError, "neighboring"),
        ({"kernel": "poly"}, ValueError, "kernel"),
        ({"noise": "uniform"}, ValueError, "noise"),
        ({"num_features": 0}, ValueError, "num_features"),
        ({"projection_dim": 4, "kernel": "laplace"}, ValueError, "Euclidean"),
        ({"count_fraction": 1.0}, ValueError, "count_fraction"),
        ({"public_n": 3}, ValueError, "public_n"),
        ({"groups": np.zeros(10), "n_groups": 2}, ValueError, "integer"),
        ({"groups": np.arange(10), "n_groups": 2}, ValueError, "n_groups"),
        # overlapping groups (a row in two groups) cannot be expressed: parallel composition
        # needs a partition
        ({"groups": np.zeros((10, 2), dtype=int), "n_groups": 2}, ValueError, "partition"),
    ],
)
def test_input_validation(kw, err, match):
    X = np.random.default_rng(5).normal(size=(10, 2))
    args = {"lengthscale": 1.0, "epsilon": 1.0, "num_features": 8, "random_state": 0, **kw}
    with pytest.raises(err, match=match):
        private_kernel_sum(X, **args)


def test_hostile_data_and_queries():
    X = np.random.default_rng(6).normal(size=(10, 2))
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        private_kernel_sum(bad, lengthscale=1.0, epsilon=1.0)
    with pytest.raises(TypeError, match="floating"):
        private_kernel_sum(X.astype(int), lengthscale=1.0, epsilon=1.0)
    with pytest.warns(PrivacyLeakWarning, match="1/n"):
        private_kernel_sum(
            X, lengthscale=1.0, epsilon=1.0, noise="gaussian", delta=0.2, random_state=0
        )
    r = private_kernel_sum(
        np.zeros((0, 2)), lengthscale=1.0, epsilon=1.0, num_features=8, random_state=0
    )
    assert r.query(X).shape == (10,) and np.isfinite(r.query(X)).all()
    r = private_kernel_sum(
        X.astype(np.float32), lengthscale=1.0, epsilon=1.0, num_features=8, random_state=0
    )
    q = r.query(np.array([[1e30, -1e30], [0, 0]], dtype=np.float32))
    assert np.isfinite(q).all()
    with pytest.raises(ValueError, match="features"):
        r.query(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        r.query(np.full((1, 2), np.inf))


@pytest.mark.parametrize("kernel", KERNELS)
def test_non_private_limit_matches_the_exact_kernel(kernel):
    """ε = ∞ (no noise): RFF error of the average KDE ≲ 3/√D (B.1)."""
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(400, 3)), rng.normal(size=(30, 3))
    D = 1024
    r = private_kernel_sum(
        X, kernel=kernel, lengthscale=2.0, epsilon=math.inf, num_features=D, random_state=0
    )
    exact = exact_kernel(kernel, 2.0, torch.tensor(X), torch.tensor(Y)).mean(0).numpy()
    assert np.abs(r.query(Y) - exact).max() < 3 / math.sqrt(D)
    assert r.counts[0] == 400 and r.sketch_scale == 0.0


def test_save_load_round_trip_and_tampering(tmp_path):
    X, y = np.random.default_rng(8).normal(size=(30, 3)), np.arange(30) % 2
    r = private_kernel_sum(
        X,
        kernel="cauchy",
        lengthscale=1.0,
        epsilon=1.0,
        num_features=32,
        projection_dim=2,
        groups=y,
        n_groups=2,
        labels=["a", "b"],
        random_state=0,
    )
    p = r.save(tmp_path / "r.safetensors")
    r2 = load_release(p)
    assert type(r2) is KernelSumRelease and r2.params() == r.params()
    for k, v in r.arrays().items():
        assert v.tobytes() == r2.arrays()[k].tobytes()
    np.testing.assert_array_equal(r.query(X), r2.query(X))

    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(p))

    def write(meta_doc, tens, name):
        q = tmp_path / name
        save_file(tens, str(q), metadata={"snnk": json.dumps(meta_doc)})
        return q

    doc = json.loads(meta["snnk"])
    bad = dict(doc, params=dict(doc["params"], lengthscale="wide"))
    with pytest.raises(ValueError, match="lengthscale"):
        load_release(write(bad, tensors, "a.safetensors"))
    bad = dict(doc, params=dict(doc["params"], secret=1))
    with pytest.raises(ValueError, match="unexpected"):
        load_release(write(bad, tensors, "b.safetensors"))
    with pytest.raises(ValueError, match="tensors"):
        load_release(
            write(doc, {k: v for k, v in tensors.items() if k != "counts"}, "c.safetensors")
        )
    t2 = dict(tensors, sketches=tensors["sketches"][:, :3].contiguous())
    with pytest.raises(ValueError, match="sketches"):
        load_release(write(doc, t2, "d.safetensors"))
    bad = dict(doc, format="other")
    with pytest.raises(ValueError, match="format"):
        load_release(write(bad, tensors, "e.safetensors"))
    (tmp_path / "f.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a release"):
        load_release(tmp_path / "f.safetensors")


def test_linear_grouped_statistic_matches_row_features():
    rng = np.random.default_rng(9)
    X, g = rng.normal(size=(50, 4)) * 2, rng.integers(0, 3, 50)
    r = private_kernel_sum(
        X, kernel="linear", lengthscale=1.5, epsilon=math.inf, groups=g, n_groups=3
    )
    Z = _fmap(r)(torch.tensor(X)).numpy()
    want = np.stack([Z[g == c].sum(0) for c in range(3)])
    np.testing.assert_allclose(r.sketches, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r.counts, np.bincount(g, minlength=3))


@pytest.mark.parametrize("d", [5, 8])
def test_tampered_fourier_projection_is_refused(tmp_path, d):
    """The Fourier projection's public randomness is checked on load: an index out of range,
    a repeated or unsorted coordinate, the imaginary part of a real term, or signs other than
    ±1 give a ``ValueError`` naming the buffer, not an ``IndexError`` at the first query."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    X = np.random.default_rng(3).normal(size=(20, d))
    r = private_kernel_sum(
        X, kernel="gaussian", lengthscale=1.0, epsilon=math.inf, num_features=16,
        projection_dim=3, projection="fourier", random_state=0,
    )  # fmt: skip
    p = r.save(tmp_path / "r.safetensors")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(p))
    index, signs = tensors["features.projection.index"], tensors["features.projection.signs"]
    bad_index = {
        "out of range": torch.tensor([0.0, 2.0, 1e6]),
        "repeated": torch.tensor([2.0, 2.0, 3.0]),
        "unsorted": index.flip(0).contiguous(),
        "imaginary part of the zero-frequency term": torch.tensor([1.0, 2.0, 3.0]),
    }
    for value in bad_index.values():
        q = tmp_path / "t.safetensors"
        save_file(dict(tensors, **{"features.projection.index": value}), str(q), metadata=meta)
        with pytest.raises(ValueError, match=r"projection\.index"):
            load_release(q)
    s2 = signs.clone()
    s2[0] = 0.5
    save_file(dict(tensors, **{"features.projection.signs": s2}), str(q), metadata=meta)
    with pytest.raises(ValueError, match=r"projection\.signs"):
        load_release(q)
    np.testing.assert_array_equal(load_release(p).query(X), r.query(X))
