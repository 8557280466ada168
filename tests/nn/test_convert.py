"""Model conversion (issue #16 item 4): linearize / unlinearize bit for bit, BERT and GPT-2,
save / load, fit_attention. Tiny random-config models only: nothing is downloaded."""

import pytest
import torch
from torch import nn

from snnk.nn.convert import (
    feature_parameters,
    fit_attention,
    linearize,
    linearize_config,
    load_linearized,
    save_linearized,
    unlinearize,
)
from tests.nn import tiny_models

transformers = pytest.importorskip("transformers")
METHODS = ["favor+", "nystrom", "hermite", "softmax-free", "linear", "hybrid", "hedgehog"]


def tiny_bert(seed: int = 0, spiky: bool = False):
    return tiny_models.tiny_bert(seed, spiky=spiky)


def tiny_bert_eager(seed: int = 0):
    """Eager attention: the model builds float additive masks instead of SDPA's bool ones."""
    model = tiny_bert(seed)
    model.set_attn_implementation("eager")
    return model


def tiny_gpt2(seed: int = 0):
    return tiny_models.tiny_gpt2(seed, bos_token_id=1, eos_token_id=2)


def batch(n: int = 3, length: int = 24, seed: int = 1, pad: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (n, length), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[0, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def run(model, inputs) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, state) -> bool:
    now = model.state_dict()
    return list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("make", [tiny_bert, tiny_bert_eager, tiny_gpt2])
def test_exact_window_equals_softmax_and_unlinearize_is_bit_exact(make):
    model, x = make(), batch()
    base, state = run(model, x), snapshot(model)
    modules = dict(model.named_modules())
    linearize(model, "hybrid", window=64, num_features=8)  # window >= L: exact attention
    assert len(linearize_config(model).layers) == 2
    got = run(model, x)
    keep = x["attention_mask"].bool()
    assert torch.allclose(got[keep], base[keep], atol=1e-5)
    unlinearize(model)
    assert torch.equal(run(model, x), base)
    assert same_state(model, state)
    assert all(modules[n] is m for n, m in model.named_modules())
    attention = [m for m in modules.values() if hasattr(m, "_snnk_original_config")]
    assert attention == []


def test_every_method_converts_bert_and_changes_the_output():
    model, x = tiny_bert(spiky=True), batch()
    base = run(model, x)
    keep = x["attention_mask"].bool()
    for method in METHODS:
        kw = {"window": 4} if method == "hybrid" else {}
        linearize(model, method, num_features=10, **kw)
        got = run(model, x)
        assert torch.isfinite(got).all(), method
        assert not torch.allclose(got[keep], base[keep], atol=1e-4), method
        unlinearize(model)
        assert torch.equal(run(model, x), base)


def test_gpt2_stays_causal_and_rejects_cached_decoding():
    model, x = tiny_gpt2(), batch(pad=False)
    linearize(model, "hybrid", window=4, num_features=8)
    out = run(model, x)
    changed = dict(x, input_ids=x["input_ids"].clone())
    changed["input_ids"][:, 15] = 5
    new = run(model, changed)
    # rounding-level only: the hybrid's far-key shift is shared by all keys (see report)
    assert torch.allclose(new[:, :15], out[:, :15], rtol=0, atol=1e-6)
    assert (new[:, 15:] - out[:, 15:]).abs().max() > 1e-3
    cache = model(input_ids=x["input_ids"][:, :8], use_cache=True).past_key_values
    with pytest.raises(ValueError, match="use_cache=False"):
        model(input_ids=x["input_ids"][:, 8:9], cache=cache)
    with pytest.raises(ValueError, match="causal"):
        linearize(tiny_gpt2(), "nystrom")


def test_layers_subset_only_converts_those():
    model, x = tiny_bert(spiky=True), batch()
    base = run(model, x)
    linearize(model, "hedgehog", num_features=8, layers=[1])
    assert linearize_config(model).layers == ("encoder.layer.1.attention.self",)
    assert not hasattr(model.encoder.layer[0].attention.self, "snnk_attention")
    assert not torch.allclose(run(model, x), base)
    unlinearize(model)
    assert torch.equal(run(model, x), base)


def test_save_load_round_trip_and_damaged_files(tmp_path):
    model, x = tiny_bert(spiky=True), batch()
    linearize(model, "hybrid", window=4, num_features=8, seed=3)
    with torch.no_grad():
        for p in feature_parameters(model):
            p.add_(0.01)  # as if trained
    want = run(model, x)
    folder = save_linearized(model, tmp_path / "conv")
    fresh = load_linearized(tiny_bert(spiky=True), folder)
    assert torch.equal(run(fresh, x), want)
    assert linearize_config(fresh) == linearize_config(model)
    # the whole model (after fine-tuning it converted)
    with torch.no_grad():
        model.pooler.dense.bias.add_(1.0)
    want = run(model, x)
    full = save_linearized(model, tmp_path / "full", include_model=True)
    assert torch.equal(run(load_linearized(tiny_bert(spiky=True), full), x), want)

    weights, config = folder / "snnk_linearized.safetensors", folder / "snnk_linearized.json"
    good_w, good_c = weights.read_bytes(), config.read_text()
    damages = [
        lambda: weights.write_bytes(good_w[:100]),
        lambda: weights.write_bytes(good_w[:-2] + b"\x01\x02"),
        lambda: config.write_text("{"),
        lambda: config.write_text(good_c.replace('"hybrid"', '"hybridd"')),
        lambda: config.write_text(good_c.replace('"num_features": 8', '"num_features": 0')),
    ]
    for damage in damages:
        damage()
        target = tiny_bert(spiky=True)
        state = snapshot(target)
        with pytest.raises(ValueError):
            load_linearized(target, folder)
        assert same_state(target, state)
        assert "_snnk_linearized" not in target.__dict__
        weights.write_bytes(good_w)
        config.write_text(good_c)
    with pytest.raises(ValueError, match="model_type"):
        load_linearized(tiny_gpt2(), folder)


def test_fit_attention_lowers_error_changes_only_feature_maps(one_thread):
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 97, (2, 32), generator=g)} for _ in range(4)]
    results = []
    for _ in range(2):  # seed-deterministic
        model = tiny_bert(spiky=True)
        linearize(model, "hybrid", window=4, num_features=8)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        flags = [p.requires_grad for p in model.parameters()]
        report = fit_attention(model, batches, max_steps=20, lr=3e-2, verbose=False)
        after = model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(".snnk_attention.feature_map." in k for k in changed)
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(f.error_after < 0.9 * f.error_before for f in report.layers), str(report)
        results.append([f.error_after for f in report.layers])
    assert results[0] == results[1]


def test_hostile_arguments():
    model = tiny_bert()
    with pytest.raises(ValueError, match="method must be one of"):
        linearize(model, "performer")
    with pytest.raises(ValueError, match="window applies to method='hybrid'"):
        linearize(model, "favor+", window=8)
    with pytest.raises(ValueError, match="window"):
        linearize(model, "hybrid", window=-1)
    with pytest.raises(ValueError, match="layers"):
        linearize(model, "hybrid", layers=[5])
    with pytest.raises(TypeError, match="layers"):
        linearize(model, "hybrid", layers=1)
    with pytest.raises(TypeError, match="scale"):
        linearize(model, "hybrid", scale=0.1)
    with pytest.raises(ValueError, match="no self-attention"):
        linearize(nn.Sequential(nn.Linear(3, 3)), "hybrid")
    with pytest.raises(ValueError, match="not linearized"):
        unlinearize(model)
    assert "_snnk_linearized" not in model.__dict__
    linearize(model, "favor+", num_features=8)
    with pytest.raises(ValueError, match="linearized already"):
        linearize(model, "hybrid")
    with pytest.raises(ValueError, match="method='hybrid' or 'hedgehog'"):
        fit_attention(model, [batch(), batch()])
    unlinearize(model)
    linearize(model, "hybrid", window=4, num_features=8)
    with pytest.raises(ValueError, match="at least 2"):
        fit_attention(model, [batch(n=1)])
    with pytest.raises(ValueError, match="empty"):
        fit_attention(model, [])
    with pytest.raises(ValueError, match="loss"):
        fit_attention(model, [batch()], loss="kl")
    with pytest.raises(ValueError, match="val_fraction"):
        fit_attention(model, [batch(), batch()], val_fraction=1.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_half_and_double_models(dtype):
    model, x = tiny_bert(spiky=True), batch()
    linearize(model, "hybrid", window=4, num_features=8)
    want = run(model, x)
    unlinearize(model)
    model = model.to(dtype)
    linearize(model, "hybrid", window=4, num_features=8)
    got = run(model, x)
    assert got.dtype == dtype and torch.isfinite(got).all()
    tol = 1e-5 if dtype == torch.float64 else 0.15
    assert torch.allclose(got.float(), want, atol=tol, rtol=0)


def test_snapped_far_field_converts_fits_saves_and_unloads(tmp_path, one_thread):
    """far_kernel="nystrom": every layer holds a trainable LearnedSnapMap, fit_attention trains
    only it (here from far keys weighed e^-2 too little, which it must undo), save / load
    round-trips it bit for bit and unlinearize restores the exact model."""
    from snnk.nn.attention.learned import LearnedSnapMap
    from snnk.nn.convert.linearize import cores

    model, x = tiny_bert(spiky=True), batch()
    base, state = run(model, x), snapshot(model)
    linearize(model, "hybrid", window=4, num_features=6, far_kernel="nystrom")
    maps = [core.feature_map for _, core in cores(model)]
    assert all(isinstance(m, LearnedSnapMap) and m.num_landmarks == 6 for m in maps)
    assert all(m.value_rank == 4 for m in maps)
    assert len(feature_parameters(model)) == 4 * len(maps)
    untrained = run(model, x)
    keep = x["attention_mask"].bool()
    assert torch.isfinite(untrained).all()
    assert not torch.allclose(untrained[keep], base[keep], atol=1e-4)

    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 97, (2, 32), generator=g)} for _ in range(4)]
    with torch.no_grad():
        for m in maps:
            m.bias.fill_(-2.0)
    before = snapshot(model)
    report = fit_attention(model, batches, max_steps=15, lr=0.1, verbose=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".snnk_attention.feature_map." in k for k in changed)
    assert all(f.error_after < 0.7 * f.error_before for f in report.layers), str(report)
    trained = run(model, x)
    assert not torch.equal(trained, untrained)

    folder = save_linearized(model, tmp_path / "snap")
    fresh = load_linearized(tiny_bert(spiky=True), folder)
    assert linearize_config(fresh) == linearize_config(model)
    assert linearize_config(fresh).attention_kwargs == {"far_kernel": "nystrom"}
    assert torch.equal(run(fresh, x), trained)
    assert same_state(fresh, model.state_dict())

    unlinearize(model)
    assert torch.equal(run(model, x), base)
    assert same_state(model, state)

    linearize(model, "hybrid", window=4, num_features=6, far_kernel="nystrom", value_rank=0)
    assert all(core.feature_map.value_rank == 0 for _, core in cores(model))
    unlinearize(model)
    with pytest.raises(ValueError, match="far_kernel='nystrom' is bidirectional"):
        linearize(tiny_gpt2(), "hybrid", window=4, far_kernel="nystrom")
    with pytest.raises(ValueError, match="far_kernel"):
        linearize(model, "hybrid", far_kernel="taylor")
    with pytest.raises(ValueError, match="value_rank"):
        linearize(model, "hybrid", value_rank=2)
    with pytest.raises(ValueError, match="far_kernel applies"):
        linearize(model, "favor+", far_kernel="nystrom")
    assert "_snnk_linearized" not in model.__dict__
