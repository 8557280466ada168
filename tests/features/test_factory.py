"""make_feature_map: the one feature-map factory (kernel -> random feature map)."""

import pytest
import torch

from snnk.features import ArcCosineFeatures, FourierFeatures, make_feature_map
from snnk.kernels import make_kernel


def test_fourier_for_shift_invariant_kernels_arccosine_for_arccosine():
    for name in ("gaussian", "laplace", "matern"):
        fmap = make_feature_map(make_kernel(name), 3, 16, sampler="iid", seed=0)
        assert isinstance(fmap, FourierFeatures), name
    paired = make_feature_map(make_kernel("gaussian"), 3, 16, phases="paired", seed=0)
    assert paired.num_frequencies == 8  # cos/sin pairs
    arc = make_feature_map(make_kernel("arccosine"), 3, 16, seed=0)
    assert isinstance(arc, ArcCosineFeatures)
    with pytest.raises(ValueError, match="no random feature map"):
        make_feature_map(make_kernel("polynomial"), 3, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_shape_and_seed(dtype):
    k = make_kernel("gaussian", lengthscale=1.5)
    a = make_feature_map(k, 4, 32, sampler="iid", seed=3, dtype=dtype)
    b = make_feature_map(k, 4, 32, sampler="iid", seed=3, dtype=dtype)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    z = a(x)
    assert z.shape == (5, 32) and z.dtype == dtype
    torch.testing.assert_close(z, b(x), rtol=0, atol=0)  # same seed, same draw
    assert not torch.equal(z, make_feature_map(k, 4, 32, sampler="iid", seed=4, dtype=dtype)(x))


def test_features_estimate_the_kernel():
    """Monte Carlo error of ``Z Zᵀ`` is O(1/√D): at D = 8192 the largest entry error on 40
    points is below 0.05 (measured about 0.02; a wrong scale or frequency law is off by
    0.3 or more)."""
    k = make_kernel("gaussian", lengthscale=2.0)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = make_feature_map(k, 3, 8192, seed=0)(x)
    assert float((z @ z.T - k(x, x)).abs().max()) < 0.05


def test_old_import_path_is_the_same_function():
    from snnk.models.random_features import make_feature_map as old

    assert old is make_feature_map
