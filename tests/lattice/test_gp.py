"""Fast GP and Bayesian cubature (reference qmc-dpp.md, Part F items 10-12)."""

import math

import pytest
import torch

from snnk.lattice import DigitalNet, FastGP, Lattice, bayesian_cubature
from snnk.lattice.gp import dense_profiled_nll

KEISTER_3 = 2.168309102  # QMCPy's Keister.exact_integ(3)


def trig(x):
    """A trigonometric polynomial of total degree < 4 in d = 3."""
    two_pi = 2 * math.pi
    return (
        1.0
        + torch.cos(two_pi * x[:, 0])
        + 0.5 * torch.sin(two_pi * (x[:, 1] + x[:, 2]))
        + 0.3 * torch.cos(two_pi * (x[:, 0] - x[:, 1] + x[:, 2]))
    )


def smooth(x):
    return torch.exp(0.5 * x.sum(1)) * torch.sin(3 * x[:, 0] + 1)


def periodic(x):
    two_pi = 2 * math.pi
    return torch.exp(
        0.3 * torch.sin(two_pi * x[:, 0]) + 0.2 * torch.cos(two_pi * (x[:, 1] + x[:, 2]))
    )


def keister(u):
    """π^{d/2} cos(‖t‖), t = Φ⁻¹(u)/√2: ∫ cos(‖x‖) exp(−‖x‖²) dx over R^d as a [0,1]^d integral."""
    t = torch.special.ndtri(u.clamp(1e-15, 1 - 1e-15)) / math.sqrt(2.0)
    return math.pi ** (u.shape[1] / 2) * torch.cos(t.norm(dim=1))


def _test_points(q=300, d=3, seed=7):
    return torch.rand(q, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("design", [Lattice, DigitalNet])
def test_profiled_nll_matches_dense_and_autograd_matches_finite_differences(design):
    pts = design(3, seed=2)(2**11)
    y = smooth(pts.x)
    gp = FastGP(pts, y, nugget=1e-6)
    data = pts.bits if pts.bits is not None else pts.x
    factors = gp.kernel.factors(data[:, None], data[None])  # dense (n, n, d), once
    eye = torch.eye(pts.n, dtype=torch.float64)
    for value in (-2.0, -0.5, 1.0):
        log_w = torch.full((3,), value, dtype=torch.float64)
        dense = gp.kernel.combine(factors, torch.exp(log_w), 1.0) + 1e-6 * eye
        ref = dense_profiled_nll(dense, y, y.mean())
        assert abs(float(gp.nll(log_w) - ref)) <= 1e-6 * abs(float(ref))
    log_w = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(gp.nll(log_w), log_w)
    h = 1e-5
    fd = torch.stack(
        [
            (gp.nll(log_w.detach() + e) - gp.nll(log_w.detach() - e)) / (2 * h)
            for e in h * torch.eye(3, dtype=torch.float64)
        ]
    )
    assert torch.linalg.vector_norm(grad - fd) <= 1e-5 * grad.norm()


def test_batched_nll_equals_loop():
    pts = Lattice(2, seed=0)(256)
    gp = FastGP(pts, smooth(torch.cat([pts.x, pts.x[:, :1]], 1)))
    grid = torch.linspace(-3, 1, 5, dtype=torch.float64)[:, None].expand(5, 2)
    batched = gp.nll(grid)
    assert torch.allclose(batched, torch.stack([gp.nll(g) for g in grid]), rtol=1e-13)


def test_trigonometric_polynomial_is_recovered_on_a_lattice():
    pts = Lattice(3, seed=0)(2**12)
    gp = FastGP(pts, trig(pts.x)).fit(max_iter=15)
    xt = _test_points()
    err = torch.linalg.vector_norm(gp.predict(xt) - trig(xt)) / trig(xt).norm()
    assert float(err) <= 1e-6


@pytest.mark.parametrize("design", [Lattice, DigitalNet])
def test_interpolation_and_zero_variance_at_the_data(design):
    pts = design(3, seed=1)(256)
    y = smooth(pts.x)
    gp = FastGP(pts, y, nugget=1e-10)
    assert torch.linalg.vector_norm(gp.predict(pts) - y) <= 1e-6 * y.norm()
    var = gp.posterior_variance(pts)
    assert float(var.abs().max()) <= 1e-8 * float(gp.scale)
    away = gp.posterior_variance(_test_points(50))
    assert bool((away > 1e-6 * gp.scale).all())  # positive away from the design


@pytest.mark.parametrize("design", [Lattice, DigitalNet])
def test_fit_lowers_nll_and_scipy_agrees_with_lbfgs(design):
    # the SI kernel models periodic functions: give the lattice a periodic one
    f = periodic if design is Lattice else smooth
    pts = design(3, seed=4)(2**10)
    y = f(pts.x)
    a = FastGP(pts, y, nugget=1e-8)
    before = float(a.nll())
    a.fit(max_iter=40)
    b = FastGP(pts, y, nugget=1e-8).fit(optimizer="scipy", max_iter=40)
    assert float(a.nll()) < before
    assert float(a.nll()) == pytest.approx(float(b.nll()), abs=1e-3 * abs(before))
    xt = _test_points()
    err = torch.linalg.vector_norm(a.predict(xt) - f(xt)) / f(xt).norm()
    assert float(err) < 0.05


@pytest.mark.parametrize("design", [Lattice, DigitalNet])
def test_future_variances_are_known_before_sampling(design):
    gen = design(3, seed=5)
    pts = gen(256)
    gp = FastGP(pts, smooth(pts.x), nugget=1e-8).fit(max_iter=20)
    xt = _test_points(40)
    before = gp.posterior_variance(xt, n=1024)
    for start in (256, 512):
        new = gen(start, start)
        gp.append(new, smooth(new.x))
    assert gp.n == 1024
    after = gp.posterior_variance(xt)
    assert torch.allclose(before, after, rtol=1e-8, atol=1e-14 * float(gp.scale))
    # and the appended state equals a GP built on all 1024 points at the same parameters
    fresh = FastGP(gen(1024), smooth(gen(1024).x), weights=gp.kernel.weights, nugget=1e-8)
    fresh.scale, fresh.mean = gp.scale, gp.mean
    fresh._refresh(fit_scale=False)
    # (κ ≈ 4e8 here: eigenvalues agree to 4e-12 absolute, predictions to ~1e-9)
    assert torch.allclose(gp.predict(xt), fresh.predict(xt), rtol=1e-7, atol=1e-8)
    assert bool((gp.posterior_variance(xt, n=4096) <= after * (1 + 1e-9)).all())


@pytest.mark.parametrize("design", [Lattice, DigitalNet])
def test_cubature_posterior_mean_is_the_sample_mean(design):
    pts = design(2, seed=3)(512)
    y = smooth(torch.cat([pts.x, pts.x[:, :1]], 1))
    gp = FastGP(pts, y).fit(max_iter=20)
    mean, var = gp.integral()
    assert float(mean) == pytest.approx(float(y.mean()), rel=1e-14)
    assert float(var) > 0


def test_keister_credible_intervals_cover_the_truth():
    hits, sizes = 0, []
    for seed in range(100):
        res = bayesian_cubature(keister, 3, abs_tol=1e-3, confidence=0.99, seed=seed)
        lo, hi = res.interval
        hits += lo <= KEISTER_3 <= hi
        sizes.append(res.n)
        assert res.half_width <= 1e-3
    assert hits >= 95, (hits, sizes)


def test_cubature_validates_arguments():
    with pytest.raises(ValueError, match="n_init"):
        bayesian_cubature(keister, 2, n_init=100)
    with pytest.raises(ValueError, match="design"):
        bayesian_cubature(keister, 2, design="halton")


def test_shared_weights_fit_one_value_and_refuses_foreign_points():
    pts = DigitalNet(3, seed=8)(512)
    gp = FastGP(pts, smooth(pts.x), shared_weights=True).fit(max_iter=20)
    w = gp.kernel.weights
    assert torch.allclose(w, w[0].expand(3))
    with pytest.raises(ValueError, match="PointSet generated by"):
        FastGP(pts.x, smooth(pts.x))
    with pytest.raises(ValueError, match="shape"):
        FastGP(pts, smooth(pts.x)[:10])


@pytest.mark.parametrize("optimizer", ["lbfgs", "scipy"])
@pytest.mark.parametrize("design", [Lattice(4, seed=7), DigitalNet(4, seed=7)])
def test_fit_keeps_log_weights_bounded_on_a_function_of_x0_only(design, optimizer):
    """Unbounded, log γ₀ ran to ~150 (γ₀ ~ 1e66) and the others to ~ −50 here."""
    from snnk.lattice.gp import LOG_WEIGHT_BOUND

    def f(x):
        return torch.exp(torch.sin(2 * math.pi * x[:, 0]))

    pts = design(2**10)
    gp = FastGP(pts, f(pts.x)).fit(optimizer=optimizer)
    logw = torch.log(gp.kernel.weights)
    assert bool(torch.isfinite(logw).all())
    assert float(logw.abs().max()) <= LOG_WEIGHT_BOUND + 1e-9
    assert float(logw[0]) > float(logw[1:].max()) + 10  # x₀ is the only relevant input
    test = design(2**10, n_start=2**10)
    q = test.bits if design.kind == "net" else test.x
    err = (gp.predict(q) - f(test.x)).abs().max() / f(test.x).abs().max()
    assert float(err) < (1e-8 if design.kind == "lattice" else 1e-2)
