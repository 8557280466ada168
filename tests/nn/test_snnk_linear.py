"""SNNKLinear and snnkify: spec section 10 items 11–13 and the issue's snnkify tests."""

import io

import numpy as np
import pytest
import torch
from torch import nn

from snnk import kernels
from snnk.nn import SNNKLinear, snnkify
from tests.conftest import host_reads, sphere

F64 = torch.float64


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


@pytest.mark.parametrize("activation", ["relu", "exp", "cos", "sin", "gaussian"])
@pytest.mark.parametrize("mode", ["direct", "weights"])
def test_item11_shapes_and_gradients(activation, mode):
    kw = {"split": 0.5} if activation == "gaussian" else {}
    layer = SNNKLinear(12, 5, 32, activation, mode=mode, seed=0, input_norm=0.5, **kw)
    for shape in [(4, 12), (2, 3, 12)]:
        x = torch.randn(*shape)
        y = layer(x)
        assert y.shape == (*shape[:-1], 5) and y.dtype == torch.float32 and not y.is_complex()
    y.sum().backward()
    trained = ["psi"] if mode == "direct" else ["weight", "bias"]
    for name, p in layer.named_parameters():
        assert name in trained and p.grad is not None and torch.isfinite(p.grad).all()
    buffers = dict(layer.named_buffers())
    assert buffers and all(not b.requires_grad for b in buffers.values())


def test_item11_normalisation_is_over_the_feature_dimension():
    layer = SNNKLinear(8, 3, 16, "exp", input_norm=0.5, seed=0)
    x = torch.randn(2, 5, 8)
    # Scaling one token must not change the others' outputs (normalised per token).
    x2 = x.clone()
    x2[0, 0] *= 10
    torch.testing.assert_close(layer(x2)[0, 1:], layer(x)[0, 1:])
    torch.testing.assert_close(layer(x2)[0, 0], layer(x)[0, 0])


@pytest.mark.parametrize("mode", ["direct", "weights"])
def test_item12_state_bit_exact_and_rng(mode):
    a = SNNKLinear(10, 4, 16, "relu", mode=mode, seed=3)
    b = SNNKLinear(10, 4, 16, "relu", mode=mode, seed=3)
    assert torch.equal(a.towers.maps.projection.weight, b.towers.maps.projection.weight)
    x = torch.randn(6, 10)
    state = torch.get_rng_state()
    ya = a(x)
    assert torch.equal(torch.get_rng_state(), state)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = SNNKLinear(10, 4, 16, "relu", mode=mode, seed=4)
    c.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(c(x), ya)
    c.eval()  # cached Ψ in eval mode gives the same output
    assert torch.equal(c(x), ya) and torch.equal(c(x), ya)


def test_weights_mode_cache_follows_updates():
    layer = SNNKLinear(6, 3, 16, "exp", mode="weights", seed=0).eval()
    x = 0.2 * torch.randn(2, 6)
    y0 = layer(x)
    with torch.no_grad():
        layer.weight.mul_(0.5)
    assert not torch.equal(layer(x), y0)


def test_item13_from_linear_exp_matches():
    d, l = 64, 48
    lin = nn.Linear(d, l, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(sphere(l, d, 0.5, seed=1))
        lin.bias.copy_(0.1 * torch.linspace(-1, 1, l, dtype=F64))
    x = sphere(32, d, 0.5, seed=2)
    exact = torch.exp(lin(x)).detach()
    rel = []
    for seed in range(3):
        layer = SNNKLinear.from_linear(lin, "exp", 4096, seed=seed)
        rel.append(float(((layer(x).detach() - exact) / exact).square().mean()))
    assert np.mean(rel) < 2e-3


def test_relu_layer_estimates_half_arccosine_of_augmented_vectors():
    d, l = 16, 8
    lin = nn.Linear(d, l, dtype=F64)
    x = torch.randn(20, d, dtype=F64)
    layer = SNNKLinear.from_linear(lin, "relu", 200_000, seed=0, sampler="iid")
    aug_x = torch.cat([x, torch.ones(20, 1, dtype=F64)], 1)
    aug_w = torch.cat([lin.weight, lin.bias[:, None]], 1).detach()
    expected = 0.5 * kernels.ArcCosine(1)(aug_x, aug_w)
    torch.testing.assert_close(layer(x).detach(), expected, rtol=0.05, atol=0.02)


def test_parameter_count_and_flops():
    layer = SNNKLinear(768, 3072, 16, "relu", bias=False, seed=0)
    assert layer.num_parameters == 3072 * 16
    f = layer.flops()
    assert f["dense"] == 768 * 3072 and f["snnk"] == 768 * 16 + 3072 * 16  # spec section 1
    assert f["saved"] > 0


def _mlp(act=nn.ReLU):
    return nn.Sequential(
        nn.Linear(8, 16),
        act(),
        nn.Sequential(nn.Linear(16, 16), act(), nn.Dropout(0.1)),
        nn.Linear(16, 3),
    )


def test_snnkify_replaces_every_pair_with_distinct_modules():
    model = snnkify(_mlp(), num_features=32, seed=0)
    layers = [m for m in model.modules() if isinstance(m, SNNKLinear)]
    assert len(layers) == 2 and layers[0] is not layers[1]
    assert layers[0].seed != layers[1].seed
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert isinstance(model[3], nn.Linear)  # the last Linear has no activation: kept
    assert model(torch.randn(5, 8)).shape == (5, 3)


def test_snnkify_exp_small_weights_close_to_original():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8, dtype=F64), Exp(), nn.Linear(8, 2, dtype=F64)).double()
    with torch.no_grad():
        model[0].weight.mul_(0.5)
    x = sphere(64, 16, 0.5, seed=3)
    ref = model(x).detach()
    snnkify(model, {Exp: "exp"}, num_features=8192, seed=1)
    out = model(x).detach()
    assert float((out - ref).square().mean() / ref.square().mean()) < 1e-3


@pytest.mark.parametrize("mode", ["direct", "weights"])
def test_snnkify_gradients_reach_the_right_tensors(mode):
    model = snnkify(_mlp(), num_features=16, seed=0, mode=mode)
    model(torch.randn(4, 8)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    names = {n.split(".")[-1] for n, _ in model.named_parameters()}
    assert names == ({"psi", "weight", "bias"} if mode == "direct" else {"weight", "bias"})


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_features"):
        SNNKLinear(4, 4, 0)
    with pytest.raises(ValueError, match="activation"):
        SNNKLinear(4, 4, 8, "tanh")
    with pytest.raises(ValueError, match="mode"):
        SNNKLinear(4, 4, 8, mode="psi")
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        SNNKLinear.from_linear(nn.Conv1d(1, 1, 1))
    with pytest.raises(ValueError, match="last dimension"):
        SNNKLinear(4, 4, 8, seed=0)(torch.randn(2, 5))


def test_snnkify_per_layer_widths():
    model = snnkify(_mlp(), num_features=[24, 8], seed=0)
    widths = [m.num_features for m in model.modules() if isinstance(m, SNNKLinear)]
    assert widths == [24, 8]
    with pytest.raises(ValueError, match="one entry per"):
        snnkify(_mlp(), num_features=[24], seed=0)
    with pytest.raises(ValueError, match="one entry per"):
        snnkify(_mlp(), num_features=[24, 8, 4], seed=0)


@pytest.mark.parametrize("activation", ["relu", "exp", "cos"])
@pytest.mark.parametrize("mode", ["direct", "weights"])
def test_forward_and_backward_never_read_values_to_the_host(activation, mode):
    # Like torch.nn layers: shapes are checked, values are not (a NaN scan would be a host
    # synchronisation per call on a GPU, 12 of them per step in an adapted transformer).
    layer = SNNKLinear(6, 5, 16, activation, mode=mode, seed=0, input_norm=1.0)
    x = torch.randn(3, 4, 6, requires_grad=True)
    assert host_reads(lambda: layer(x).sum().backward()) == 0
    # NaN propagates instead of raising, as in nn.Linear
    assert torch.isnan(layer(torch.full((2, 6), float("nan")))).all()
    with pytest.raises(ValueError, match="last dimension"):
        layer(torch.randn(2, 7))


def test_weights_are_checked_once_at_construction():
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SNNKLinear.from_linear(lin, "relu", 8)
    # the feature maps themselves still check their inputs when called directly
    layer = SNNKLinear(4, 3, 8, "exp", seed=0)
    with pytest.raises(ValueError, match="NaN"), layer.towers.maps._checking_values():
        layer.towers.maps.input_map(torch.full((1, 4), float("nan")))
