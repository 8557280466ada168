"""Exact kernels (``snnk.kernels``) on hostile input."""

from __future__ import annotations

import math

import pytest
import torch

from snnk import kernels
from tests.adversarial.harness import correct_or_clear, expect_close, expect_error, expect_finite

KERNELS = {
    "gaussian": lambda: kernels.Gaussian(1.5),
    "laplace": lambda: kernels.Laplace(1.5),
    "matern05": lambda: kernels.Matern(0.5, 1.5),
    "matern15": lambda: kernels.Matern(1.5, 1.5),
    "matern25": lambda: kernels.Matern(2.5, 1.5),
    "arccos0": lambda: kernels.ArcCosine(0),
    "arccos1": lambda: kernels.ArcCosine(1),
    "arccos2": lambda: kernels.ArcCosine(2),
    "softmax": lambda: kernels.Softmax(4.0),
    "polynomial": lambda: kernels.Polynomial(3, 1.0, 0.5),
    "linear": lambda: kernels.Linear(),
    "sum": lambda: kernels.Gaussian(1.0) + kernels.Linear(),
    "product": lambda: kernels.Matern(2.5, 2.0) * kernels.Polynomial(2),
    "scaled": lambda: 3.0 * kernels.Gaussian(0.5),
}
NAMES = sorted(KERNELS)


def _data(n=20, d=4, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("where", ["X", "Y"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_inputs(name, bad, where):
    k = KERNELS[name]()
    X, Y = _data(), _data(7, seed=1)
    (X if where == "X" else Y)[3, 1] = bad
    expect_error(lambda: k(X, Y), where)


@pytest.mark.category("scale")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e6])
@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1.0, 1e8, 1e30])
@pytest.mark.parametrize("name", NAMES)
def test_scales_and_offsets(name, scale, offset, dtype):
    """Correct to the dtype's rounding of the *data* (the reference is the same numbers in
    float64), or a clear error when the values overflow the dtype."""
    k = KERNELS[name]()
    X = (offset + scale * _data()).to(dtype)
    Y = (offset + scale * _data(7, seed=1)).to(dtype)
    try:
        ref = k(X.double(), Y.double()).to(dtype).double()
    except ValueError:  # the true values overflow float64 too: only a clear error will do
        expect_error(lambda: k(X, Y), "overflow")
        return

    def check(out):
        assert out.dtype == dtype
        expect_finite(out)
        assert torch.isfinite(ref).all()
        tol = 2e-4 if dtype == torch.float32 else 1e-9
        # entries of a tiny kernel value are judged against the largest one
        atol = tol * float(ref.abs().max()) + torch.finfo(dtype).tiny
        expect_close(out, ref, rtol=tol, atol=atol)

    correct_or_clear(lambda: k(X, Y), check, "X", "overflow", "standardise")


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_inputs(name, dtype):
    k = KERNELS[name]()
    X, Y = _data().to(dtype), _data(7, seed=1).to(dtype)
    out = k(X, Y)
    assert out.dtype == dtype
    ref = k(X.double(), Y.double())
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    expect_close(out, ref, rtol=tol, atol=tol * float(ref.abs().max()))


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
@pytest.mark.parametrize("name", NAMES)
def test_non_float_inputs(name, dtype):
    k = KERNELS[name]()
    X = torch.ones(5, 3).to(dtype)
    expect_error(lambda: k(X), "X")
    expect_error(lambda: k(torch.ones(5, 3), X), "Y")


@pytest.mark.category("shape")
@pytest.mark.parametrize(
    "case",
    ["empty_X", "empty_Y", "vector", "scalar", "width", "batch"],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes(name, case):
    k = KERNELS[name]()
    X = _data()
    bad = {
        "empty_X": lambda: k(X[:0], X),
        "empty_Y": lambda: k(X, X[:0]),
        "vector": lambda: k(X[0]),
        "scalar": lambda: k(torch.tensor(1.0)),
        "width": lambda: k(X, _data(3, 5)),
        "batch": lambda: k(_data(6).reshape(2, 3, 4), _data(12).reshape(3, 4, 4)),
    }[case]
    expect_error(bad, "X", "Y", "batch")


@pytest.mark.category("shape")
@pytest.mark.parametrize("name", NAMES)
def test_one_row_and_broadcast_batches(name):
    k = KERNELS[name]()
    X, Y = _data(1), _data(6, seed=1).reshape(2, 3, 4)
    out = k(X, Y)
    assert out.shape == (2, 1, 3)
    expect_close(out[1], k(X, Y[1]), rtol=1e-12)


@pytest.mark.category("device")
@pytest.mark.parametrize("name", NAMES)
def test_meta_device(name):
    k = KERNELS[name]()
    out = correct_or_clear(
        lambda: k(torch.empty(5, 4, device="meta"), torch.empty(3, 4, device="meta")),
        lambda out: None,
        "meta",
    )
    assert out in ("result", "error")
    if out == "result":
        got = k(torch.empty(5, 4, device="meta"), torch.empty(3, 4, device="meta"))
        assert got.shape == (5, 3) and got.device.type == "meta"


@pytest.mark.category("device")
def test_mixed_devices():
    expect_error(
        lambda: kernels.Gaussian()(torch.ones(2, 3), torch.empty(2, 3, device="meta")), "device"
    )


@pytest.mark.category("options")
@pytest.mark.parametrize(
    "build, arg",
    [
        (lambda v: kernels.Gaussian(v), "lengthscale"),
        (lambda v: kernels.Laplace(v), "lengthscale"),
        (lambda v: kernels.Matern(1.5, v), "lengthscale"),
        (lambda v: kernels.Matern(v, 1.0), "nu"),
        (lambda v: kernels.ArcCosine(v), "order"),
        (lambda v: kernels.Softmax(v), "temperature"),
        (lambda v: kernels.Polynomial(v), "degree"),
        (lambda v: kernels.Polynomial(2, v), "coef0"),
        (lambda v: kernels.Polynomial(2, 1.0, v), "scale"),
        (lambda v: v * kernels.Gaussian(), "scale"),
    ],
)
@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, "1", True, 3.7, None])
def test_bad_hyper_parameters(build, arg, value):
    def check(k):
        # accepted values must give a valid kernel
        expect_finite(k(_data(), _data(5, seed=2)))

    correct_or_clear(lambda: build(value), check, arg)


@pytest.mark.category("options")
@pytest.mark.parametrize(
    "call",
    [
        lambda: kernels.make_kernel("nope"),
        lambda: kernels.make_kernel(3),
        lambda: kernels.make_kernel("sum"),
        lambda: kernels.make_kernel("gaussian", width=2.0),
        lambda: kernels.make_kernel(kernels.Gaussian(), lengthscale=2.0),
        lambda: kernels.Gaussian()(_data(), block_rows=0),
        lambda: kernels.Gaussian()(_data(), block_rows=2.5),
    ],
)
def test_bad_factory_calls(call):
    expect_error(call, "kernel", "make_kernel", "hyper-parameters", "block_rows", "k1")
