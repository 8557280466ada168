"""Pooled attention landmarks against PyTorch's adaptive average pooling."""

import pytest
import torch

from snnk.nn.attention.landmarks import Landmarks


@pytest.mark.parametrize("S, m", [(4096, 64), (1000, 64), (37, 5), (5, 7), (3, 64), (10, 64)])
def test_pooled_landmarks_and_their_gradient_equal_adaptive_pooling(S, m):
    # m > S puts a key in several segments (it once reached only two: landmarks and
    # gradients were wrong for short sequences with many landmarks)
    g = torch.Generator().manual_seed(S * 100 + m)
    k = torch.randn(6, S, 8, dtype=torch.float64, generator=g, requires_grad=True)
    lm = Landmarks("pool", S, m, None, 128, k)
    Z = lm.compute(k)
    ref = torch.nn.functional.adaptive_avg_pool1d(k.mT, m).mT
    torch.testing.assert_close(Z, ref, rtol=0, atol=1e-13)
    dZ = torch.randn(Z.shape, dtype=torch.float64, generator=g)
    dk = torch.zeros_like(k)
    lm.route(dZ, dk)
    (expected,) = torch.autograd.grad(ref, k, dZ)
    torch.testing.assert_close(dk, expected, rtol=0, atol=1e-13)
