"""The module contract shared by every feature map: buffers, seeds, RNG, shapes, dtypes, errors."""

import io
import math

import numpy as np
import pytest
import torch

from snnk import features, kernels
from tests.conftest import sphere

F64 = torch.float64

BUILDERS = {
    "fourier-orth": lambda seed, **kw: features.FourierFeatures("gaussian", 6, 32, seed=seed, **kw),
    "fourier-struct": lambda seed, **kw: features.FourierFeatures(
        kernels.Matern(2.5), 6, 32, sampler="structured", seed=seed, **kw
    ),
    "fourier-struct-hadamard": lambda seed, **kw: features.FourierFeatures(
        "gaussian", 6 * 30, 512, sampler="structured", seed=seed, **kw
    ),
    "fourier-qmc": lambda seed, **kw: features.FourierFeatures(
        kernels.Laplace(), 6, 32, sampler="qmc", seed=seed, **kw
    ),
    "positive": lambda seed, **kw: features.PositiveFeatures(6, 32, M=0.05, seed=seed, **kw),
    "positive-hyp": lambda seed, **kw: features.PositiveFeatures(
        6, 32, hyperbolic=True, seed=seed, **kw
    ),
    "arccos": lambda seed, **kw: features.ArcCosineFeatures(6, 32, order=2, seed=seed, **kw),
    "urf-cos": lambda seed, **kw: features.URF("cos", 6, 32, seed=seed, **kw),
    "urf-gauss": lambda seed, **kw: features.URF(
        "gaussian", 6, 32, split=0.5, sampler="iid", seed=seed, **kw
    ),
    "urf-exp": lambda seed, **kw: features.URF("exp", 6, 32, M=0.02, seed=seed, **kw),
}


def _input(build, shape=(7,)):
    phi = build(0)
    g = torch.Generator().manual_seed(42)
    return 0.2 * torch.randn(*shape, phi.in_features, generator=g)


@pytest.mark.parametrize("name", BUILDERS)
def test_buffers_state_dict_round_trip_bit_exact(name):
    build = BUILDERS[name]
    phi = build(3)
    assert len(list(phi.parameters())) == 0, "random matrices must be buffers, not parameters"
    assert len(phi.state_dict()) > 0
    x = _input(build)
    buf = io.BytesIO()
    torch.save(phi.state_dict(), buf)
    buf.seek(0)
    other = build(99)  # different draw, then overwritten by the saved one
    assert not torch.equal(other(x), phi(x))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other(x), phi(x))


@pytest.mark.parametrize("name", BUILDERS)
def test_seed_reproducible_and_global_rng_untouched(name):
    build = BUILDERS[name]
    # The legacy global NumPy state is what we must leave untouched, so we read it directly.
    state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a, b = build(5), build(5)
    x = _input(build)
    ya = a(x)
    assert torch.equal(ya, b(x))
    assert torch.equal(torch.get_rng_state(), state), "construction/forward touched torch's RNG"
    assert np.array_equal(np.random.get_state()[1], np_state), "touched NumPy's global RNG"
    assert not torch.equal(build(6)(x), ya)
    assert torch.equal(a(x), ya), "forward must not redraw"


@pytest.mark.parametrize("name", BUILDERS)
def test_batch_shapes_and_dtypes(name):
    build = BUILDERS[name]
    phi = build(1)
    x = _input(build, (2, 3, 4))
    z = phi(x)
    assert z.shape == (2, 3, 4, phi.num_features) and z.dtype == torch.float32
    torch.testing.assert_close(z[1, 2], phi(x[1, 2]))
    assert phi(x[0, 0, 0]).shape == (phi.num_features,)
    for half in (torch.float16, torch.bfloat16):
        zh = phi(x.to(half))
        assert zh.dtype == half and torch.isfinite(zh).all()
        torch.testing.assert_close(zh.float(), z, rtol=0.05, atol=0.05)
    phi64 = build(1, dtype=F64)
    assert phi64(x.double()).dtype == F64
    torch.testing.assert_close(phi64(x.double()).float(), z, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", BUILDERS)
def test_bad_inputs(name):
    build = BUILDERS[name]
    phi = build(0)
    d = phi.in_features
    with pytest.raises(ValueError, match="last dimension"):
        phi(torch.randn(3, d + 1))
    with pytest.raises(ValueError, match="NaN"):
        phi(torch.full((2, d), float("nan")))
    with pytest.raises(ValueError, match="infinite"):
        phi(torch.full((2, d), float("inf")))
    with pytest.raises(TypeError, match="floating"):
        phi(torch.ones(2, d, dtype=torch.int32))
    with pytest.raises(ValueError, match="device"):
        phi(torch.randn(2, d, device="meta"))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_features"):
        features.FourierFeatures("gaussian", 3, 0)
    with pytest.raises(ValueError, match="num_features"):
        features.ArcCosineFeatures(3, -4)
    with pytest.raises(TypeError, match="num_features"):
        features.PositiveFeatures(3, 4.5)
    with pytest.raises(ValueError, match="in_features"):
        features.URF("cos", 0, 8)
    with pytest.raises(ValueError, match="order"):
        features.ArcCosineFeatures(3, 8, order=3)
    with pytest.raises(ValueError, match="activation"):
        features.URF("relu", 3, 8)
    with pytest.raises(ValueError, match="only supported for activation='exp'"):
        features.URF("cos", 3, 8, M=0.1)
    with pytest.raises(ValueError, match="lengthscale"):
        features.FourierFeatures(kernels.Gaussian(lengthscale=-1.0), 3, 8)
    with pytest.raises(TypeError, match="seed"):
        features.FourierFeatures("gaussian", 3, 8, seed="zero")


def test_resample_changes_the_draw_only_when_asked():
    phi = features.FourierFeatures("gaussian", 4, 16, seed=1)
    x = torch.randn(3, 4)
    before = phi(x)
    phi.resample(2)
    assert not torch.equal(phi(x), before)
    phi.resample(1)
    assert torch.equal(phi(x), before)


def test_torch_generator_as_seed():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = torch.randn(3, 4)
    assert torch.equal(
        features.ArcCosineFeatures(4, 8, seed=g1)(x), features.ArcCosineFeatures(4, 8, seed=g2)(x)
    )


def test_gradients_flow_to_inputs():
    for name, build in BUILDERS.items():
        phi = build(0)
        x = _input(build).requires_grad_(True)
        phi(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), name


def test_positive_features_log_domain_and_stabilized():
    pos = features.PositiveFeatures(16, 64, seed=0, dtype=F64)
    x = 3.0 * torch.randn(5, 16, dtype=F64)
    logf = pos.log_features(x)
    torch.testing.assert_close(torch.exp(logf), pos(x))
    scaled, s = pos.stabilized(x)
    assert scaled.max() <= 1.0 and (scaled > 0).all()
    torch.testing.assert_close(scaled * torch.exp(s), pos(x))
    # Huge norms: plain features overflow in float32; the stabilised form never does.
    big = 40.0 * torch.randn(4, 16)
    pos32 = features.PositiveFeatures(16, 64, seed=0)
    scaled, s = pos32.stabilized(big.half())
    assert torch.isfinite(scaled).all() and torch.isfinite(s).all() and (scaled > 0).any()


def test_positive_features_temperature_and_hyperbolic_unbiased():
    x, y = sphere(1, 8, 1.2, seed=1), sphere(1, 8, 1.2, seed=2)
    exact = kernels.Softmax(temperature=2.0)(x, y).item()
    for hyp in (False, True):
        pos = features.PositiveFeatures(
            8, 200_000, temperature=2.0, hyperbolic=hyp, sampler="iid", seed=0, dtype=F64
        )
        samples = (pos(x) * pos(y))[0] * pos.num_features
        se = samples.std().item() / math.sqrt(samples.numel())
        assert abs(samples.mean().item() - exact) < 4 * se


def test_nystrom_reproduces_gram_with_all_points():
    X = torch.randn(60, 3, dtype=F64)
    for k in (kernels.Gaussian(1.5), kernels.Matern(1.5), kernels.Polynomial(2)):
        nys = features.NystromFeatures(k, 60, seed=0).fit(X)
        Z = nys(X)
        torch.testing.assert_close(Z @ Z.T, k(X), rtol=1e-8, atol=1e-8)


def test_nystrom_kmeanspp_better_than_uniform_and_round_trip():
    g = torch.Generator().manual_seed(0)
    centers = 4.0 * torch.randn(8, 2, generator=g, dtype=F64)
    X = centers.repeat_interleave(50, 0) + 0.3 * torch.randn(400, 2, generator=g, dtype=F64)
    k = kernels.Gaussian(0.8)
    K = k(X)
    err = {}
    for how in ("uniform", "kmeans++"):
        e = []
        for seed in range(5):
            Z = features.NystromFeatures(k, 10, centers=how, seed=seed).fit(X)(X)
            e.append(float(torch.linalg.norm(Z @ Z.T - K) / torch.linalg.norm(K)))
        err[how] = np.mean(e)
    assert err["kmeans++"] < err["uniform"], err
    nys = features.NystromFeatures(k, 10, centers="kmeans++", seed=1).fit(X)
    fresh = features.NystromFeatures(k, 10)
    fresh.load_state_dict(nys.state_dict())
    assert torch.equal(fresh(X), nys(X))


def test_nystrom_errors():
    nys = features.NystromFeatures("gaussian", 10)
    with pytest.raises(RuntimeError, match="fit"):
        nys(torch.randn(3, 2))
    with pytest.raises(ValueError, match="num_centers"):
        nys.fit(torch.randn(5, 2))
    with pytest.raises(ValueError, match="centers"):
        features.NystromFeatures("gaussian", 10, centers="random")
    with pytest.raises(ValueError, match="NaN"):
        nys.fit(torch.full((20, 2), float("nan")))
