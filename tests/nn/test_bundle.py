"""Bundling: spec section 10 items 14 (identity) and 15 (convergence)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from snnk.nn import BundledNetwork, bundle
from tests.conftest import host_reads, sphere
from tests.nn.test_snnk_linear import Exp

F64 = torch.float64


def _prf(G, x):
    """exp positive features by the formula: m^{-1/2} exp(Gx − ‖x‖²/2)."""
    return torch.exp(x @ G.T - 0.5 * x.square().sum(-1, keepdim=True)) / math.sqrt(G.shape[0])


def _stack(dtype, final=True):
    g = torch.Generator().manual_seed(0)
    W1 = 0.5 * sphere(32, 16, 1.0, seed=7).to(dtype)
    W2 = torch.randn(8, 32, generator=g, dtype=dtype) * 0.5 / (1.3 * math.sqrt(32))
    layers = [nn.Linear(16, 32, dtype=dtype), Exp(), nn.Linear(32, 8, dtype=dtype), Exp()]
    if final:
        layers.append(nn.Linear(8, 3, dtype=dtype))
    mlp = nn.Sequential(*layers)
    with torch.no_grad():
        mlp[0].weight.copy_(W1)
        mlp[2].weight.copy_(W2)
        mlp[0].bias.fill_(0.05)
        mlp[2].bias.fill_(-0.05)
    return mlp


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-12), (torch.float32, 1e-5)])
def test_item14_bundled_equals_explicit_nested_computation(dtype, tol):
    mlp = _stack(dtype)
    net = bundle(mlp, [64, 48], {Exp: "exp"}, seed=1)
    G1 = net.tower[0].maps.projection.weight
    G2 = net.tower[1].maps.projection.weight
    W1, b1 = mlp[0].weight.detach(), mlp[0].bias.detach()
    W2, b2 = mlp[2].weight.detach(), mlp[2].bias.detach()
    W3, b3 = mlp[4].weight.detach(), mlp[4].bias.detach()
    x = sphere(10, 16, 0.5, seed=8).to(dtype)
    psi1 = _prf(G1, W1) * torch.exp(b1)[:, None]  # Ψ_1(W_1, b_1)
    V2 = W2 @ psi1
    psi2 = _prf(G2, V2) * torch.exp(b2)[:, None]  # Ψ_2(V_2, b_2)
    u2 = _prf(G2, _prf(G1, x))  # Φ_2(Φ_1(x))
    explicit = u2 @ (W3 @ psi2).T + b3
    got = net(x).detach()
    assert float((got - explicit).abs().max() / explicit.abs().max()) < tol
    # V_2 Φ_1(x) = W_2 (Ψ_1(W_1) Φ_1(x)): layer 2 sees the SNNK-ed layer 1 through features.
    phi1 = _prf(G1, x)
    lhs, rhs = phi1 @ V2.T, (phi1 @ psi1.T) @ W2.T
    assert float((lhs - rhs).abs().max() / rhs.abs().max()) < tol


def test_item15_bundling_converges():
    mlp = _stack(F64, final=False)
    with torch.no_grad():
        mlp[0].bias.zero_()
        mlp[2].bias.zero_()
    x = sphere(64, 16, 0.5, seed=9)
    exact = mlp(x).detach()

    def rel_mse(m):
        errs = []
        for seed in range(3):
            net = bundle(mlp, m, {Exp: "exp"}, seed=seed)
            errs.append(float(((net(x).detach() - exact) / exact).square().mean()))
        return np.mean(errs)

    small, big = rel_mse(64), rel_mse(1024)
    assert big < 6e-3 and big * 10 < small, (small, big)


def test_relu_mlp_bundles_and_counts_parameters():
    mlp = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )
    net = bundle(mlp, 32, seed=0)
    assert isinstance(net, BundledNetwork)
    assert net.source_parameters == sum(p.numel() for p in mlp.parameters())
    assert net.num_parameters == 2 * 32 + 2
    assert len(list(net.tower.parameters())) == 0  # the input tower is random only
    assert net(torch.randn(7, 20)).shape == (7, 2)
    assert "parameters before bundling" in repr(net)


def test_bundle_rejects_other_stacks():
    with pytest.raises(ValueError, match="Linear → activation"):
        bundle(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1)))
    with pytest.raises(TypeError, match="Sequential"):
        bundle(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="widths"):
        bundle(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), num_features=[4, 4])


@pytest.mark.parametrize("activation", ["relu", "exp"])
def test_forward_never_reads_values_to_the_host(activation):
    # As SNNKLinear and torch.nn layers: shapes are checked, values are not.
    net = BundledNetwork(6, [16, 8], activation, 3, seed=0)
    with torch.no_grad():
        net.weight.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 6, requires_grad=True)
    assert host_reads(lambda: net(x).sum().backward()) == 0
    assert torch.isnan(net(torch.full((2, 6), float("nan")))).all()
    with pytest.raises(ValueError, match="last dimension"):
        net(torch.randn(2, 7))


# -- sampler=, reset_parameters / meta device, resample, mismatched stacks ----------------------
def test_sampler_and_the_deprecated_orthogonal():
    net = BundledNetwork(6, [8, 4], "relu", 3, sampler="iid", seed=0)
    assert net.sampler == "iid" and all(m.maps.sampler == "iid" for m in net.tower)
    with pytest.warns(FutureWarning, match="sampler='iid'"):
        old = BundledNetwork(6, [8, 4], "relu", 3, orthogonal=False, seed=0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, old.state_dict()[k]), k
    mlp = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(FutureWarning, match="bundle"):
        a = bundle(mlp, 16, orthogonal=False, seed=0)
    b = bundle(mlp, 16, sampler="iid", seed=0)
    assert torch.equal(a.weight, b.weight) and a.sampler == "iid"


def test_meta_then_to_empty_then_reset_equals_a_direct_build():
    ref = BundledNetwork(6, [8, 4], ["relu", "exp"], 3, seed=2)
    with torch.device("meta"):
        net = BundledNetwork(6, [8, 4], ["relu", "exp"], 3, seed=2)
    assert all(t.is_meta for t in net.state_dict().values())
    net.to_empty(device="cpu")
    net.reset_parameters()
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


def test_resample_redraws_the_tower_and_keeps_u():
    net = bundle(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)), 16, seed=0)
    u = net.weight.detach().clone()
    g = net.tower[0].maps.projection.weight.clone()
    net.resample(7)
    assert net.seed == 7 and torch.equal(net.weight, u)
    assert not torch.equal(net.tower[0].maps.projection.weight, g)
    net.reset_parameters()
    assert torch.equal(net.weight, torch.zeros_like(u))


def test_bundle_names_layers_that_do_not_chain():
    with pytest.raises(
        ValueError, match=r"Linear layer 1 takes 5 inputs but Linear layer 0 gives 4"
    ):
        bundle(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2), nn.ReLU()))
    with pytest.raises(ValueError, match=r"Linear layer 2 takes 3 inputs"):
        bundle(
            nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(3, 1))
        )
    with pytest.raises(TypeError, match="activation_map must be a dict"):
        bundle(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), activation_map="relu")
    with pytest.raises(TypeError, match="num_features must be an int or a sequence"):
        bundle(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), num_features=4.0)
