"""Named adapters at PEFT's level (issue #16 item 5): config, target_modules, switching,
disabling, deleting, unloading bit for bit, save_pretrained / from_pretrained, PEFT LoRA
beside them. Tiny random models only: nothing is downloaded."""

import copy
import json

import pytest
import torch
from torch import nn

from snnk.nn.adapters import (
    AdapterConfig,
    active_adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    enable_adapters,
    from_pretrained,
    list_adapters,
    save_pretrained,
    set_adapter,
    trainable_parameters,
    unload_adapters,
)
from tests.nn import tiny_models

transformers = pytest.importorskip("transformers")


def tiny_bert(seed: int = 0):
    return tiny_models.tiny_bert(seed, positions=40, head="classification")


def tiny_gpt2(seed: int = 0):
    return tiny_models.tiny_gpt2(seed, positions=40)


def batch(n: int = 3, length: int = 9, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def out(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


def perturb(model, name: str, scale: float = 0.5, seed: int = 3) -> None:
    """Give adapter ``name`` non-zero gates, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if f"adapters.{name}." in key and key.endswith("gate"):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, state) -> None:
    now = model.state_dict()
    assert list(now) == list(state)
    assert all(torch.equal(now[k], state[k]) for k in state)


def test_builtin_placement_identity_at_start_and_unload_bit_exact():
    model, x = tiny_bert(), batch()
    before, state = out(model, x), snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    add_adapter(model, AdapterConfig(num_features=4, seed=0))
    assert torch.equal(out(model, x), before)  # zero gates: the identity
    # 2 blocks x 2 sites x (32*4 + 32) + head (32*2 + 2 + pooler is in the base)
    assert trainable_parameters(model) == 4 * (32 * 4 + 32) + 32 * 2 + 2
    perturb(model, "default")
    assert not torch.allclose(out(model, x), before)
    unload_adapters(model)
    assert torch.equal(out(model, x), before)
    assert_same_state(model, state)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not any("snnk" in k for k in model.state_dict())
    with pytest.raises(ValueError, match="add_adapter"):
        set_adapter(model, "default")


def test_named_adapters_switch_disable_delete():
    model, x = tiny_bert(), batch()
    base = out(model, x)
    add_adapter(model, AdapterConfig(num_features=4, seed=0), "a")
    add_adapter(model, AdapterConfig(target_modules=["query", "value"], seed=5), "b")
    assert active_adapters(model) == ("a",)
    assert sorted(list_adapters(model)) == ["a", "b"]
    perturb(model, "a", seed=1)
    perturb(model, "b", seed=2)
    out_a = out(model, x)
    set_adapter(model, "b")
    out_b = out(model, x)
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_b, base)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".adapters.b." in n for n in trains)
    assert not any(".adapters.a." in n for n in trains)
    with disable_adapters(model):
        assert torch.equal(out(model, x), base)
        assert active_adapters(model) == ()
    assert torch.equal(out(model, x), out_b)
    disable_adapters(model)
    assert torch.equal(out(model, x), base)
    enable_adapters(model)
    set_adapter(model, ["a", "b"])  # both, a then b
    both = out(model, x)
    assert not torch.allclose(both, out_a) and not torch.allclose(both, out_b)
    delete_adapter(model, "b")
    assert active_adapters(model) == ("a",)
    assert torch.equal(out(model, x), out_a)
    delete_adapter(model, "a")  # the last one: the base model
    assert torch.equal(out(model, x), base)


def test_target_modules_on_models_outside_the_builtin_five():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(5, 6)
    before, state = seq(x), snapshot(seq)
    add_adapter(seq, AdapterConfig(target_modules=["0"], num_features=4))
    assert trainable_parameters(seq) == 16 * 4 + 16
    perturb(seq, "default")
    assert not torch.allclose(seq(x), before)
    unload_adapters(seq)
    assert torch.equal(seq(x), before)
    assert_same_state(seq, state)

    gpt, ids = tiny_gpt2(), {"input_ids": batch()["input_ids"]}
    before = out(gpt, ids)
    add_adapter(gpt, AdapterConfig(target_modules=r".*mlp\.c_proj", num_features=4, seed=1))
    names = [n for n, _ in gpt.named_modules() if n.endswith("snnk_adapters")]
    assert names == [f"transformer.h.{i}.mlp.c_proj.snnk_adapters" for i in range(2)]
    assert torch.equal(out(gpt, ids), before)
    perturb(gpt, "default")
    assert not torch.allclose(out(gpt, ids), before)
    unload_adapters(gpt)
    assert torch.equal(out(gpt, ids), before)


def test_save_pretrained_round_trip_and_damaged_files(tmp_path):
    model, x = tiny_bert(), batch()
    add_adapter(model, AdapterConfig(num_features=4, seed=0), "a")
    add_adapter(model, AdapterConfig(target_modules=r".*attention\.self\.query", seed=7), "b")
    perturb(model, "a", seed=1)
    perturb(model, "b", seed=2)
    set_adapter(model, ["b", "a"])
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    want = out(model, x)
    folder = save_pretrained(model, tmp_path / "ad")
    assert sorted(p.name for p in folder.iterdir()) == ["a", "b", "snnk_adapters_index.json"]
    fresh = tiny_bert()
    from_pretrained(fresh, folder)
    assert active_adapters(fresh) == ("b", "a")
    assert torch.equal(out(fresh, x), want)
    assert list_adapters(fresh)["b"].target_modules == r".*attention\.self\.query"
    # one subfolder, renamed
    one = from_pretrained(tiny_bert(), folder / "b", adapter_name="only_b")
    assert active_adapters(one) == ("only_b",)

    weights = folder / "a" / "snnk_adapter_model.safetensors"
    config = folder / "a" / "snnk_adapter_config.json"
    good_w, good_c = weights.read_bytes(), config.read_text()
    damages = {
        "truncated": lambda: weights.write_bytes(good_w[: len(good_w) // 2]),
        "edited": lambda: weights.write_bytes(good_w[:-4] + b"\x00\x00\x80\x7f"),
        "bad json": lambda: config.write_text(good_c[:-10]),
        "bad key": lambda: config.write_text(
            good_c.replace('"num_features": 4', '"num_features": -4')
        ),
        "newer": lambda: config.write_text(
            good_c.replace('"format_version": 1', '"format_version": 9')
        ),
    }
    for what, damage in damages.items():
        damage()
        target = tiny_bert()
        state = snapshot(target)
        with pytest.raises(ValueError):
            from_pretrained(target, folder)
        assert_same_state(target, state)  # all or nothing
        assert "_snnk_named_adapters" not in target.__dict__, what
        weights.write_bytes(good_w)
        config.write_text(good_c)
    with pytest.raises(ValueError, match=r"lacks the target layers|model_type"):
        from_pretrained(tiny_gpt2(), folder / "a")
    with pytest.raises(ValueError, match="not a folder written by snnk"):
        from_pretrained(tiny_bert(), tmp_path)


def test_coexists_with_peft_lora():
    peft = pytest.importorskip("peft")
    model, x = tiny_bert(), batch()
    base = out(model, x)
    add_adapter(model, AdapterConfig(target_modules=["output.dense"], num_features=4), "ours")
    perturb(model, "ours")
    ours_only = out(model, x)
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False
    )
    pm = peft.get_peft_model(model, lora)
    both = out(pm, x)
    assert not torch.allclose(both, ours_only)
    with pm.disable_adapter():
        assert torch.equal(out(pm, x), ours_only)
    with disable_adapters(model):
        lora_only = out(pm, x)
    assert not torch.allclose(lora_only, base) and not torch.allclose(lora_only, both)
    assert any("lora_A" in n for n, _ in pm.named_parameters())
    assert any("adapters.ours" in n for n, _ in pm.named_parameters())
    # our unload leaves PEFT's LoRA in place and working
    unload_adapters(model)
    assert torch.equal(out(pm, x), lora_only)
    # and adapters can target layers PEFT has wrapped (its lora_* layers are never targets)
    add_adapter(model, AdapterConfig(target_modules=["query"], num_features=4), "q")
    lora = [p for n, p in pm.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)  # PEFT's LoRA still trains
    hooked = [n for n, _ in pm.named_modules() if n.endswith("snnk_adapters")]
    assert hooked and all("lora_" not in n for n in hooked)
    assert torch.equal(out(pm, x), lora_only)


def test_deepcopy_keeps_adapters_working():
    model, x = tiny_bert(), batch()
    add_adapter(model, AdapterConfig(num_features=4))
    perturb(model, "default")
    twin = copy.deepcopy(model)
    assert torch.equal(out(twin, x), out(model, x))
    unload_adapters(twin)
    assert not torch.equal(out(twin, x), out(model, x))


def test_hostile_arguments(tmp_path):
    model = tiny_bert()
    with pytest.raises(ValueError, match="target_modules"):
        add_adapter(model, AdapterConfig(target_modules=["no_such_layer"]))
    with pytest.raises(ValueError, match="not linear layers"):
        add_adapter(model, AdapterConfig(target_modules=["LayerNorm"]))
    with pytest.raises(ValueError, match="regular expression"):
        AdapterConfig(target_modules="(")
    with pytest.raises(ValueError, match="target_modules"):
        AdapterConfig(target_modules=[])
    with pytest.raises(TypeError, match="target_modules"):
        AdapterConfig(target_modules=3)
    with pytest.raises(ValueError, match="num_features"):
        AdapterConfig(num_features=0)
    with pytest.raises(ValueError, match="activation"):
        AdapterConfig(activation="tanhh")
    with pytest.raises(TypeError, match="config"):
        add_adapter(model, {"num_features": 4})
    with pytest.raises(ValueError, match="adapter_name"):
        add_adapter(model, AdapterConfig(), "a.b")
    with pytest.raises(ValueError, match="target_modules"):
        add_adapter(nn.Sequential(nn.Linear(2, 2)), AdapterConfig())
    with pytest.raises(ValueError, match="wrapped"):
        add_adapter(nn.DataParallel(model), AdapterConfig())
    assert "_snnk_named_adapters" not in model.__dict__  # nothing half-added
    add_adapter(model, AdapterConfig(num_features=4), "a")
    with pytest.raises(ValueError, match="exists already"):
        add_adapter(model, AdapterConfig(num_features=4), "a")
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        set_adapter(model, "nope")
    with pytest.raises(ValueError, match="no adapter named"):
        delete_adapter(model, "nope")
    with pytest.raises(ValueError, match="adapter_names"):
        save_pretrained(model, tmp_path / "x", adapter_names=["nope"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        save_pretrained(model, tmp_path / "file")
    folder = save_pretrained(model, tmp_path / "ok")
    index = folder / "snnk_adapters_index.json"
    index.write_text(
        json.dumps({"format": "snnk-named-adapters-index", "adapters": ["zz"], "active": []})
    )
    with pytest.raises(ValueError, match="not a folder written by snnk"):
        from_pretrained(tiny_bert(), folder)
    with pytest.raises(ValueError, match="exists already"):
        from_pretrained(model, folder / "a")
