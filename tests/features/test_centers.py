"""Centre selection: one registry for every Nyström face (uniform, k-means++, k-means)."""

import numpy as np
import pytest
import torch

from snnk.features import register_center_method, select_center_indices, select_centers
from snnk.features.centers import CENTER_METHODS
from snnk.kernels import Gaussian

F64 = torch.float64


def clusters(per=40, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 10.0 * torch.randn(k, 2, generator=g, dtype=F64)
    X = means.repeat_interleave(per, 0) + 0.1 * torch.randn(k * per, 2, generator=g, dtype=F64)
    return X, means


def test_uniform_reproduces_the_historical_draws_bit_for_bit():
    X = torch.randn(100, 3, dtype=F64)
    # NystromFeatures: randperm(n) from the module's generator
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    idx = select_center_indices(X, 10, random_state=g1)
    assert torch.equal(idx, torch.randperm(100, generator=g2)[:10])
    # the models: distinct rows (sorted), a generator seeded from random_state like sklearn's
    # check_random_state(rs).randint(2**31 - 1)
    Xn = np.random.default_rng(0).normal(size=(80, 2))
    sw = np.ones(80)
    sw[::4] = 0.0
    got = np.sort(
        select_center_indices(Xn, 12, sample_weight=sw, random_state=3, distinct=True).numpy()
    )
    rows = np.flatnonzero(sw > 0)
    _, first = np.unique(Xn[rows], axis=0, return_index=True)
    cand = rows[first]
    seed = int(np.random.RandomState(3).randint(2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    ref = np.sort(cand[torch.randperm(cand.size, generator=gen)[:12].numpy()])
    np.testing.assert_array_equal(got, ref)


def test_distinct_candidates_and_weights():
    X = np.repeat(np.arange(10.0)[:, None], 3, axis=0)  # every row three times
    idx = select_center_indices(X, 50, distinct=True, random_state=0)
    assert len(idx) == 10 and len(np.unique(X[idx.numpy()])) == 10  # clipped, all distinct
    assert torch.equal(idx, torch.sort(idx).values)
    sw = np.zeros(30)
    sw[[2, 7]] = 1.0
    assert sorted(select_center_indices(X, 5, sample_weight=sw).tolist()) == [2, 7]
    with pytest.raises(ValueError, match="zero everywhere"):
        select_center_indices(X, 2, sample_weight=np.zeros(30))
    with pytest.raises(ValueError, match="entries"):
        select_center_indices(X, 2, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="cannot choose"):
        select_center_indices(torch.zeros(3, 1), 4)


def test_kmeanspp_spreads_over_clusters_and_respects_weights():
    X, _ = clusters()
    k = Gaussian(1.0)
    # Euclidean D²-sampling (kernel=None): far clusters outweigh near points 10⁴ to 1
    hit = [
        len(set((select_center_indices(X, 5, method="kmeans++", random_state=s) // 40).tolist()))
        for s in range(5)
    ]
    assert min(hit) == 5  # one centre in every cluster, every time
    ksel = select_center_indices(X, 5, method="kmeans++", kernel=k, random_state=0)
    assert len(set(ksel.tolist())) == 5
    uni = [len(set((select_center_indices(X, 5, random_state=s) // 40).tolist())) for s in range(5)]
    assert np.mean(uni) < 5
    w = np.ones(200)
    w[:40] = 0.0  # the first cluster is never eligible
    idx = select_center_indices(X, 4, method="kmeans++", kernel=k, sample_weight=w, random_state=0)
    assert (idx >= 40).all() and len(set((idx // 40).tolist())) == 4


def test_kmeans_returns_cluster_means():
    X, means = clusters()
    C = select_centers(X, 5, method="kmeans", random_state=0)
    assert C.shape == (5, 2) and C.dtype == F64
    dist = torch.cdist(C, means).min(1).values
    assert float(dist.max()) < 0.1  # each centre at a cluster mean (noise 0.1 / sqrt(40))
    with pytest.raises(ValueError, match="select_centers"):
        select_center_indices(X, 5, method="kmeans")


def test_select_centers_rows_and_registry():
    X = torch.randn(30, 2, dtype=F64)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(
        select_centers(X, 4, random_state=g1), X[select_center_indices(X, 4, random_state=g2)]
    )
    assert {"uniform", "kmeans++", "kmeans"} <= set(CENTER_METHODS)

    def first_rows(X, m, *, weight, generator, kernel):
        return torch.arange(m)

    register_center_method("first", first_rows)
    try:
        assert select_center_indices(X, 3, method="first").tolist() == [0, 1, 2]
    finally:
        CENTER_METHODS.pop("first")
    with pytest.raises(ValueError, match="centers must be one of"):
        select_centers(X, 3, method="dpp-not-yet")
    with pytest.raises(ValueError, match="positive integer"):
        select_centers(X, 0)


def test_global_rngs_untouched():
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    torch_state = torch.get_rng_state()
    select_center_indices(np.random.default_rng(0).normal(size=(50, 2)), 5, distinct=True)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


# -- selectors built on snnk.sampling (reference qmc-dpp.md, Part F item 24) -----------------------
NEW = ("rls", "bless", "kdpp", "pivoted-cholesky", "rpcholesky")


pytestmark = pytest.mark.usefixtures("one_thread")


def d3_clusters(n, seed):
    """8 Gaussian clusters in d = 3 with widths 0.1..1; y = smooth function + 0.1 noise."""
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(8, 3, generator=torch.Generator().manual_seed(123), dtype=F64)
    widths = torch.logspace(-1, 0, 8, dtype=F64)
    lab = torch.randint(8, (n,), generator=g)
    X = means[lab] + widths[lab, None] * torch.randn(n, 3, generator=g, dtype=F64)
    y = torch.sin(2 * X[:, 0]) + torch.cos(X[:, 1]) * X[:, 2] / 3
    return X, y + 0.1 * torch.randn(n, generator=g, dtype=F64)


@pytest.fixture(scope="module")
def d3():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _d3()
    finally:
        torch.set_num_threads(before)


def _d3():
    X, y = d3_clusters(2000, 0)
    Xt, yt = d3_clusters(1000, 1)
    k, lam, n = Gaussian(1.0), 1e-4, 2000
    K, Kt = k(X), k(Xt, X)
    a = torch.linalg.solve(K + n * lam * torch.eye(n, dtype=F64), y)
    exact = float((Kt @ a - yt).square().mean().sqrt())
    return dict(X=X, y=y, Xt=Xt, yt=yt, k=k, lam=lam, K=K, Kt=Kt, exact=exact)


def nystrom_errors(d, idx):
    """(relative trace error of K ≈ K_nM K_MM⁺ K_Mn, Nyström-KRR test RMSE)."""
    K, n = d["K"], d["K"].shape[0]
    Knm, Kmm = K[:, idx], K[idx][:, idx]
    s, V = torch.linalg.eigh(Kmm)
    keep = s > s.max() * 1e-12
    half = V[:, keep] / s[keep].sqrt()
    Z = Knm @ half  # K_nM K_MM^{-1/2}
    trace = float((K.diagonal().sum() - Z.square().sum()) / K.diagonal().sum())
    beta = torch.linalg.solve(
        Z.T @ Z + n * d["lam"] * torch.eye(Z.shape[1], dtype=F64), Z.T @ d["y"]
    )
    pred = d["Kt"][:, idx] @ (half @ beta)
    return trace, float((pred - d["yt"]).square().mean().sqrt())


def test_new_methods_are_registered_row_selectors():
    for name in NEW:
        assert name in CENTER_METHODS and not CENTER_METHODS[name].returns_rows


def test_leverage_and_dpp_centres_beat_uniform_on_the_d3_protocol(d3):
    """Item 24: n = 2000, m = 400; trace error k-DPP ≤ 0.2x uniform, RLS ≤ 0.5x uniform
    (means over 2 draws); Nyström-KRR RMSE within 5 % of exact KRR for k-DPP, RLS and
    pivoted Cholesky."""
    X, k = d3["X"], d3["k"]

    def run(method, seeds=(0, 1)):
        out = [
            nystrom_errors(
                d3, select_center_indices(X, 400, method=method, kernel=k, random_state=s)
            )
            for s in seeds
        ]
        return np.mean([o[0] for o in out]), np.mean([o[1] for o in out])

    uni = run("uniform")
    rls, kdpp, piv = run("rls"), run("kdpp"), run("pivoted-cholesky", (0,))
    assert kdpp[0] <= 0.2 * uni[0]
    assert rls[0] <= 0.5 * uni[0]
    for _trace, rmse in (rls, kdpp, piv):
        assert rmse <= 1.05 * d3["exact"]
    assert uni[1] > kdpp[1]  # uniform is worse at this m


def test_bless_centres_close_to_exact_rls(d3):
    X, k = d3["X"], d3["k"]
    tr = np.mean(
        [
            nystrom_errors(
                d3, select_center_indices(X, 400, method="bless", kernel=k, random_state=s)
            )[0]
            for s in (0, 1)
        ]
    )
    uni = np.mean(
        [nystrom_errors(d3, select_center_indices(X, 400, random_state=s))[0] for s in (0, 1)]
    )
    assert tr <= 0.5 * uni


def test_new_methods_seeded_distinct_weighted_and_small_inputs():
    X, _ = clusters()
    k = Gaussian(1.0)
    for name in NEW:
        a = select_center_indices(X, 12, method=name, kernel=k, random_state=3)
        b = select_center_indices(X, 12, method=name, kernel=k, random_state=3)
        assert torch.equal(a, b) and len(set(a.tolist())) == 12, name
        covered = len(set((a // 40).tolist()))
        # the diversity-seeking selectors cover every cluster; leverage sampling is random
        assert covered == 5 if name in ("kdpp", "pivoted-cholesky") else covered >= 3, name
        w = np.ones(200)
        w[:40] = 0.0
        idx = select_center_indices(X, 8, method=name, kernel=k, sample_weight=w, random_state=0)
        assert (idx >= 40).all() and len(set(idx.tolist())) == 8, name
        # one row, m = n, repeated rows (rank below m)
        assert select_center_indices(X[:1], 1, method=name, kernel=k).tolist() == [0]
        assert sorted(select_center_indices(X[:6], 6, method=name, kernel=k).tolist()) == list(
            range(6)
        )
        rep = X[:3].repeat(5, 1)
        got = select_center_indices(rep, 5, method=name, kernel=k, random_state=0)
        assert len(set(got.tolist())) == 5, name
        # distinct=True as the Nyström models call it
        got = select_center_indices(
            rep.numpy(), 5, method=name, kernel=k, distinct=True, random_state=0
        )
        assert sorted(got.tolist()) == [0, 1, 2], name
    with pytest.raises(ValueError, match="max_candidates"):
        select_center_indices(X, 3, method="rls", kernel=k, max_candidates=0)
    # options reach the selectors
    for name, opts in (
        ("rls", {"regularization": 1e-3, "max_candidates": 100}),
        ("bless", {"regularization": 1e-3}),
        ("kdpp", {"max_candidates": 100}),
        ("pivoted-cholesky", {"max_candidates": 100}),
        ("rpcholesky", {"block_size": 3}),
    ):
        idx = select_center_indices(X, 10, method=name, kernel=k, random_state=0, **opts)
        assert len(set(idx.tolist())) == 10, name


def test_new_methods_reach_nystrom_features():
    from snnk.features import NystromFeatures

    X, _ = d3_clusters(600, 2)
    K = Gaussian(1.0)(X)
    errs = {}
    for name in ("uniform", *NEW):
        phi = NystromFeatures(Gaussian(1.0), 150, centers=name, seed=0).fit(X)
        Z = phi(X)
        errs[name] = float((K - Z @ Z.T).diagonal().sum() / K.diagonal().sum())
    for name in NEW:
        assert errs[name] < errs["uniform"], (name, errs)
    phi = NystromFeatures(Gaussian(1.0), 20, centers="kdpp", seed=4).fit(X)
    idx = select_center_indices(
        X, 20, method="kdpp", kernel=Gaussian(1.0), random_state=torch.Generator().manual_seed(4)
    )
    assert torch.equal(phi.centers, X[idx])


def test_sampling_selectors_leave_global_rngs_alone():
    X, _ = clusters()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    torch_state = torch.get_rng_state()
    for name in NEW:
        select_center_indices(X, 6, method=name, kernel=Gaussian(1.0), random_state=1)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_new_methods_reach_the_nystrom_models():
    """NystromRidge / KernelRidgeCG take every row selector of the registry by name."""
    from snnk.models import KernelRidgeCG, NystromRidge

    X, y = d3_clusters(1500, 5)
    Xt, yt = d3_clusters(500, 6)
    X, y, Xt, yt = X.numpy(), y.numpy(), Xt.numpy(), yt.numpy()
    rmse = {}
    for name in ("uniform", *NEW):
        for seed in (0, 1):
            m = NystromRidge(
                lengthscale=1.0,
                num_centers=300,
                alpha=0.15,
                center_selection=name,
                random_state=seed,
            )
            rmse[name, seed] = float(np.sqrt(np.mean((m.fit(X, y).predict(Xt) - yt) ** 2)))
            assert m.centers_.shape == (300, 3)
    uniform = [rmse["uniform", s] for s in (0, 1)]
    assert rmse["pivoted-cholesky", 0] < min(uniform), rmse  # measured 0.128 vs 0.131, 0.133
    assert rmse["kdpp", 0] + rmse["kdpp", 1] < sum(uniform), rmse
    cg = KernelRidgeCG(
        lengthscale=1.0, num_centers=50, alpha=1.0, center_selection="rpcholesky", random_state=0
    )
    assert np.isfinite(cg.fit(X[:400], y[:400]).predict(Xt[:5])).all()


def test_distinct_rows_keep_numpys_lexicographic_first_occurrences():
    """The fast distinct-row step returns exactly ``np.unique(axis=0)``'s first indices (the
    historical candidate order), with duplicates, signed zeros and every input dtype."""
    from snnk.features.centers import _first_of_distinct_rows

    rng = np.random.default_rng(0)
    base = rng.integers(-2, 3, size=(60, 4)).astype(np.float64)
    A = np.concatenate([base, base[::3], -0.0 * base[:5], 0.0 * base[:5]])
    A = A[rng.permutation(len(A))]
    for dtype in (np.float64, np.float32, np.float16, np.int64, np.int8):
        B = A.astype(dtype)
        _, ref = np.unique(B, axis=0, return_index=True)
        np.testing.assert_array_equal(_first_of_distinct_rows(B), ref)
    C = rng.normal(size=(300, 7))
    np.testing.assert_array_equal(
        _first_of_distinct_rows(C), np.unique(C, axis=0, return_index=True)[1]
    )


@pytest.mark.parametrize("method", ["pivoted-cholesky", "rpcholesky"])
def test_select_center_factor_returns_the_nystrom_features(method):
    """``Z = K_nC L⁻ᵀ`` on every row (candidates, repeated rows, rows outside a candidate
    subsample, with and without weights), ``L Lᵀ = K_CC`` lower triangular, and the same
    centres as ``select_center_indices``."""
    from snnk.features.centers import select_center_factor

    X, _ = d3_clusters(400, 3)
    X = torch.cat([X, X[:30]])  # 30 repeated rows
    k = Gaussian(1.0)
    sw = np.random.default_rng(0).uniform(0.5, 2.0, size=430)
    sw[::10] = 0.0
    cases = [{}, {"sample_weight": sw}, {"distinct": True}]
    if method == "pivoted-cholesky":
        cases.append({"distinct": True, "max_candidates": 200})
    for opts in cases:
        res = select_center_factor(X, 40, method=method, kernel=k, random_state=2, **opts)
        idx = select_center_indices(X, 40, method=method, kernel=k, random_state=2, **opts)
        assert torch.equal(res.indices, idx), opts
        C = X[res.indices]
        L, Z = res.cholesky, res.features
        assert Z.shape == (430, 40) and torch.equal(L, torch.tril(L))
        torch.testing.assert_close(L @ L.T, k(C), atol=1e-10, rtol=0)
        torch.testing.assert_close(Z @ L.T, k(X, C), atol=1e-9, rtol=0)
    # no factor: other methods, every candidate a centre, rank below m
    from snnk.features.centers import select_center_factor as scf

    assert scf(X, 5, method="uniform", random_state=0).features is None
    small = scf(X[:3].repeat(3, 1), 3, method=method, kernel=k, distinct=True)
    assert small.features is None and sorted(small.indices.tolist()) == [0, 1, 2]
    assert scf(X[:3].repeat(3, 1), 5, method=method, kernel=k, random_state=0).features is None
    with pytest.raises(ValueError, match="cannot choose"):
        scf(X[:3], 4, method=method, kernel=k)


def test_center_factor_features_give_nystrom_ridge_without_kernel_evaluations():
    """Ridge on the selection's features ``Z`` (``β = L⁻ᵀu``) is ``NystromRidge`` with the
    same centres: the fit can reuse the selection's columns instead of recomputing ``K_nC``."""
    from snnk.features.centers import select_center_factor
    from snnk.models import NystromRidge

    X, y = d3_clusters(600, 8)
    Xt, _ = d3_clusters(50, 9)
    k, alpha = Gaussian(1.0), 0.3
    model = NystromRidge(
        lengthscale=1.0,
        num_centers=40,
        alpha=alpha,
        center_selection="pivoted-cholesky",
        fit_intercept=False,
    ).fit(X.numpy(), y.numpy())
    sel = select_center_factor(X, 40, kernel=k, distinct=True)
    assert np.array_equal(np.sort(sel.indices.numpy()), model.center_indices_)
    Z, L = sel.features, sel.cholesky
    u = torch.linalg.solve(Z.T @ Z + alpha * torch.eye(40, dtype=F64), Z.T @ y)
    beta = torch.linalg.solve_triangular(L.T, u[:, None], upper=True)[:, 0]
    pred = k(Xt, X[sel.indices]) @ beta
    np.testing.assert_allclose(pred.numpy(), model.predict(Xt.numpy()), rtol=0, atol=1e-6)


def test_pivoted_cholesky_default_candidates_are_a_subsample_above_5000_rows():
    """Default ``max_candidates="auto"``: ``max(5000, 2m)`` uniformly drawn candidates (the
    greedy then costs ``O(c m²)``, not ``O(n m²)``); ``None``: every row, deterministic."""
    from snnk.sampling import pivoted_cholesky

    X = torch.randn(5200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    k = Gaussian(0.5)
    g = torch.Generator().manual_seed(7)
    a = select_center_indices(X, 8, method="pivoted-cholesky", kernel=k, random_state=g)
    cand = torch.randperm(5200, generator=torch.Generator().manual_seed(7))[:5000].sort().values
    assert torch.equal(a, cand[pivoted_cholesky(X[cand], k, 8).pivots])
    every = select_center_indices(
        X, 8, method="pivoted-cholesky", kernel=k, random_state=0, max_candidates=None
    )
    assert torch.equal(every, pivoted_cholesky(X, k, 8).pivots)
    # 2m above 5000 rows: every row is a candidate
    small = X[:300]
    assert torch.equal(
        select_center_indices(small, 200, method="pivoted-cholesky", kernel=k, random_state=3),
        pivoted_cholesky(small, k, 200).pivots,
    )
