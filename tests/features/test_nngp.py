"""Random-network features of the NNGP kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnk.features import NNGPFeatures, make_feature_map
from snnk.kernels import NNGP, NTK

F64 = torch.float64


def _data(n=6, d=4, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_one_layer_unbiased(activation):
    """One hidden layer: E[φ(x)ᵀφ(x′)] = NNGP exactly; mean of 64 draws within 4 SE."""
    X = _data()
    k = NNGP(1, activation, 2.0, 0.1)
    est = torch.stack(
        [
            (lambda Z: Z @ Z.T)(make_feature_map(k, 4, 256, sampler="iid", seed=s)(X))
            for s in range(64)
        ]
    )
    mean, se = est.mean(0), est.std(0) / math.sqrt(64)
    assert ((mean - k(X)).abs() <= 4 * se + 1e-12).all()


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh"])
def test_deep_features_converge(activation):
    """Depth 3: the relative error falls with the width (per-entry relative sd ≈ 4/√D for
    deep maps, plus an O(1/D) bias): mean over 8 draws ≈ 0.45 at D = 64, ≈ 0.09 at 1,024."""
    X = _data()
    k = NNGP(3, activation, 1.8, 0.05, quadrature_degree=60)
    K = k(X)
    errs = []
    for D in (64, 1024):
        e = [
            float(torch.linalg.norm(Z @ Z.T - K) / torch.linalg.norm(K))
            for Z in (make_feature_map(k, 4, D, sampler="iid", seed=s)(X) for s in range(8))
        ]
        errs.append(np.mean(e))
    assert errs[1] < errs[0] / 2.5
    assert errs[1] < 0.2


def test_module_anatomy():
    X = _data()
    k = NNGP(2, "relu", 2.0, 0.1)
    f = NNGPFeatures(k, 4, 33, hidden_features=16, seed=3)
    Z = f(X)
    assert Z.shape == (6, 33) and torch.all(Z[:, -1] == math.sqrt(0.1))
    state = f.state_dict()
    g = NNGPFeatures(k, 4, 33, hidden_features=16, seed=99)
    assert not torch.equal(g(X), Z)
    g.load_state_dict(state)
    assert torch.equal(g(X), Z)
    before = torch.random.get_rng_state()
    f.resample(7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not torch.equal(f(X), Z)
    f32 = NNGPFeatures(k, 4, 32, seed=0, dtype=torch.float32)
    assert f32(X.float()).dtype == torch.float32
    assert f(X.reshape(2, 3, 4)).shape == (2, 3, 33)
    with pytest.raises(ValueError, match="x"):
        f(torch.full((2, 4), float("nan")))


def test_factory():
    assert isinstance(make_feature_map(NNGP(2), 3, 16), NNGPFeatures)
    with pytest.raises(ValueError, match="NTK"):
        make_feature_map(NTK(2), 3, 16)
    with pytest.raises(ValueError, match="depth 0"):
        make_feature_map(NNGP(0), 3, 16)
    with pytest.raises(TypeError, match="NNGP"):
        NNGPFeatures(NTK(1), 3, 16)


def test_estimator_takes_nngp_kernel():
    from snnk.models import RandomFeatureRidge

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = np.sin(X[:, 0]) + 0.1 * rng.normal(size=200)
    model = RandomFeatureRidge(kernel=NNGP(2, "relu", 2.0, 0.1), num_features=512, alpha=1e-2)
    score = model.fit(X, y).score(X, y)
    assert score > 0.8
