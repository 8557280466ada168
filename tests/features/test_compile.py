"""Every feature map traces under ``torch.compile(fullgraph=True)``, forward and backward.

``aot_eager`` runs Dynamo's tracing (which fails on any graph break) and AOTAutograd's
backward without Inductor's code generation, so the test stays fast.
"""

import pytest
import torch

from snnk import features, kernels


class _Shrunk(torch.nn.Module):
    """A URF on inputs scaled to norm ≲ 0.5, where its variance is finite (no warning)."""

    def __init__(self, fmap):
        super().__init__()
        self.fmap = fmap

    def forward(self, x):
        return self.fmap(0.15 * x)


MAPS = {
    "fourier-iid": lambda: features.FourierFeatures(
        kernels.Gaussian(1.0), 6, 32, sampler="iid", seed=0
    ),
    "fourier-orthogonal": lambda: features.FourierFeatures(kernels.Gaussian(1.0), 6, 32, seed=0),
    "fourier-structured": lambda: features.FourierFeatures(
        kernels.Gaussian(1.0), 6, 32, sampler="structured", seed=0
    ),
    "fourier-qmc": lambda: features.FourierFeatures(
        kernels.Matern(1.5), 6, 32, sampler="qmc", seed=0
    ),
    "fourier-laplace": lambda: features.FourierFeatures(
        kernels.Laplace(1.0), 6, 32, sampler="iid", seed=0
    ),
    "arccosine": lambda: features.ArcCosineFeatures(6, 32, 1, seed=0),
    "positive": lambda: features.PositiveFeatures(6, 32, seed=0),
    "urf-cos": lambda: _Shrunk(features.URF("cos", 6, 32, seed=0)),
    "urf-gaussian": lambda: _Shrunk(features.URF("gaussian", 6, 32, seed=0)),
    "urf-exp": lambda: _Shrunk(features.URF("exp", 6, 32, seed=0)),
}


@pytest.mark.parametrize("name", sorted(MAPS))
def test_fullgraph_compile_forward_and_backward(name):
    torch._dynamo.reset()
    fmap = MAPS[name]()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    compiled = torch.compile(fmap, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    ref = fmap(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, x.grad)
