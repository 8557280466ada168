"""The method classes of kernel attention: their hooks agree with one another, and the
favor+ affine form is PositiveFeatures' (temperature included)."""

import math

import pytest
import torch

from snnk.features import PositiveFeatures
from snnk.kernels import Gaussian
from snnk.nn import DecodingState, kernel_attention
from snnk.nn.attention import METHODS, AttentionMethod, make_method
from snnk.nn.attention.chunk import _affine_logits


def rows(n, E=8, seed=0, std=0.7):
    g = torch.Generator().manual_seed(seed)
    return std * torch.randn(2, n, E, generator=g, dtype=torch.float64)


def build(method, scale=8**-0.5, **kw):
    fm = PositiveFeatures(8, 16, seed=0, dtype=torch.float64, **kw)
    # the projection form of "nystrom" (the default "snap" form has no affine map)
    return make_method(method, scale, feature_map=fm, num_landmarks=5, nystrom_form="projection")


@pytest.mark.parametrize("method", METHODS)
def test_make_method_builds_one_class_per_method(method):
    spec = build(method)
    assert isinstance(spec, AttentionMethod) and spec.name == method
    assert spec.has_finish == (method in ("nystrom", "hermite", "softmax-free"))


@pytest.mark.parametrize("method", ["favor+", "nystrom", "softmax-free"])
@pytest.mark.parametrize("kw", [{}, {"M": 0.1, "hyperbolic": True}, {"temperature": 2.0}])
def test_affine_form_equals_the_key_and_query_maps(method, kw):
    """The engine evaluates affine methods through ``affine`` in forward and backward, and
    through ``key_map``/``query_map`` in the causal pass: they must be one function."""
    spec = build(method, **kw)
    assert spec.has_affine
    x, Z = rows(11), rows(5, seed=1)
    P, const = spec.affine(Z)
    torch.testing.assert_close(
        _affine_logits(x, P, const, spec.key_sq, spec.gamma), spec.key_map(x, Z), rtol=1e-12,
        atol=1e-12,
    )  # fmt: skip
    if method != "favor+":  # favor+ queries drop −γ‖q‖²/2: it cancels in the row shift
        torch.testing.assert_close(
            _affine_logits(x, P, const, spec.query_sq, spec.gamma), spec.query_map(x, Z),
            rtol=1e-12, atol=1e-12,
        )  # fmt: skip


def test_landmark_gram_is_the_gaussian_kernel_of_the_scaled_landmarks():
    spec = build("nystrom", scale=0.3)
    Z = rows(6)
    r = math.sqrt(0.3)
    expected = torch.exp(-0.5 * torch.cdist(Z * r, Z * r).square())
    torch.testing.assert_close(spec.gram(Z), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(spec.gram(Z), Gaussian(lengthscale=1 / r)(Z), rtol=1e-12, atol=0)


def test_favor_uses_the_feature_maps_temperature_everywhere():
    """Non-causal (affine form), causal and decoding (log_features) agree for T != 1."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (0.5 * torch.randn(1, 2, 30, 8, generator=g, dtype=torch.float64) for _ in "qkv")
    fm = PositiveFeatures(8, 32, seed=0, temperature=2.0, dtype=torch.float64)
    full = kernel_attention(q, k, v, "favor+", feature_map=fm)
    causal = kernel_attention(q, k, v, "favor+", feature_map=fm, is_causal=True)
    torch.testing.assert_close(causal[..., -1, :], full[..., -1, :], rtol=1e-10, atol=1e-12)
    steps = DecodingState("favor+", feature_map=fm).step(q, k, v)
    torch.testing.assert_close(steps, causal, rtol=1e-10, atol=1e-12)
    # temperature 2 is the softmax of scale/2: the same as halving the logit scale at T = 1
    fm1 = PositiveFeatures(8, 32, seed=0, dtype=torch.float64)
    half = kernel_attention(q, k, v, "favor+", feature_map=fm1, scale=0.5 / math.sqrt(8))
    torch.testing.assert_close(full, half, rtol=1e-10, atol=1e-12)
