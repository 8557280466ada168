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
