"""SNNK adapters and uptraining (issue #5; spec section 10 items 17-19).

Models are built from configs (tiny ones, and bert-base on the meta device for the exact
parameter counts): nothing is downloaded.
"""

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from snnk.nn import (
    SNNKAdapter,
    SNNKLinear,
    adapter_state_dict,
    add_adapters,
    load_adapters,
    save_adapters,
    trainable_parameters,
    uptrain,
)

transformers = pytest.importorskip("transformers")

TINY = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}


def tiny_bert(seed: int = 0, dropout: float = 0.1, model_type: str = "bert", **kw):
    """A 2-block BERT-family classifier with random weights drawn from ``seed``."""
    classes = {
        "bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
        "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
    }
    config_cls, model_cls = classes[model_type]
    config = config_cls(
        vocab_size=97,
        num_hidden_layers=2,
        max_position_embeddings=40,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=2,
        **TINY,
        **kw,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


def tiny_vit(seed: int = 0):
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_hidden_layers=2, num_labels=3, **TINY
    )
    torch.manual_seed(seed)
    return transformers.ViTForImageClassification(config).eval()


def tiny_distilbert(seed: int = 0):
    config = transformers.DistilBertConfig(
        vocab_size=97, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=40
    )
    torch.manual_seed(seed)
    return transformers.DistilBertForSequenceClassification(config).eval()


def token_batch(n: int = 3, length: int = 9, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def image_batch(n: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g)}


CASES = {
    "bert": (tiny_bert, token_batch),
    "roberta": (lambda: tiny_bert(model_type="roberta"), token_batch),
    "distilbert": (tiny_distilbert, token_batch),
    "vit": (tiny_vit, image_batch),
}


def bert_base_on_meta(kind: str = "bert"):
    """bert-base (hidden 768, 12 blocks, 109,482,240 parameters) without allocating it."""
    with torch.device("meta"):
        if kind == "vit":
            return transformers.ViTModel(transformers.ViTConfig())
        return transformers.BertModel(transformers.BertConfig())


def perturb_trainable(model, seed: int = 7) -> None:
    """Give every trainable tensor (gates included) a nonzero, seeded change."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# -- item 17: identity at initialisation ------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(CASES))
def test_identity_at_init(arch):
    build, batch = CASES[arch]
    model, inputs = build(), batch()
    with torch.no_grad():
        before = model(**inputs).logits
        add_adapters(model, num_features=4, seed=0)
        after = model(**inputs).logits
    assert torch.equal(before, after)


def test_identity_in_training_mode_with_dropout():
    model, inputs = tiny_bert(dropout=0.1).train(), token_batch()
    torch.manual_seed(3)
    before = model(**inputs).logits
    add_adapters(model, num_features=4, seed=0)
    torch.manual_seed(3)  # the adapters draw nothing, so dropout masks repeat exactly
    assert torch.equal(model(**inputs).logits, before)


# -- item 18: exact parameter counts ----------------------------------------------------------
@pytest.mark.parametrize(("num_features", "expected"), [(8, 165_888), (64, 1_198_080)])
def test_bert_base_adapter_counts(num_features, expected):
    model = bert_base_on_meta()
    add_adapters(model, num_features=num_features, seed=0)
    adapters = [m for m in model.modules() if isinstance(m, SNNKAdapter)]
    assert len(adapters) == 24
    assert all(sum(p.numel() for p in a.parameters()) == 768 * num_features + 768 for a in adapters)
    assert trainable_parameters(model) == expected  # BertModel: no head; pooler frozen


def test_bert_base_uptrain_removes_exactly():
    model = bert_base_on_meta()
    before = sum(p.numel() for p in model.parameters())
    report = uptrain(model, num_layers=6, num_features=16, seed=0)
    after = sum(p.numel() for p in model.parameters())
    assert before == 109_482_240 == report.parameters_before
    assert before - after == 13_879_296 == report.parameters_saved
    assert report.replaced == tuple(f"encoder.layer.{i}.intermediate.dense" for i in range(6, 12))
    layers = [model.encoder.layer[i].intermediate.dense for i in range(12)]
    assert not any(isinstance(m, SNNKLinear) for m in layers[:6])
    new = layers[6:]
    assert all(isinstance(m, SNNKLinear) and m.psi.shape == (3072, 16) for m in new)
    assert len({id(m) for m in new}) == 6 and len({id(m.psi) for m in new}) == 6
    assert "13,879,296 saved" in str(report)


def test_tiny_counts_placements_and_bottleneck():
    model = tiny_bert()
    add_adapters(model, num_features=4, placement="pfeiffer", seed=0)
    head = 32 * 2 + 2
    assert trainable_parameters(model) == 2 * (32 * 4 + 32) + head
    model = tiny_bert()
    add_adapters(model, num_features=4, bottleneck=8, seed=0)
    assert trainable_parameters(model) == 4 * (8 * 4 + 8 * 32 + 32) + head
    model = tiny_bert()
    add_adapters(model, num_features=4, train_head=False, train_pooler=True, seed=0)
    assert trainable_parameters(model) == 4 * (32 * 4 + 32) + 32 * 32 + 32


@pytest.mark.parametrize("arch", ["bert", "vit"])
def test_bottleneck_and_pfeiffer_keep_identity(arch):
    build, batch = CASES[arch]
    for kw in ({"bottleneck": 8}, {"placement": "pfeiffer"}):
        model, inputs = build(), batch()
        with torch.no_grad():
            before = model(**inputs).logits
            add_adapters(model, num_features=4, seed=0, **kw)
            assert torch.equal(model(**inputs).logits, before)


# -- item 19: placement and what trains -------------------------------------------------------
def test_only_adapters_and_head_train():
    model = tiny_bert()
    add_adapters(model, num_features=4, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".adapter." in n} | {
        "classifier.weight",
        "classifier.bias",
    }
    assert len([n for n in trainable if ".adapter." in n]) == 2 * 4  # gate and psi, 4 adapters
    assert all(not b.requires_grad for b in model.buffers())
    vit = tiny_vit()
    add_adapters(vit, num_features=4, seed=0)
    assert {n for n, p in vit.named_parameters() if p.requires_grad and ".adapter." not in n} == {
        "classifier.weight",
        "classifier.bias",
    }


def test_post_ln_bert_placement():
    """SelfOutput: LayerNorm(a(dropout(dense(h))) + residual), with a nonzero gate."""
    model = tiny_bert()
    add_adapters(model, num_features=4, seed=0)
    perturb_trainable(model)
    out = model.bert.encoder.layer[0].attention.output
    h, res = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    y = out.dense(h)
    a = out.dropout.adapter
    expected = out.LayerNorm(y + a.gate * a.down(y) + res)
    torch.testing.assert_close(out(h, res), expected)
    assert not torch.allclose(out(h, res), out.LayerNorm(y + res))


def test_pre_ln_vit_placement():
    """ViT block: h + a(attn(LN(h))), then h' + a(mlp(LN(h'))): no norm after the adapter."""
    model = tiny_vit()
    add_adapters(model, num_features=4, seed=0)
    perturb_trainable(model)
    block = model.vit.layers[0]
    h = torch.randn(2, 17, 32)
    attn = block.attention

    def adapt(adapter, z):
        return z + adapter.gate * adapter.down(z)

    with torch.no_grad():
        z = block.layernorm_before(h)
        q, k, v = (
            lin(z).view(2, 17, 4, 8).transpose(1, 2)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        ctx = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
        ctx = ctx.transpose(1, 2).reshape(2, 17, 32)
        lin = attn.o_proj
        h1 = h + adapt(lin.adapter, torch.nn.functional.linear(ctx, lin.weight, lin.bias))
        mlp = block.mlp
        f = mlp.fc2
        inner = mlp.activation_fn(mlp.fc1(block.layernorm_after(h1)))
        expected = h1 + adapt(f.adapter, torch.nn.functional.linear(inner, f.weight, f.bias))
        torch.testing.assert_close(block(h), expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_adapters_and_head():
    model = tiny_bert(dropout=0.0).train()
    add_adapters(model, num_features=4, seed=0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    inputs, labels = token_batch(4), torch.tensor([0, 1, 1, 0])
    adapters = [m for m in model.modules() if isinstance(m, SNNKAdapter)]
    model(**inputs, labels=labels).loss.backward()
    for a in adapters:
        assert a.gate.grad is not None and a.gate.grad.abs().sum() > 0
        # v = 0 at start, so Ψ gets an exact zero gradient on the first step (like LoRA's B).
        assert a.down.psi.grad is not None and torch.count_nonzero(a.down.psi.grad) == 0
    assert model.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    opt.step()
    opt.zero_grad()
    model(**inputs, labels=labels).loss.backward()
    for a in adapters:
        assert a.down.psi.grad.abs().sum() > 0 and a.gate.grad.abs().sum() > 0


# -- state, seeds and the global RNG ----------------------------------------------------------
def test_same_seed_identical_adapters_and_no_global_rng():
    a, b = tiny_bert(), tiny_bert()
    state = torch.get_rng_state()
    add_adapters(a, num_features=4, seed=11)
    add_adapters(b, num_features=4, seed=11)
    with torch.no_grad():
        a(**token_batch())
    sa, sb = adapter_state_dict(a), adapter_state_dict(b)
    report = uptrain(tiny_bert(), num_layers=1, num_features=4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(report.model.bert.encoder.layer[1].intermediate.dense, SNNKLinear)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    g = [k for k in sa if k.endswith("projection.weight")]
    assert len(g) == 4 and not torch.equal(sa[g[0]], sa[g[1]])  # seed + i: distinct draws
    c = tiny_bert()
    add_adapters(c, num_features=4, seed=12)
    assert not torch.equal(adapter_state_dict(c)[g[0]], sa[g[0]])


@pytest.mark.parametrize("arch", ["bert", "vit"])
def test_save_load_round_trip_is_bit_exact(tmp_path, arch):
    build, batch = CASES[arch]
    model, inputs = build(), batch()
    add_adapters(model, num_features=4, seed=None)  # a seed from the OS, recorded
    perturb_trainable(model)
    folder = save_adapters(model, tmp_path / "adapters")
    assert sorted(p.name for p in folder.iterdir()) == [
        "snnk_adapters.json",
        "snnk_adapters.safetensors",
    ]
    config = json.loads((folder / "snnk_adapters.json").read_text())
    assert config["num_features"] == 4 and isinstance(config["seed"], int)
    stored = load_file(str(folder / "snnk_adapters.safetensors"))
    assert all(".adapter." in k or k.startswith("classifier.") for k in stored)
    assert sum(k.endswith("projection.weight") for k in stored) == 4  # random buffers kept

    fresh = build()  # same base weights, a newly drawn head
    with torch.no_grad():
        fresh.classifier.weight.mul_(-1.0)
    assert load_adapters(fresh, folder) is fresh
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, model(**inputs).logits)
    assert trainable_parameters(fresh) == trainable_parameters(model)
    # Loading again into the adapted model overwrites in place.
    load_adapters(fresh, folder)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, model(**inputs).logits)


def test_state_dict_and_deepcopy_reproduce_logits():
    model, inputs = tiny_bert(), token_batch()
    add_adapters(model, num_features=4, seed=0)
    perturb_trainable(model)
    twin = copy.deepcopy(model)
    other = tiny_bert(seed=5)
    add_adapters(other, num_features=4, seed=99)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = model(**inputs).logits
        assert torch.equal(twin(**inputs).logits, ref)
        assert torch.equal(other(**inputs).logits, ref)


def test_load_into_a_different_model_fails(tmp_path):
    model = tiny_bert()
    add_adapters(model, num_features=4, seed=0)
    save_adapters(model, tmp_path)
    with pytest.raises(ValueError, match="saved from a 'bert' model"):
        load_adapters(tiny_vit(), tmp_path)
    other = tiny_bert()
    add_adapters(other, num_features=8, seed=0)
    with pytest.raises(ValueError, match="num_features"):
        load_adapters(other, tmp_path)
    with pytest.raises(ValueError, match="not a folder written by save_adapters"):
        load_adapters(tiny_bert(), tmp_path / "missing")


# -- bad input --------------------------------------------------------------------------------
def test_unsupported_architecture_names_the_supported_ones():
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50)
    with pytest.raises(ValueError, match=r"'bert'.*'distilbert'.*'vit'.*got GPT2Model"):
        add_adapters(transformers.GPT2Model(config))
    with pytest.raises(ValueError, match="got Linear"):
        uptrain(torch.nn.Linear(3, 3), num_layers=1)


@pytest.mark.parametrize("bad", [0, -3])
def test_num_features_must_be_positive(bad):
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        add_adapters(tiny_bert(), num_features=bad)
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        uptrain(tiny_bert(), num_layers=1, num_features=bad)


def test_adding_twice_raises_and_other_bad_arguments():
    model = tiny_bert()
    add_adapters(model, num_features=4, seed=0)
    with pytest.raises(RuntimeError, match="already has 4 SNNK adapters"):
        add_adapters(model, num_features=4, seed=0)
    assert sum(isinstance(m, SNNKAdapter) for m in model.modules()) == 4
    with pytest.raises(ValueError, match="placement must be one of"):
        add_adapters(tiny_bert(), placement="everywhere")
    with pytest.raises(ValueError, match="has no pooler"):
        add_adapters(tiny_vit(), train_pooler=True)
    with pytest.raises(TypeError, match="seed must be an int"):
        add_adapters(tiny_bert(), seed=1.5)
    with pytest.raises(ValueError, match="num_layers must be at most 2"):
        uptrain(tiny_bert(), num_layers=3)
    twice = tiny_bert()
    uptrain(twice, num_layers=1, seed=0)
    with pytest.raises(RuntimeError, match="uptrained twice"):
        uptrain(twice, num_layers=1, seed=0)
    with pytest.raises(ValueError, match="no SNNK adapters"):
        adapter_state_dict(tiny_bert())
    with pytest.raises(ValueError, match="change the model first, then wrap it"):
        add_adapters(torch.nn.DataParallel(tiny_bert()), seed=0)


# -- uptraining on a small model trains end to end ---------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "vit", "distilbert"])
def test_uptrain_small_models_run_and_train(arch):
    build, batch = CASES[arch]
    model, inputs = build(), batch()
    report = uptrain(model, num_layers=1, num_features=8, seed=0)
    assert report.parameters_saved == 32 * 64 + 64 - 64 * 8
    layer = report.model.get_submodule(report.replaced[0])
    assert isinstance(layer, SNNKLinear) and layer.psi.requires_grad
    model.train()
    model(**inputs).logits.square().sum().backward()
    assert layer.psi.grad.abs().sum() > 0


# -- Hugging Face Trainer -----------------------------------------------------------------------
def test_trainer_updates_only_adapters_and_head(tmp_path):
    pytest.importorskip("accelerate")
    model = tiny_bert(dropout=0.0)
    add_adapters(model, num_features=4, seed=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    gates = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("gate")}
    inputs = token_batch(8, seed=4)
    rows = [
        {
            "input_ids": inputs["input_ids"][i],
            "attention_mask": inputs["attention_mask"][i],
            "labels": i % 2,
        }
        for i in range(8)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    transformers.Trainer(model=model, args=args, train_dataset=rows).train()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert all(not torch.equal(model.get_parameter(n), g) for n, g in gates.items())


def test_snnk_imports_without_transformers():
    """transformers is an optional extra: ``snnk.nn`` (adapters included) must not need it."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"  # any import of it now fails
        "import snnk.nn\n"
        "snnk.nn.SNNKAdapter(8, 4, seed=0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
