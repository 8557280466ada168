"""Adapter files and failures half way: atomic saves, checked loads, and add_adapters /
uptrain / load_adapters that leave the model exactly as it was when they raise (issue #14's
second adapter format, issue #15 item 6)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from snnk.nn import add_adapters, load_adapters, save_adapters, uptrain
from snnk.nn.adapters import CONFIG_NAME, WEIGHTS_NAME
from tests.nn.test_adapters import perturb_trainable, tiny_bert, token_batch
from tests.nn.test_snnk_linear_lifecycle import _assert_same, _state

pytest.importorskip("transformers")


@pytest.fixture
def saved(tmp_path):
    """A folder saved from an adapted, perturbed tiny BERT, and that model."""
    model = tiny_bert()
    add_adapters(model, num_features=4, seed=0)
    perturb_trainable(model)
    return save_adapters(model, tmp_path / "adapters"), model


def _edit_config(folder, **changes):
    config = json.loads((folder / CONFIG_NAME).read_text())
    for key, value in changes.items():
        if value is KeyError:
            del config[key]
        else:
            config[key] = value
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def _assert_load_fails_cleanly(folder, match, model=None):
    model = tiny_bert() if model is None else model
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        load_adapters(model, folder)
    _assert_same(before, _state(model))


# -- saving --------------------------------------------------------------------------------------
def test_save_is_atomic_and_creates_the_folder(tmp_path, saved, monkeypatch):
    folder, model = saved
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    perturb_trainable(model, seed=8)

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapters(model, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first  # no temp file left
    monkeypatch.undo()
    nested = save_adapters(model, tmp_path / "a" / "b")
    assert sorted(p.name for p in nested.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        save_adapters(model, tmp_path / "file")
    with pytest.raises(TypeError, match="path must be a folder path"):
        save_adapters(model, 3)


# -- loading hostile folders: checked before the model is touched ------------------------------
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_features": "4"}, "'num_features' must be a positive integer"),
        ({"num_features": KeyError}, r"lacks the keys \['num_features'\]"),
        ({"activation": "tanh"}, "'activation' must be one of"),
        ({"placement": "everywhere"}, "'placement' must be one of"),
        ({"bottleneck": -1}, "'bottleneck' must be null or a positive integer"),
        ({"input_norm": 0}, "'input_norm' must be null or a positive number"),
        ({"train_head": "yes"}, "'train_head' must be true or false"),
        ({"seed": 1.5}, "'seed' must be an integer"),
        ({"tensors": "all"}, "'tensors' must be a list"),
        ({"format_version": 2}, "format_version=2.*upgrade snnk"),
        ({"format": "peft"}, "not an SNNK adapter config"),
        ({"num_adapters": 3}, "num_adapters=3 does not fit"),
        ({"hidden_size": 64}, "saved for hidden_size=64"),
        ({"num_blocks": 3, "num_adapters": 6}, "saved for num_blocks=3"),
        ({"tensors": ["a"]}, "from different saves"),
    ],
)
def test_tampered_config_fails_before_anything_changes(saved, changes, match):
    folder, _ = saved
    _edit_config(folder, **changes)
    _assert_load_fails_cleanly(folder, match)


def test_damaged_files_fail_before_anything_changes(saved):
    folder, _ = saved
    (folder / CONFIG_NAME).write_text("{not json")
    _assert_load_fails_cleanly(folder, "not valid JSON")


def test_damaged_weights_fail_before_anything_changes(saved):
    folder, _ = saved
    tensors = {k: v.clone() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
    (folder / WEIGHTS_NAME).write_bytes(b"\x00" * 64)
    _assert_load_fails_cleanly(folder, "not a readable safetensors file")
    name = sorted(tensors)[0]
    bad = dict(tensors)
    bad[name] = torch.full_like(bad[name], float("nan"))
    save_file(bad, str(folder / WEIGHTS_NAME), metadata={"format": "snnk-adapters"})
    _assert_load_fails_cleanly(folder, f"'{name}' holds NaN")


@pytest.mark.parametrize("adapted", [False, True])
def test_second_tensor_of_wrong_shape_leaves_the_model_unchanged(saved, adapted):
    folder, _ = saved
    tensors = {k: v.clone() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
    second = sorted(tensors)[1]
    tensors[second] = torch.zeros((*tensors[second].shape, 2))
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "snnk-adapters"})
    model = tiny_bert()
    if adapted:  # overwriting existing adapters: not one value may change either
        add_adapters(model, num_features=4, seed=0)
    _assert_load_fails_cleanly(folder, f"{second}: saved shape", model)


@pytest.mark.parametrize("adapted", [False, True])
def test_failure_while_copying_rolls_everything_back(saved, adapted, monkeypatch):
    folder, reference = saved
    model = tiny_bert()
    if adapted:
        add_adapters(model, num_features=4, seed=0)
    before = _state(model)
    real_copy = torch.Tensor.copy_
    calls = [0]

    def copy_then_fail(self, src, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # after the adapters are in, the base frozen, one tensor written
            raise RuntimeError("device lost")
        return real_copy(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", copy_then_fail)
    with pytest.raises(RuntimeError, match="device lost"):
        load_adapters(model, folder)
    monkeypatch.undo()
    _assert_same(before, _state(model))
    assert not hasattr(model, "_snnk_adapter_config") or adapted
    load_adapters(model, folder)  # and the model still loads afterwards
    with torch.no_grad():
        inputs = token_batch()
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)


# -- add_adapters and uptrain: all or nothing ---------------------------------------------------
def test_add_adapters_with_a_bad_site_in_the_last_block_changes_nothing():
    model = tiny_bert()
    model.bert.encoder.layer[1].output.dropout = torch.nn.Identity()
    before = _state(model)
    with pytest.raises(TypeError, match="cannot place an adapter after a Identity"):
        add_adapters(model, num_features=4, seed=0)
    _assert_same(before, _state(model))


def test_uptrain_with_an_unconvertible_last_layer_changes_nothing():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.weight[0, 0] = float("nan")
    before = _state(model)
    with pytest.raises(ValueError, match="NaN"):
        uptrain(model, num_layers=2, num_features=4, seed=0)
    _assert_same(before, _state(model))


def test_load_into_a_wrapped_model_says_unwrap_first(saved):
    folder, _ = saved
    wrapped = torch.nn.DataParallel(tiny_bert())
    before = _state(wrapped)
    with pytest.raises(ValueError, match="change the model first, then wrap it"):
        load_adapters(wrapped, folder)
    _assert_same(before, _state(wrapped))
    with pytest.raises(TypeError, match="path must be a folder path"):
        load_adapters(tiny_bert(), None)
