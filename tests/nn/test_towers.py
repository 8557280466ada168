"""The input tower of SNNK layers never returns Inf/NaN from finite input: Fourier kinds
shrink rows beyond the overflow radius (eager and compiled alike), and leave the others
bit for bit as they are."""

from __future__ import annotations

import warnings

import pytest
import torch

from snnk.features import VarianceWarning
from snnk.nn import SNNKLinear
from snnk.nn.towers import overflow_radius

FOURIER = ["cos", "sin", "gaussian"]


def _layer(activation, dtype=torch.float32, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VarianceWarning)
        return SNNKLinear(16, 4, 64, activation=activation, seed=0, dtype=dtype, **kw)


def _rows(norms, dtype=torch.float32, d=16, seed=1):
    x = torch.randn(len(norms), d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True) * torch.tensor(norms, dtype=dtype)[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", [*FOURIER, "exp", "relu"])
def test_finite_for_every_finite_input(activation, dtype):
    layer = _layer(activation, dtype)
    big = 1e30 if dtype == torch.float32 else 1e150
    y = layer(_rows([0.0, 1.0, 13.0, 30.0, 1e3, big], dtype))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", FOURIER)
def test_half_inputs_stay_finite(activation, dtype):
    layer = _layer(activation, torch.float32)
    y = layer(_rows([0.5, 5.0, 30.0], torch.float32).to(dtype))
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("activation", FOURIER)
def test_rows_inside_the_radius_are_untouched(activation):
    layer = _layer(activation)
    radius = overflow_radius(layer.towers, torch.float32)
    assert 2.0 < radius < 13.0  # float32, D = 64: 12 / max|ω|
    x = _rows([0.3, 1.0, 0.9 * radius])
    # the bound multiplies these rows by exactly 1: the features are the URF's own
    torch.testing.assert_close(
        layer.towers.input_map(x), layer.towers.maps.input_map(x), rtol=0, atol=0
    )
    # a row beyond the radius gives the features of that row shrunk to norm R
    far = _rows([4.0 * radius])
    shrunk = far * (radius / far.norm())
    got, want = layer.towers.input_map(far), layer.towers.maps.input_map(shrunk)
    # phases ω gᵀx of size ≈ 30 carry the rounding of x: relative to the amplitude
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("activation", FOURIER)
def test_gradients_stay_finite(activation):
    layer = _layer(activation)
    x = _rows([0.5, 30.0, 1e4]).requires_grad_(True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.psi.grad).all()


def test_compiled_layer_is_finite_far_out():
    layer = _layer("cos")
    x = _rows([1.0, 30.0])
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")(x)
    assert torch.isfinite(compiled).all()
    torch.testing.assert_close(compiled, eager)


def test_input_norm_beyond_the_radius_is_refused_and_no_bound_warns():
    with pytest.raises(ValueError, match="input_norm"):
        SNNKLinear(16, 4, 64, activation="cos", input_norm=100.0, seed=0)
    with pytest.warns(VarianceWarning, match="input_norm"):
        SNNKLinear(16, 4, 64, activation="cos", seed=0)
