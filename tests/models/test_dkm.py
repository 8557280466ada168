"""Deep kernel machines, the NNGP Gaussian process they reduce to, and Student-t outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import snnk.models._dkm_core as core
from snnk.kernels import NNGP
from snnk.models.dkm import DeepKernelMachineClassifier, DeepKernelMachineRegressor
from snnk.solvers.student_t import (
    student_t_log_marginal,
    student_t_log_pdf,
    student_t_posterior_scale,
)

F64 = torch.float64


def _problem(n=60, n_test=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + n_test, d))
    f = np.sin(2 * X[:, 0]) * X[:, 1] + 0.5 * X[:, 2]
    y = f + 0.1 * rng.normal(size=len(f))
    return X[:n], y[:n], X[n:], f[n:]


def _nngp_gp(model, X, y, Xt, sw, sb, noise):
    """Exact GP with the NNGP kernel on the model's standardised units (reference)."""
    Xs = torch.from_numpy((X - model.X_mean_) / model.X_scale_)
    Xts = torch.from_numpy((Xt - model.X_mean_) / model.X_scale_)
    k = NNGP(model.depth + 1, model.activation, sw, sb)
    K = k(Xs) + noise * torch.eye(len(X), dtype=F64)
    Ks = k(Xts, Xs)
    ys = torch.from_numpy((y - model.y_mean_) / model.y_scale_)
    mean = Ks @ torch.linalg.solve(K, ys)
    var = k.diag(Xts) - (Ks * torch.linalg.solve(K, Ks.T).T).sum(1) + noise
    return (
        mean.numpy() * model.y_scale_[0] + model.y_mean_[0],
        np.sqrt(var.numpy()) * model.y_scale_[0],
    )


def test_nu_infinite_is_the_nngp_gp():
    X, y, Xt, _ = _problem()
    fixed = {"weight_variance": 1.7, "bias_variance": 0.2, "noise": 0.05}
    m = DeepKernelMachineRegressor(
        depth=3, nu=math.inf, num_inducing=1000, optimize_hyperparameters=False, **fixed
    ).fit(X, y)
    mean, std = m.predict(Xt, return_std=True, include_noise=True)
    ref_mean, ref_std = _nngp_gp(m, X, y, Xt, 1.7, 0.2, 0.05)
    # the default is the latent f's: the noise variance less, nothing else
    _, latent = m.predict(Xt, return_std=True)
    np.testing.assert_allclose(latent**2 + m.noise_ * m.y_scale_**2, std**2, rtol=1e-10)
    with pytest.raises(TypeError, match="include_noise"):
        m.predict(Xt, return_std=True, include_noise="yes")
    # the only difference is the 1e-6 relative jitter on K_ii
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-4 * np.abs(ref_mean).max())
    np.testing.assert_allclose(std, ref_std, rtol=1e-4)
    # a very large finite ν keeps every learned Gram at its prior: the same predictions
    big = DeepKernelMachineRegressor(
        depth=3, nu=1e8, num_inducing=1000, optimize_hyperparameters=False, max_iter=20, **fixed
    ).fit(X, y)
    np.testing.assert_allclose(big.predict(Xt), mean, rtol=0, atol=1e-3 * np.abs(mean).max())
    assert max(big.kl_) < 1e-4


def test_objective_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(9, 3, generator=g, dtype=F64)
    Z = X[:5].clone()
    Y = torch.randn(9, 2, generator=g, dtype=F64)
    est = DeepKernelMachineRegressor(depth=2, activation="erf")
    kernel0 = NNGP(3, "erf", 1.5, 0.1)
    _, priors, _ = core.propagate(kernel0, Z, X, None)
    V1 = core.param_from_gram(priors[0] + 0.3 * torch.eye(5, dtype=F64))
    V2 = core.param_from_gram(priors[1] + 0.2 * torch.eye(5, dtype=F64))
    logs = torch.tensor([math.log(1.5), math.log(0.1), math.log(0.2)], dtype=F64)

    def f(V1, V2, logs):
        k = NNGP(3, "erf")
        k.weight_variance, k.bias_variance = torch.exp(logs[0]), torch.exp(logs[1])
        grams = [core.gram_from_param(V1), core.gram_from_param(V2)]
        return core.objective(k, Z, X, Y, grams, torch.exp(logs[2]), 0.7)[0]

    inputs = tuple(t.clone().requires_grad_(True) for t in (V1, V2, logs))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    del est

    # the Student-t output too
    def ft(logs):
        k = NNGP(2, "erf")
        k.weight_variance, k.bias_variance = torch.exp(logs[0]), torch.exp(logs[1])
        return core.objective(k, Z, X, Y, None, torch.exp(logs[2]), 1.0, (2.0, 3.0))[0]

    assert torch.autograd.gradcheck(ft, (logs.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_inducing_dkm_approaches_full_dkm():
    X, y, Xt, _ = _problem(n=80, seed=1)
    opts = {"depth": 2, "nu": 1.0, "optimize_hyperparameters": False, "noise": 0.05, "max_iter": 60}
    full = DeepKernelMachineRegressor(num_inducing=1000, **opts).fit(X, y)
    ref = full.predict(Xt)
    gaps, objectives = [], []
    for m in (8, 24, 48, 72):
        approx = DeepKernelMachineRegressor(
            num_inducing=m, inducing="uniform", random_state=0, **opts
        ).fit(X, y)
        gaps.append(float(np.sqrt(np.mean((approx.predict(Xt) - ref) ** 2))))
        objectives.append(approx.objective_)
    # measured (seeds 1-3): gaps 0.27-0.41 at m = 8 falling to 0.05-0.10 at m = 72, and the
    # objective per row rising from -2.6..-4.1 to -0.27..-0.33 (full DKM: -0.21..-0.23)
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.5 * gaps[0]
    assert objectives == sorted(objectives)
    assert objectives[-1] < full.objective_ + 1e-6


def test_kl_and_gram_parameterisation():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(6, 6, generator=g, dtype=F64)
    B = torch.randn(6, 6, generator=g, dtype=F64)
    G = A @ A.T + 0.5 * torch.eye(6, dtype=F64)
    K = B @ B.T + 0.5 * torch.eye(6, dtype=F64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(torch.zeros(6, dtype=F64), G),
        torch.distributions.MultivariateNormal(torch.zeros(6, dtype=F64), K),
    )
    assert abs(float(core.gaussian_kl(G, K, jitter=False) - ref)) < 1e-10
    assert float(core.gaussian_kl(K, K, jitter=False)) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(core.gram_from_param(core.param_from_gram(G)), G)
    # data points = inducing points: G_ti = G_ii and g_t = diag G_ii
    X = torch.randn(6, 3, generator=g, dtype=F64)
    K0 = core.kernel_map(NNGP(1), core.input_state(NNGP(1), X, X))
    S = core.condition(K0, G)
    torch.testing.assert_close(S.ti, G, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S.t, torch.diagonal(G), rtol=1e-4, atol=1e-4)


def test_student_t_marginal_and_predictive():
    from scipy import integrate, stats

    rng = np.random.default_rng(3)
    n, a, b = 4, 2.5, 1.5
    A = rng.normal(size=(n, n))
    C = A @ A.T + np.eye(n)
    y = rng.normal(size=n)
    quad = float(y @ np.linalg.solve(C, y))
    logdet = float(np.linalg.slogdet(C)[1])
    q_t, ld_t = torch.tensor(quad, dtype=F64), torch.tensor(logdet, dtype=F64)
    ours = float(student_t_log_marginal(q_t, ld_t, n, a, b))

    def integrand(s2):  # N(y; 0, s² C) InvGamma(s²; a, b)
        return math.exp(
            stats.multivariate_normal(np.zeros(n), s2 * C).logpdf(y)
            + stats.invgamma(a, scale=b).logpdf(s2)
        )

    ref = math.log(integrate.quad(integrand, 0, np.inf, epsabs=0, epsrel=1e-12, limit=200)[0])
    assert abs(ours - ref) < 1e-9
    # a → ∞ with b/a = v fixed: the Gaussian N(0, v C)
    v = 0.7
    gauss = stats.multivariate_normal(np.zeros(n), v * C).logpdf(y)
    far = float(student_t_log_marginal(q_t, ld_t, n, 1e7, 7e6))
    assert abs(far - gauss) < 1e-5
    factor, df = student_t_posterior_scale(torch.tensor(quad, dtype=F64), n, a, b)
    assert df == 2 * a + n and float(factor) == pytest.approx((2 * b + quad) / (2 * a + n))
    lp = student_t_log_pdf(torch.tensor(0.3), torch.tensor(0.1), torch.tensor(2.0), 5.0)
    assert float(lp) == pytest.approx(stats.t(5.0, loc=0.1, scale=math.sqrt(2.0)).logpdf(0.3))
    with pytest.raises(ValueError, match="shape"):
        student_t_log_marginal(torch.tensor(1.0), torch.tensor(0.0), 3, -1.0, 1.0)


def test_student_t_option_on_the_nngp_gp():
    X, y, Xt, ft = _problem(seed=4)
    opts = {"depth": 2, "nu": math.inf, "num_inducing": 1000, "optimize_hyperparameters": False}
    g = DeepKernelMachineRegressor(**opts).fit(X, y)
    t = DeepKernelMachineRegressor(scale_prior=(2.0, 2.0), **opts).fit(X, y)
    mg, sg = g.predict(Xt, return_std=True)
    mt, st = t.predict(Xt, return_std=True)
    np.testing.assert_allclose(mt, mg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st / sg, np.sqrt(t.variance_factor_[0]), rtol=1e-10)
    assert t.df_ == 4.0 + len(X)
    assert np.isfinite(t.log_predictive_density(Xt, ft)).all()
    # fitted: the learned hyper-parameters still predict well
    fit = DeepKernelMachineRegressor(depth=2, nu=math.inf, num_inducing=1000, scale_prior=(2, 2))
    assert fit.fit(X, y).score(Xt, ft) > 0.5
    with pytest.raises(ValueError, match="scale_prior"):
        DeepKernelMachineRegressor(scale_prior=(2.0, -1.0)).fit(X, y)


def test_dkm_learns_and_persists(tmp_path):
    from snnk._persist import load_model

    X, y, Xt, ft = _problem(n=100, seed=5)
    opts = {"depth": 2, "num_inducing": 40, "random_state": 0}
    m = DeepKernelMachineRegressor(nu=1.0, optimize_hyperparameters="nngp", **opts).fit(X, y)
    # measured: R² 0.637 (the NNGP-GP, nu=inf, on the same inducing points: 0.574)
    nngp = DeepKernelMachineRegressor(nu=math.inf, **opts).fit(X, y)
    assert m.score(Xt, ft) > nngp.score(Xt, ft) + 0.03 and m.grams_.shape == (2, 40, 40)
    assert m.noise_ == nngp.noise_ and m.weight_variance_ == nngp.weight_variance_
    assert np.isfinite(m.log_predictive_density(Xt, ft)).all()
    path = m.save(tmp_path / "dkm.safetensors")
    back = load_model(path)
    np.testing.assert_array_equal(back.predict(Xt), m.predict(Xt))
    mean, std = back.predict(Xt, return_std=True)
    assert mean.shape == std.shape == (len(Xt),)
    Y2 = np.stack([y, -y], 1)
    multi = DeepKernelMachineRegressor(depth=1, num_inducing=30, random_state=0, max_iter=20)
    assert multi.fit(X, Y2).predict(Xt).shape == (len(Xt), 2)


def test_classifier():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(150, 2))
    y = np.where(X[:, 0] ** 2 + X[:, 1] ** 2 < 1.2, "in", "out")
    clf = DeepKernelMachineClassifier(depth=2, num_inducing=40, random_state=0, max_iter=40)
    clf.fit(X[:100], y[:100])
    assert set(clf.classes_) == {"in", "out"}
    assert clf.score(X[100:], y[100:]) > 0.8
    proba = clf.predict_proba(X[100:])
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_hostile_input():
    X, y, _, _ = _problem(n=20)
    m = DeepKernelMachineRegressor(depth=1, num_inducing=10, max_iter=5)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.fit(bad, y)
    with pytest.raises(ValueError, match="activation"):
        DeepKernelMachineRegressor(activation="tanh").fit(X, y)
    with pytest.raises(ValueError, match="nu"):
        DeepKernelMachineRegressor(nu=0.0).fit(X, y)
    with pytest.raises(ValueError, match="optimize_hyperparameters"):
        DeepKernelMachineRegressor(optimize_hyperparameters="all").fit(X, y)
    with pytest.raises(ValueError, match="device"):
        DeepKernelMachineRegressor(device="meta").fit(X, y)
    # one training row: the likelihood would drive the noise and the kernel to 0
    one = DeepKernelMachineRegressor(depth=1, num_inducing=10, max_iter=5).fit(X[:1], y[:1])
    assert np.isfinite(one.predict(X[:3])).all()
    m.fit(X.astype(np.float32) * 1e3, y)
    assert np.isfinite(m.predict(X[:3] * 1e3)).all()
    assert m.predict(X[:1]).shape == (1,)
    with pytest.raises(TypeError, match="file path"):
        m.fit("data.csv", y)
    # depth 0: no learned layer (the one-layer NNGP-GP)
    zero = DeepKernelMachineRegressor(depth=0, num_inducing=10, max_iter=5).fit(X, y)
    assert zero.grams_.shape == (0, 10, 10) and zero.predict(X[:2]).shape == (2,)
