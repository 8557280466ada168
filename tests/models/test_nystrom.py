"""NystromRidge (Falkon) and KernelRidgeCG (exact KRR by PCG): limits, solver, contract."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.utils.estimator_checks import check_estimator

from snnk.io import load_model, save_model
from snnk.kernels import Matern
from snnk.models import KernelRidgeCG, NystromRidge


@pytest.fixture(autouse=True)
def one_thread():
    """Small kernel blocks run faster on one thread on a shared 2-core machine (no pool
    barrier waiting on a descheduled thread); the results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_problem(n, d=5, seed=0, outputs=None):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.sin(1.5 * X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.1 * rng.standard_normal(n)
    if outputs:
        y = np.stack([y] + [np.cos(X[:, j]) for j in range(1, outputs)], axis=1)
    return X, y


def sklearn_krr(X, y, Xq, lengthscale, alpha, sample_weight=None):
    kr = KernelRidge(alpha=alpha, kernel="rbf", gamma=1.0 / (2 * lengthscale**2))
    return kr.fit(X, y, sample_weight=sample_weight).predict(Xq)


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "est",
    [
        NystromRidge(num_centers=20, lengthscale=2.0, alpha=1e-2, random_state=0),
        NystromRidge(num_centers=20, lengthscale=2.0, alpha=1e-2, solver="cg", random_state=0),
        KernelRidgeCG(num_centers=10, lengthscale=2.0, alpha=1e-2, random_state=0),
    ],
    ids=["nystrom-direct", "nystrom-cg", "krr-cg"],
)
def test_sklearn_estimator_checks(est):
    check_estimator(est)


@pytest.mark.parametrize("cls", [NystromRidge, KernelRidgeCG])
def test_float32_kept(cls):
    X, y = smooth_problem(200)
    m = cls(num_centers=50, lengthscale=2.0, alpha=1e-2, random_state=0).fit(
        X.astype(np.float32), y
    )
    p32 = m.predict(X.astype(np.float32))
    assert p32.dtype == np.float32
    p64 = cls(num_centers=50, lengthscale=2.0, alpha=1e-2, random_state=0).fit(X, y).predict(X)
    assert p64.dtype == np.float64
    assert rel_err(p32, p64) < 1e-3


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(
    ("cls", "num_centers", "tol", "solver"),
    [
        (NystromRidge, 10_000, 1e-6, "direct"),
        (NystromRidge, 10_000, 1e-6, "cg"),
        (KernelRidgeCG, 150, 1e-7, None),
    ],
    ids=["nystrom-all-centres-direct", "nystrom-all-centres-cg", "krr-cg"],
)
def test_matches_kernel_ridge(cls, num_centers, tol, solver, weighted):
    """NystromRidge with num_centers >= n is exact KRR (G3), as is KernelRidgeCG (float64)."""
    X, y = smooth_problem(600, outputs=2)
    Xq, _ = smooth_problem(200, seed=1)
    sw = np.random.default_rng(2).uniform(0.2, 3.0, 600) if weighted else None
    ref = sklearn_krr(X, y, Xq, 2.0, 1e-2, sw)
    kw = {} if solver is None else {"solver": solver, "fit_intercept": False}
    m = cls(num_centers=num_centers, lengthscale=2.0, alpha=1e-2, tol=1e-11, max_iter=300, **kw)
    m.fit(X, y, sample_weight=sw)
    assert m.predict(Xq).shape == (200, 2)
    assert rel_err(m.predict(Xq), ref) < tol
    assert m.n_iter_ < 300


def test_all_centres_n_2000():
    X, y = smooth_problem(2000, d=8)
    Xq, _ = smooth_problem(300, d=8, seed=1)
    ref = sklearn_krr(X, y, Xq, 3.0, 1e-1)
    m = NystromRidge(
        num_centers=2000, lengthscale=3.0, alpha=1e-1, tol=1e-12, fit_intercept=False
    ).fit(X, y)
    assert m.solver_ == "direct"
    assert rel_err(m.predict(Xq), ref) < 1e-6


def test_direct_and_cg_solve_the_same_system():
    X, y = smooth_problem(1500, d=6)
    kw = {"num_centers": 200, "lengthscale": 2.0, "alpha": 1e-3, "random_state": 0}
    direct = NystromRidge(**kw, solver="direct").fit(X, y)
    cg = NystromRidge(**kw, solver="cg", tol=1e-12, max_iter=500).fit(X, y)
    assert (direct.n_iter_, cg.solver_) == (1, "cg")
    assert rel_err(direct.predict(X), cg.predict(X)) < 1e-6
    with pytest.raises(ValueError, match="solver"):
        NystromRidge(solver="lu").fit(X, y)


def test_preconditioner_helps():
    """More centres in KernelRidgeCG's preconditioner: fewer iterations to the same solution."""
    X, y = smooth_problem(400)
    iters = [
        KernelRidgeCG(num_centers=m, lengthscale=2.0, alpha=1e-2, tol=1e-6, random_state=0)
        .fit(X, y)
        .n_iter_
        for m in (5, 40, 200)
    ]
    assert iters[0] > iters[1] > iters[2]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_cache_changes_nothing_but_speed(dtype):
    """No cache, the n x M preconditioner blocks only, or all of K: the same iterates."""
    X, y = smooth_problem(300)
    X = X.astype(dtype)
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(y))
    item = np.dtype(dtype).itemsize
    sizes = {"none": 0, "G": 300 * 30 * item * 1.5 / 2**20, "G and K": 1024}
    fits = {
        name: KernelRidgeCG(
            num_centers=30, lengthscale=2.0, alpha=1e-2, random_state=0, cache_size=mib
        ).fit(X, y, sample_weight=w)
        for name, mib in sizes.items()
    }
    ref = fits["none"]
    # Cached and recomputed blocks may be evaluated in differently sized row blocks: equal
    # up to the kernel's rounding (float32 blocks: about 1e-7 relative).
    rtol = 1e-9 if dtype == np.float64 else 1e-5
    for name, est in fits.items():
        assert abs(est.n_iter_ - ref.n_iter_) <= (0 if dtype == np.float64 else 1), name
        np.testing.assert_allclose(est.dual_coef_, ref.dual_coef_, rtol=rtol, atol=1e-9)
    with pytest.raises(ValueError, match="cache_size"):
        KernelRidgeCG(cache_size=-1).fit(X, y)


def nystrom_objective(m, X, y):
    """Σ (y − K_nM β)² + α βᵀ K_MM β of a fitted NystromRidge."""
    Knm = m.kernel_(X, m.centers_).numpy()
    beta = m.dual_coef_[:, 0]
    Kmm = m.kernel_(m.centers_).numpy()
    return float(np.sum((y - Knm @ beta) ** 2) + m.alpha * beta @ Kmm @ beta)


def test_cg_objective_never_increases():
    """CG minimises the quadratic over growing Krylov spaces: every extra iteration helps."""
    X, y = smooth_problem(500)
    Xq, yq = smooth_problem(300, seed=1)
    objs, errs = [], []
    for k in range(1, 9):
        m = NystromRidge(
            num_centers=60,
            lengthscale=2.0,
            alpha=1e-3,
            solver="cg",
            tol=0.0,
            max_iter=k,
            fit_intercept=False,
            random_state=0,
        )
        with pytest.warns(UserWarning, match="raise max_iter"):
            m.fit(X, y)
        assert m.n_iter_ == k
        objs.append(nystrom_objective(m, X, y))
        errs.append(float(np.sqrt(np.mean((m.predict(Xq) - yq) ** 2))))
    assert all(b <= a * (1 + 1e-10) for a, b in itertools.pairwise(objs))
    converged = NystromRidge(
        num_centers=60,
        lengthscale=2.0,
        alpha=1e-3,
        solver="cg",
        tol=1e-12,
        fit_intercept=False,
        random_state=0,
    ).fit(X, y)
    best = nystrom_objective(converged, X, y)
    assert best <= objs[-1]
    assert errs[-1] <= errs[0]


def test_nystrom_matches_dense_normal_equations():
    X, y = smooth_problem(400)
    m = NystromRidge(
        num_centers=40, lengthscale=2.0, alpha=1e-2, tol=1e-13, fit_intercept=False, random_state=0
    )
    m.fit(X, y)
    Knm = m.kernel_(X, m.centers_).numpy()
    Kmm = m.kernel_(m.centers_).numpy()
    beta = np.linalg.solve(Knm.T @ Knm + 1e-2 * Kmm, Knm.T @ y)
    np.testing.assert_allclose(m.predict(X), Knm @ beta, rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(m.centers_, X[m.center_indices_])


def test_kernel_object_and_other_names():
    X, y = smooth_problem(300)
    k = Matern(nu=2.5, lengthscale=2.0)
    kw = {"alpha": 1e-3, "fit_intercept": False}
    m = NystromRidge(kernel=k, lengthscale=None, num_centers=300, tol=1e-12, **kw).fit(X, y)
    a = m.predict(X)
    K = k(X).numpy()
    ref = KernelRidge(alpha=1e-3, kernel="precomputed").fit(K, y).predict(K)
    assert rel_err(a, ref) < 1e-6
    b = NystromRidge(kernel="matern", lengthscale=2.0, num_centers=300, **kw).fit(X, y).predict(X)
    assert rel_err(b, a) > 1e-3  # nu=1.5 by name, nu=2.5 by object
    c = NystromRidge(kernel="laplace", lengthscale=3.0, num_centers=50).fit(X, y)
    assert c.kernel_.lengthscale == 3.0


@pytest.mark.parametrize("cls", [NystromRidge, KernelRidgeCG])
def test_save_load_bit_exact(cls, tmp_path):
    X, y = smooth_problem(300, outputs=2)
    m = cls(kernel="gaussian", lengthscale=2.0, num_centers=40, random_state=0).fit(X, y)
    loaded = load_model(save_model(m, tmp_path / "m.snnk"))
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))
    m1 = cls(kernel=Matern(nu=0.5), num_centers=40, random_state=0).fit(X, y[:, 0])
    loaded1 = load_model(save_model(m1, tmp_path / "m1.snnk"))
    assert loaded1.predict(X).shape == (300,)
    np.testing.assert_array_equal(loaded1.predict(X), m1.predict(X))


def test_zero_weights_equal_dropping_rows():
    X, y = smooth_problem(300)
    sw = np.ones(300)
    sw[::3] = 0.0
    keep = sw > 0
    a = NystromRidge(num_centers=50, lengthscale=2.0, tol=1e-12, random_state=0)
    b = NystromRidge(num_centers=50, lengthscale=2.0, tol=1e-12, random_state=0)
    pa = a.fit(X, y, sample_weight=sw).predict(X)
    pb = b.fit(X[keep], y[keep]).predict(X)
    np.testing.assert_array_equal(a.centers_, b.centers_)
    assert rel_err(pa, pb) < 1e-8


@pytest.mark.parametrize("cls", [NystromRidge, KernelRidgeCG])
def test_bad_inputs(cls):
    X, y = smooth_problem(30)
    Xnan = X.copy()
    Xnan[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cls().fit(Xnan, y)
    Xinf = X.copy()
    Xinf[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        cls().fit(Xinf, y)
    ynan = y.copy()
    ynan[4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cls().fit(X, ynan)
    with pytest.raises(ValueError, match="0 sample"):
        cls().fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        cls().fit(X, y[:-1])
    with pytest.raises(ValueError, match="Expected 2D array"):
        cls().fit(X[:, 0], y)
    with pytest.raises(ValueError, match="num_centers must be a positive integer"):
        cls(num_centers=0).fit(X, y)
    with pytest.raises(TypeError, match="num_centers"):
        cls(num_centers=2.5).fit(X, y)
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        cls(alpha=0.0).fit(X, y)
    with pytest.raises(ValueError, match="dtype"):
        cls(dtype="float16").fit(X, y)
    with pytest.raises(ValueError, match="unknown kernel"):
        cls(kernel="nope").fit(X, y)
    with pytest.raises(ValueError, match="non-zero"):
        cls().fit(X, y, sample_weight=np.zeros(30))
    m = cls(num_centers=10).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        m.predict(X[:, :3])


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_fit_intercept_is_the_exact_unpenalised_constant(solver, tmp_path):
    X, y = smooth_problem(300)
    kw = {"num_centers": 40, "lengthscale": 2.0, "alpha": 1e-2, "solver": solver, "tol": 1e-12}
    m = NystromRidge(**kw, fit_intercept=True, max_iter=500, random_state=0).fit(X, y + 100.0)
    # reference: minimise Σ (y − c − K_nM β)² + α βᵀ K_MM β jointly over (β, c)
    Knm = m.kernel_(X, m.centers_).numpy()
    Kmm = m.kernel_(m.centers_).numpy()
    ones = np.ones((300, 1))
    A = np.block([[Knm.T @ Knm + 1e-2 * Kmm, Knm.T @ ones], [ones.T @ Knm, ones.T @ ones]])
    sol = np.linalg.lstsq(A, np.concatenate([Knm.T @ (y + 100), [np.sum(y + 100)]]), rcond=None)[0]
    ref = Knm @ sol[:-1] + sol[-1]
    assert rel_err(m.predict(X), ref) < 1e-6
    shifted = NystromRidge(**kw, fit_intercept=True, max_iter=500, random_state=0).fit(X, y)
    np.testing.assert_allclose(m.predict(X) - 100.0, shifted.predict(X), atol=1e-6)
    plain = NystromRidge(**kw, fit_intercept=False, random_state=0).fit(X, y)
    assert plain.intercept_.tolist() == [0.0]
    back = load_model(save_model(m, Path(tmp_path) / "m.snnk"))
    np.testing.assert_array_equal(back.predict(X), m.predict(X))


@pytest.mark.parametrize("cls", [NystromRidge, KernelRidgeCG])
def test_block_rows_and_deprecated_batch_size(cls, tmp_path):
    """``batch_size`` is a deprecated alias of ``block_rows`` (FutureWarning, same model);
    files written before the rename (``batch_size`` in the header) still load."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    X, y = smooth_problem(200)
    kw = {"num_centers": 30, "lengthscale": 2.0, "random_state": 0}
    new = cls(**kw, block_rows=37).fit(X, y)
    with pytest.warns(FutureWarning, match="block_rows"):
        old = cls(**kw, batch_size=37).fit(X, y)
    np.testing.assert_array_equal(old.dual_coef_, new.dual_coef_)
    with pytest.raises(ValueError, match="block_rows"):
        cls(block_rows=0).fit(X, y)
    # a header as the old code wrote it: batch_size and no block_rows
    path = save_model(new, tmp_path / "m.snnk")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in meta if "params" in meta[k])
    doc = json.loads(meta[key])
    doc["params"].pop("block_rows")
    doc["params"]["batch_size"] = 37
    save_file(tensors, str(path), metadata={**meta, key: json.dumps(doc)})
    loaded = load_model(path)
    assert loaded.batch_size == 37 and loaded.block_rows is None
    np.testing.assert_array_equal(loaded.predict(X), new.predict(X))


def test_kmeanspp_centres():
    X, y = smooth_problem(300)
    m = NystromRidge(num_centers=30, lengthscale=2.0, center_selection="kmeans++", random_state=0)
    m.fit(X, y)
    np.testing.assert_array_equal(m.centers_, X[m.center_indices_])
    assert len(np.unique(m.center_indices_)) == 30
    with pytest.raises(ValueError, match="center_selection"):
        NystromRidge(center_selection="kmeans").fit(X, y)


def test_defaults_are_the_random_feature_models_and_fit_like_them():
    """lengthscale="scale", alpha="gcv" and an intercept, as RandomFeatureRidge: on
    scikit-learn's diabetes data the CV R² of the two at their defaults are within 0.03
    (measured +0.005 over 3 shuffles)."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import KFold, cross_val_score

    from snnk.models import RandomFeatureRidge

    params = NystromRidge().get_params()
    assert (params["lengthscale"], params["alpha"], params["fit_intercept"]) == (
        "scale",
        "gcv",
        True,
    )
    X, y = load_diabetes(return_X_y=True)
    cv = KFold(5, shuffle=True, random_state=0)
    ny = cross_val_score(NystromRidge(random_state=0), X, y, cv=cv).mean()
    rf = cross_val_score(RandomFeatureRidge(random_state=0), X, y, cv=cv).mean()
    assert ny > 0.4 and abs(ny - rf) < 0.03, (ny, rf)


def test_scale_lengthscale_and_gcv_alpha():
    from snnk.models import RandomFeatureRidge
    from snnk.solvers import NormalEquations, NystromFactor

    X, y = smooth_problem(300, d=4)
    m = NystromRidge(num_centers=40, random_state=0).fit(X, y)
    rf = RandomFeatureRidge(num_features=8, random_state=0).fit(X, y)
    assert m.lengthscale_ == pytest.approx(np.sqrt(4 * X.var() / 2), rel=1e-12)
    assert m.lengthscale_ == pytest.approx(rf.lengthscale_, rel=1e-12)
    assert m.kernel_.lengthscale == m.lengthscale_ and m.solver_ == "direct"
    assert m.cv_scores_.shape == (29,) and m.alpha_ > 0
    # GCV on the Nyström features K_nM L⁻ᵀ, scored like RandomFeatureRidge's GCV
    C = torch.from_numpy(m.centers_)
    Z = NystromFactor(m.kernel_(C, C).double()).features(m.kernel_(torch.from_numpy(X), C))
    ne = NormalEquations(40, 1).update(Z.double(), torch.from_numpy(y)[:, None])
    U, c, a, scores = ne.solve_gcv()
    assert m.alpha_ == pytest.approx(a, rel=1e-9)
    np.testing.assert_allclose(m.cv_scores_, scores.numpy(), rtol=1e-6)
    np.testing.assert_allclose(m.predict(X), (Z.double() @ U + c).numpy()[:, 0], atol=1e-7)
    # a number is used as given
    fixed = NystromRidge(num_centers=40, alpha=0.5, lengthscale=2.0, random_state=0).fit(X, y)
    assert (fixed.alpha_, fixed.lengthscale_) == (0.5, 2.0) and not hasattr(fixed, "cv_scores_")
    with pytest.raises(ValueError, match="solver='direct'"):
        NystromRidge(solver="cg").fit(X, y)
    with pytest.raises(ValueError, match="alpha must be 'gcv' or a positive number"):
        NystromRidge(alpha="loo").fit(X, y)
    with pytest.raises(ValueError, match="lengthscale must be"):
        NystromRidge(lengthscale="auto").fit(X, y)
    with pytest.raises(ValueError, match="alpha must be a positive number, got 'gcv'"):
        KernelRidgeCG(alpha="gcv").fit(X, y)


def test_models_with_old_and_new_defaults_round_trip(tmp_path):
    """A file stores every hyper-parameter: a model fitted with the old defaults loads with
    them and predicts the same; the new fitted attributes are saved too."""
    X, y = smooth_problem(200)
    old = NystromRidge(lengthscale=1.0, alpha=1e-3, fit_intercept=False, num_centers=30)
    new = NystromRidge(num_centers=30, random_state=0)
    for m in (old.set_params(random_state=0).fit(X, y), new.fit(X, y)):
        back = load_model(save_model(m, Path(tmp_path) / "m.snnk"))
        assert back.get_params() == m.get_params()
        np.testing.assert_array_equal(back.predict(X), m.predict(X))
        assert (back.alpha_, back.lengthscale_) == (m.alpha_, m.lengthscale_)
    np.testing.assert_array_equal(back.cv_scores_, new.cv_scores_)
    assert old.intercept_.tolist() == [0.0] and old.alpha_ == 1e-3


# -- device= (issue #17) ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", [NystromRidge, KernelRidgeCG])
def test_bad_device_values_are_refused_at_fit(cls):
    X, y = smooth_problem(40)
    est = cls(num_centers=10, random_state=0)
    with pytest.raises(ValueError, match="device='meta'"):
        est.set_params(device="meta").fit(X, y)
    with pytest.raises(ValueError, match="device='tpu'"):
        est.set_params(device="tpu").fit(X, y)
    with pytest.raises(TypeError, match="device must be"):
        est.set_params(device=3).fit(X, y)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda:0'"):
            est.set_params(device="cuda:0").fit(X, y)
    assert not hasattr(est, "n_features_in_")  # refused before any work


@pytest.mark.parametrize("cls", [NystromRidge, KernelRidgeCG])
def test_tensor_input_and_a_gpu_model_file_on_a_cpu_machine(cls, tmp_path):
    """Tensors in (X, y, sample_weight; float32 kept) give tensors out equal to the NumPy
    fit; a file whose ``device`` names a GPU loads and predicts on a machine without one
    (the device is a parameter, not state)."""
    X, y = smooth_problem(120, outputs=2)
    w = np.linspace(0.5, 1.5, len(y))
    kw = {"num_centers": 30, "lengthscale": 2.0, "alpha": 1e-2, "random_state": 0}
    ref = cls(**kw).fit(X, y, sample_weight=w)
    est = cls(**kw, device=torch.device("cpu")).fit(
        torch.from_numpy(X), torch.from_numpy(y), sample_weight=torch.from_numpy(w)
    )
    np.testing.assert_array_equal(est.dual_coef_, ref.dual_coef_)
    out = est.predict(torch.from_numpy(X[:7]).float())
    assert isinstance(out, torch.Tensor) and out.shape == (7, 2) and out.device.type == "cpu"
    np.testing.assert_array_equal(out.numpy(), ref.predict(X[:7].astype(np.float32)))
    path = save_model(ref.set_params(device="cuda:1"), tmp_path / "gpu.snnk")
    back = load_model(path)
    assert back.get_params()["device"] == "cuda:1"
    np.testing.assert_array_equal(back.predict(X), ref.predict(X))


@pytest.mark.parametrize(
    "method", ["kmeans++", "rls", "bless", "kdpp", "pivoted-cholesky", "rpcholesky"]
)
def test_every_centre_selection_places_its_tensors(method):
    """Each selector under a meta default device (as in the common suite's plumbing test,
    which covers the default "uniform"): the fit and predictions are unchanged."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = np.sin(X[:, 0])
    kw = {"num_centers": 20, "center_selection": method, "random_state": 0}
    ref = NystromRidge(**kw).fit(X, y).predict(X)
    with torch.device("meta"):
        got = NystromRidge(**kw).fit(X, y).predict(X)
    np.testing.assert_array_equal(got, ref)
