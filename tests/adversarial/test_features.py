"""Random feature maps (``snnk.features``) on hostile input."""

from __future__ import annotations

import math

import pytest
import torch

from snnk import features, kernels
from tests.adversarial.harness import correct_or_clear, expect_error, expect_finite

D_IN, D_OUT = 5, 16

MAPS = {
    "fourier-iid": lambda **kw: features.FourierFeatures(
        kernels.Gaussian(1.0), D_IN, D_OUT, sampler="iid", seed=0, **kw
    ),
    "fourier-orthogonal": lambda **kw: features.FourierFeatures(
        kernels.Gaussian(1.0), D_IN, D_OUT, seed=0, **kw
    ),
    "fourier-structured": lambda **kw: features.FourierFeatures(
        kernels.Matern(1.5), D_IN, D_OUT, sampler="structured", seed=0, **kw
    ),
    "fourier-qmc": lambda **kw: features.FourierFeatures(
        kernels.Gaussian(1.0), D_IN, D_OUT, sampler="qmc", seed=0, **kw
    ),
    "fourier-laplace": lambda **kw: features.FourierFeatures(
        kernels.Laplace(1.0), D_IN, D_OUT, sampler="iid", seed=0, **kw
    ),
    "arccos0": lambda **kw: features.ArcCosineFeatures(D_IN, D_OUT, 0, seed=0, **kw),
    "arccos1": lambda **kw: features.ArcCosineFeatures(D_IN, D_OUT, 1, seed=0, **kw),
    "arccos2": lambda **kw: features.ArcCosineFeatures(D_IN, D_OUT, 2, seed=0, **kw),
    "positive": lambda **kw: features.PositiveFeatures(D_IN, D_OUT, seed=0, **kw),
    "urf-cos": lambda **kw: features.URF("cos", D_IN, D_OUT, seed=0, **kw),
    "urf-exp": lambda **kw: features.URF("exp", D_IN, D_OUT, seed=0, **kw),
    "urf-gaussian": lambda **kw: features.URF("gaussian", D_IN, D_OUT, seed=0, **kw),
}
NAMES = sorted(MAPS)


def _x(n=8, seed=0, dtype=torch.float64):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_input(name, bad):
    fmap = MAPS[name](dtype=torch.float64)
    x = _x()
    x[2, 3] = bad
    expect_error(lambda: fmap(x), "x")


@pytest.mark.category("scale")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e6])
@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1.0, 1e3, 1e30])
@pytest.mark.parametrize("name", NAMES)
def test_scales_and_offsets(name, scale, offset, dtype):
    """Finite features (against the same numbers through a float64 map where the map is
    well conditioned), or a clear error/warning-backed refusal."""
    fmap = MAPS[name](dtype=dtype)
    x = (offset + scale * _x()).to(dtype)

    def check(out):
        assert out.dtype == dtype and out.shape == (8, fmap.num_features)
        expect_finite(out)

    with _allow_warnings():
        correct_or_clear(lambda: fmap(x), check, "x", "norm", "overflow", "scale")


class _allow_warnings:
    """Variance warnings are the documented answer at large norms: allow them here."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_input(name, dtype):
    fmap = MAPS[name]()
    # norms ≲ 0.5: inside every map's finite-variance range (URF warns beyond it, by design)
    x = _x(dtype=torch.float32) * 0.2
    out = fmap(x.to(dtype))
    assert out.dtype == dtype
    ref = fmap(x.to(dtype).float())
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    scale = float(ref.abs().max())
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * scale)


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
@pytest.mark.parametrize("name", NAMES)
def test_non_float_input_and_buffers(name, dtype):
    fmap = MAPS[name]()
    expect_error(lambda: fmap(torch.ones(3, D_IN).to(dtype)), "x")
    expect_error(lambda: MAPS[name](dtype=dtype), "dtype")


@pytest.mark.category("shape")
@pytest.mark.parametrize("case", ["empty", "width", "scalar"])
@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes(name, case):
    fmap = MAPS[name]()
    x = {
        "empty": torch.ones(0, D_IN),
        "width": torch.ones(3, D_IN + 1),
        "scalar": torch.tensor(1.0),
    }[case]
    expect_error(lambda: fmap(x), "x")


@pytest.mark.category("shape")
@pytest.mark.parametrize("name", NAMES)
def test_one_row_vector_and_batches(name):
    fmap = MAPS[name](dtype=torch.float64)
    x = 0.2 * _x(6).reshape(2, 3, D_IN)  # inside every map's finite-variance range
    out = fmap(x)
    assert out.shape == (2, 3, fmap.num_features)
    torch.testing.assert_close(out[1, 2], fmap(x[1, 2]))
    torch.testing.assert_close(out[1, 2:3], fmap(x[1, 2:3]))


@pytest.mark.category("device")
@pytest.mark.parametrize("name", NAMES)
def test_meta_input_to_a_cpu_map(name):
    fmap = MAPS[name]()
    expect_error(lambda: fmap(torch.empty(3, D_IN, device="meta")), "device", "meta")


@pytest.mark.category("device")
@pytest.mark.parametrize("name", NAMES)
def test_meta_map(name):
    fmap = MAPS[name](device="meta")
    out = fmap(torch.empty(3, D_IN, device="meta"))
    assert out.device.type == "meta" and out.shape == (3, fmap.num_features)


@pytest.mark.category("options")
@pytest.mark.parametrize("value", [0, -3, 2.5, "8", True, None])
@pytest.mark.parametrize("arg", ["in_features", "num_features"])
def test_bad_sizes(arg, value):
    kw = {"in_features": D_IN, "num_features": D_OUT, arg: value}
    for build in (
        lambda: features.FourierFeatures(kernels.Gaussian(), kw["in_features"], kw["num_features"]),
        lambda: features.ArcCosineFeatures(kw["in_features"], kw["num_features"]),
        lambda: features.PositiveFeatures(kw["in_features"], kw["num_features"]),
        lambda: features.URF("cos", kw["in_features"], kw["num_features"]),
    ):
        expect_error(build, arg)


@pytest.mark.category("options")
@pytest.mark.parametrize(
    "build, arg",
    [
        (lambda: features.FourierFeatures(kernels.Gaussian(), D_IN, D_OUT, sampler="x"), "sampler"),
        (lambda: features.FourierFeatures(kernels.Laplace(), D_IN, D_OUT), "sampler"),
        (lambda: features.FourierFeatures(kernels.Linear(), D_IN, D_OUT), "kernel"),
        (lambda: features.FourierFeatures("nope", D_IN, D_OUT), "kernel"),
        (lambda: features.FourierFeatures(kernels.Gaussian(), D_IN, D_OUT, phases="x"), "phases"),
        (lambda: features.ArcCosineFeatures(D_IN, D_OUT, 3), "order"),
        (lambda: features.PositiveFeatures(D_IN, D_OUT, M=1e30), "M"),
        (lambda: features.PositiveFeatures(D_IN, D_OUT, M=math.nan), "M"),
        (lambda: features.URF("relu", D_IN, D_OUT), "activation"),
        (lambda: features.FourierFeatures(kernels.Gaussian(), D_IN, D_OUT, seed="a"), "seed"),
        (lambda: features.FourierFeatures(kernels.Gaussian(), D_IN, D_OUT, seed=1.5), "seed"),
    ],
)
def test_bad_options(build, arg):
    expect_error(build, arg)


@pytest.mark.category("files")
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_of_another_size(name):
    small = MAPS[name]()
    other = {k: torch.cat([v, v]) if v.ndim else v for k, v in small.state_dict().items()}
    if not other:
        pytest.skip("no buffers")
    before = {k: v.clone() for k, v in small.state_dict().items()}
    expect_error(lambda: small.load_state_dict(other), "state dict", "shape")
    after = small.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.category("inplace")
@pytest.mark.parametrize("name", NAMES)
def test_resample_with_a_bad_seed_keeps_the_draw(name):
    fmap = MAPS[name]()
    before = {k: v.clone() for k, v in fmap.state_dict().items()}
    expect_error(lambda: fmap.resample("not a seed"), "seed")
    after = fmap.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.category("options")
@pytest.mark.parametrize("hyperbolic", [False, True])
@pytest.mark.parametrize("M", [-0.1, 0.1, 0.5])
def test_generalized_positive_features_estimate_the_softmax_kernel(M, hyperbolic):
    """Issue 15 item 4: ``hyperbolic=True`` with ``M != 0`` failed on every input. The mean
    over 400 independent draws of ``φ(x)ᵀφ(y)`` matches ``kernels.Softmax`` within 5 standard
    errors of that mean (entries of logits |xᵀy| ≲ 0.5)."""
    x, y = 0.3 * _x(6, seed=1), 0.3 * _x(5, seed=2)
    exact = kernels.Softmax()(x, y)
    draws = []
    for s in range(400):
        f = features.PositiveFeatures(
            D_IN, D_OUT, M=M, hyperbolic=hyperbolic, sampler="iid", seed=s, dtype=torch.float64
        )
        draws.append(f(x) @ f(y).T)
    est = torch.stack(draws)
    err = (est.mean(0) - exact).abs()
    assert (err <= 5 * est.std(0) / math.sqrt(len(draws))).all()
