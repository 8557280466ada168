"""Kernels on hostile input: far offsets and extreme scales in float32, bad shapes, bad configs."""

import pytest
import torch

from snnk import kernels

STATIONARY = [
    kernels.Gaussian(2.0),
    kernels.Laplace(2.0),
    kernels.Matern(0.5, 2.0),
    kernels.Matern(1.5, 2.0),
    kernels.Matern(2.5, 2.0),
    3.0 * kernels.Gaussian(1.5),
    kernels.Matern(0.5, 2.0) + kernels.Gaussian(3.0),
]


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
@pytest.mark.parametrize("kernel", STATIONARY, ids=repr)
def test_float32_gram_at_offset_matches_float64(kernel, offset):
    # The float32 data themselves are the input: the reference is the same numbers in float64.
    # The expanded ‖x‖² + ‖y‖² - 2xᵀy at offset 1e4 loses every digit without centring
    # (entries of 1.0 where the truth is 2e-5); near pairs lose half their digits under the
    # square root of Matérn without the direct recomputation.
    g = torch.Generator().manual_seed(0)
    X = (offset + torch.randn(300, 5, generator=g, dtype=torch.float64)).float()
    Y = X[:120] + 1e-3 * torch.randn(120, 5, generator=g).float()  # near pairs, too
    for A, B in ((X, None), (X, Y)):
        ref = kernel(A.double(), None if B is None else B.double())
        got = kernel(A, B).double()
        big = ref >= 1e-3
        assert big.sum() > 100
        assert ((got - ref).abs() / ref)[big].max() < 1e-5


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1e10, 1e30])
def test_scale_with_matching_lengthscale(scale):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(60, 4, generator=g, dtype=torch.float64)
    for k_unit, k_scaled in (
        (kernels.Gaussian(1.0), kernels.Gaussian(scale)),
        (kernels.Matern(1.5, 1.0), kernels.Matern(1.5, scale)),
    ):
        ref = k_unit(X)
        got = k_scaled((X * scale).float()).double()
        assert torch.isfinite(got).all()
        assert (got - ref).abs().max() < 1e-5


def test_overflowing_distances_raise_a_clear_error():
    X = torch.randn(5, 3) * 1e20
    with pytest.raises(ValueError, match="standardise"):
        kernels.Gaussian(1.0)(X)


def test_batch_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match="do not broadcast"):
        kernels.Gaussian()(torch.randn(2, 5, 3), torch.randn(3, 4, 3))


@pytest.mark.parametrize(
    "name, params",
    [("sum", {}), ("product", {"k1": {"name": "gaussian"}}), ("scaled", {"base": 3, "scale": 2})],
)
def test_composed_configs_without_parts(name, params):
    with pytest.raises(ValueError, match=r"k1|base"):
        kernels.make_kernel(name, **params)


def test_gradient_through_centring():
    g = torch.Generator().manual_seed(2)
    X = (100.0 + torch.randn(12, 3, generator=g, dtype=torch.float64)).requires_grad_()
    Y = 100.0 + torch.randn(7, 3, generator=g, dtype=torch.float64)
    for k in (kernels.Gaussian(0.7), kernels.Matern(2.5, 1.3)):
        assert torch.autograd.gradcheck(lambda x, k=k: k(x, Y), (X,))


def test_resolve_kernel_and_lengthscale_helpers():
    assert kernels.resolve_kernel("rbf", 2.0) == kernels.Gaussian(2.0)
    assert kernels.resolve_kernel("arccosine", 2.0) == kernels.ArcCosine()
    k = kernels.Matern(2.5, 3.0)
    assert kernels.resolve_kernel(k, 9.0) is k
    assert kernels.with_lengthscale(2.0 * k, 5.0) == 2.0 * kernels.Matern(2.5, 5.0)
    unit, ls, c = kernels.split_scale(2.0 * k)
    assert (unit, ls, c) == (kernels.Matern(2.5, 1.0), 3.0, 2.0)
    with pytest.raises(ValueError, match="positive"):
        kernels.resolve_kernel("gaussian", -1.0)
    with pytest.raises(TypeError, match="kernel must be"):
        kernels.resolve_kernel(3)
    with pytest.raises(ValueError, match="shift-invariant"):
        kernels.split_scale(kernels.Linear())
