"""SNNKLinear's life cycle and hostile input: sampler=, reset_parameters / meta device,
resample, state dicts of another size, Fourier kinds at large input norms, snnkify all or
nothing, torch.compile (issue #14 names, issue #15 items 2 and 6)."""

import copy
import math

import pytest
import torch
from torch import nn

from snnk.features import SpectralMeasure, VarianceWarning
from snnk.nn import SNNKLinear, SNNKMaps, snnkify
from tests.nn.test_snnk_linear import _mlp

ACTS = ["relu", "exp", "cos", "sin", "gaussian"]
FOURIER = ["cos", "sin", "gaussian"]


def _kw(activation):
    """Arguments under which every kind is well posed (small inputs, a safe split)."""
    return {"input_norm": 0.5, **({"split": 0.5} if activation == "gaussian" else {})}


def _state(model: nn.Module) -> dict:
    """Everything that must survive a failed call bit for bit."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "types": [(n, type(m)) for n, m in model.named_modules()],
        "grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["types"] == b["types"] and a["grad"] == b["grad"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for k, v in a["tensors"].items():  # bit for bit (NaN included)
        w = b["tensors"][k]
        assert v.dtype == w.dtype and v.shape == w.shape, k
        assert torch.equal(v.contiguous().view(torch.uint8), w.contiguous().view(torch.uint8)), k


# -- sampler= and the deprecated orthogonal= ----------------------------------------------------
@pytest.mark.parametrize("sampler", ["iid", "orthogonal", "qmc"])
def test_sampler_reaches_the_projection(sampler):
    layer = SNNKLinear(6, 4, 16, "exp", sampler=sampler, seed=0)
    assert layer.sampler == sampler == layer.towers.maps.projection.sampler
    with pytest.raises(ValueError, match="sampler"):
        SNNKLinear(6, 4, 16, sampler="sobolev", seed=0)


def test_orthogonal_is_a_deprecated_alias_of_sampler():
    new = SNNKLinear(6, 4, 16, "relu", sampler="iid", seed=1)
    with pytest.warns(FutureWarning, match="sampler='iid'"):
        old = SNNKLinear(6, 4, 16, "relu", orthogonal=False, seed=1)
    with pytest.warns(FutureWarning, match="orthogonal"):  # the old positional slot
        positional = SNNKLinear(6, 4, 16, "relu", True, "direct", False, seed=1)
    assert old.sampler == positional.sampler == "iid"
    for k, v in new.state_dict().items():
        assert torch.equal(v, old.state_dict()[k]) and torch.equal(v, positional.state_dict()[k])
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="sampler= only"):
        SNNKLinear(6, 4, 16, sampler="qmc", orthogonal=True, seed=1)
    with pytest.warns(FutureWarning, match="SNNKMaps"):
        assert SNNKMaps("relu", 6, 8, orthogonal=True, seed=0).sampler == "orthogonal"


# -- reset_parameters, the meta device, resample ------------------------------------------------
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("mode", ["direct", "weights"])
def test_meta_then_to_empty_then_reset_equals_a_direct_build(activation, mode):
    ref = SNNKLinear(6, 5, 8, activation, mode=mode, seed=3, **_kw(activation))
    with torch.device("meta"):
        layer = SNNKLinear(6, 5, 8, activation, mode=mode, seed=3, **_kw(activation))
    assert all(t.is_meta for t in layer.state_dict().values())
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert layer.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(layer.state_dict()[k], v), k
    x = 0.3 * torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer(x), ref(x))


def test_reset_parameters_writes_in_place_and_redraws_everything():
    layer = SNNKLinear(6, 5, 8, "relu", seed=2)
    built = copy.deepcopy(layer.state_dict())
    psi = layer.psi
    with torch.no_grad():
        layer.psi.mul_(3.0)
    layer.towers.maps.projection.weight.zero_()
    layer.reset_parameters()
    assert layer.psi is psi  # an optimiser holding it keeps working
    for k, v in built.items():
        assert torch.equal(layer.state_dict()[k], v), k


@pytest.mark.parametrize("mode", ["direct", "weights"])
def test_resample_redraws_the_tower_and_keeps_the_parameters(mode):
    layer = SNNKLinear(6, 5, 16, "exp", mode=mode, seed=0, input_norm=0.5).eval()
    params = {n: p.detach().clone() for n, p in layer.named_parameters()}
    g0 = layer.towers.maps.projection.weight.clone()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    y0 = layer(x)
    layer.resample(11)
    assert layer.seed == 11 and not torch.equal(layer.towers.maps.projection.weight, g0)
    assert all(torch.equal(p, params[n]) for n, p in layer.named_parameters())
    assert not torch.equal(layer(x), y0)  # weights mode: the cached Ψ followed the new draw
    twin = SNNKLinear(6, 5, 16, "exp", mode=mode, seed=0, input_norm=0.5)
    twin.resample(11)
    assert torch.equal(twin.towers.maps.projection.weight, layer.towers.maps.projection.weight)
    layer.resample()  # a seed from the operating system, recorded
    assert isinstance(layer.seed, int)


# -- state dicts of another size ----------------------------------------------------------------
def test_state_dict_of_another_size_names_the_key_and_changes_nothing():
    layer = SNNKLinear(6, 5, 16, "relu", seed=0)
    before = _state(layer)
    bigger = SNNKLinear(6, 5, 32, "relu", seed=1).state_dict()
    with pytest.raises(ValueError, match=r"'psi'.*\(5, 32\).*\(5, 16\)"):
        layer.load_state_dict(bigger)
    _assert_same(before, _state(layer))
    # inside a bigger model the key carries the model's prefix
    model = nn.Sequential(nn.Linear(3, 6), layer)
    state = {f"1.{k}": v for k, v in bigger.items()} | {
        "0.weight": torch.zeros(6, 3),
        "0.bias": torch.zeros(6),
    }
    with pytest.raises(ValueError, match=r"'1\.towers\.maps\.projection\.weight'|'1\.psi'"):
        model.load_state_dict(state)
    _assert_same(before, _state(layer))


# -- Fourier kinds at large input norms (issue #15 item 2) --------------------------------------
@pytest.mark.parametrize("activation", FOURIER)
def test_fourier_kinds_without_input_norm_warn_with_the_fix(activation):
    with pytest.warns(VarianceWarning, match=r"without input_norm.*overflows.*input_norm=1\.0"):
        SNNKLinear(16, 8, 64, activation, seed=0)


@pytest.mark.parametrize("activation", FOURIER)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fourier_kinds_are_finite_at_large_norms_with_input_norm(activation, dtype):
    kw = {"split": 0.5} if activation == "gaussian" else {}
    layer = SNNKLinear(16, 8, 64, activation, seed=0, input_norm=1.0, dtype=dtype, **kw)
    x = torch.randn(5, 16, dtype=dtype, generator=torch.Generator().manual_seed(0))
    x = 30.0 * x / x.norm(dim=-1, keepdim=True)
    assert torch.isfinite(layer(x)).all()


def test_an_input_norm_that_overflows_raises_and_one_that_explodes_warns():
    with pytest.raises(ValueError, match=r"input_norm=30.*overflow.*float32"):
        SNNKLinear(16, 8, 64, "cos", seed=0, input_norm=30.0)
    with pytest.warns(VarianceWarning, match="explodes"):  # e^450 fits in float64: a warning
        SNNKLinear(16, 8, 64, "cos", seed=0, input_norm=30.0, dtype=torch.float64)
    with pytest.warns(VarianceWarning, match="infinite"):
        SNNKLinear(16, 8, 64, "gaussian", seed=0, input_norm=1.0)  # E[e^{ω²}] diverges
    for activation in ("relu", "exp"):  # cannot overflow from finite inputs: no warning
        layer = SNNKLinear(16, 8, 64, activation, seed=0)
        x = torch.full((2, 16), 30.0 / 4.0)
        assert torch.isfinite(layer(x)).all()


# -- snnkify: clear errors, all or nothing (issue #15 item 6) -----------------------------------
def test_snnkify_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module.*got str"):
        snnkify("mlp")
    with pytest.raises(TypeError, match="activation_map must be a dict"):
        snnkify(_mlp(), [nn.ReLU])
    with pytest.raises(TypeError, match="activation_map keys"):
        snnkify(_mlp(), {"relu": "relu"})
    with pytest.raises(ValueError, match=r"activation_map\[ReLU\]"):
        snnkify(_mlp(), {nn.ReLU: "tanh"})
    with pytest.raises(TypeError, match="num_features must be an int or a sequence"):
        snnkify(_mlp(), num_features="64")
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        snnkify(_mlp(), num_features=[16, 0])
    with pytest.raises(TypeError, match="filter must be a callable"):
        snnkify(_mlp(), filter=True)


def test_snnkify_that_fails_half_way_leaves_the_model_unchanged():
    model = _mlp()
    with torch.no_grad():
        model[2][0].weight[0, 0] = float("nan")  # the second pair cannot be converted
    before = _state(model)
    with pytest.raises(ValueError, match="NaN"):
        snnkify(model, num_features=16, seed=0)
    _assert_same(before, _state(model))

    def fail_on_second(name, linear):
        if name != "0":
            raise RuntimeError("filter failed")
        return True

    model = _mlp()
    before = _state(model)
    with pytest.raises(RuntimeError, match="filter failed"):
        snnkify(model, num_features=16, filter=fail_on_second)
    _assert_same(before, _state(model))
    with pytest.raises(ValueError, match="one entry per"):
        snnkify(model, num_features=[16])
    _assert_same(before, _state(model))


def test_snnkify_plan_matches_the_old_visiting_order():
    shared = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), shared, shared, nn.Linear(16, 2))
    snnkify(model, num_features=[12, 10], seed=5)
    layers = [m for m in model.modules() if isinstance(m, SNNKLinear)]
    assert [m.num_features for m in layers] == [12, 10] and [m.seed for m in layers] == [5, 6]
    assert model(torch.randn(3, 8)).shape == (3, 2)


# -- torch.compile ------------------------------------------------------------------------------
def _can_compile() -> bool:
    try:
        torch.compile(lambda t: t + 1, backend="aot_eager", fullgraph=True)(torch.ones(1))
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _can_compile(), reason="torch.compile does not run on this platform")
@pytest.mark.parametrize("activation", ACTS)
def test_compiles_fullgraph_forward_and_backward(activation):
    # aot_eager traces forward and backward (dynamo + AOTAutograd, where graph breaks and
    # host reads show up) without paying for Inductor's code generation.
    torch._dynamo.reset()
    layer = SNNKLinear(6, 5, 8, activation, seed=0, **_kw(activation))
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    y = compiled(x)
    y.square().sum().backward()
    grad = layer.psi.grad.clone()
    layer.psi.grad = None
    layer(x).square().sum().backward()
    torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(grad, layer.psi.grad)


def test_measure_activation_still_builds():
    class Unit(SpectralMeasure):
        def sample(self, n, generator):
            return torch.ones(n, dtype=torch.float64)

        def log_second_moment(self, t):
            return t

    layer = SNNKLinear(4, 3, 8, Unit(torch.cos), seed=0, input_norm=0.5)
    assert torch.isfinite(layer(torch.randn(2, 4))).all() and math.isfinite(layer.flops()["snnk"])
