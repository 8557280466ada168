"""Saving and loading converted models: the attention cores (and optionally the whole model)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from snnk.nn.adapters.folder import check_folder_path, copy_into, read_folder, write_folder
from snnk.nn.convert.hf import CORE_NAME, find_sites
from snnk.nn.convert.linearize import (
    CONVERT_METHODS,
    linearize,
    linearize_config,
    unlinearize,
)

CONFIG_NAME = "snnk_linearized.json"
WEIGHTS_NAME = "snnk_linearized.safetensors"
_FORMAT, _VERSION = "snnk-linearized", 1


def _core_tensors(model: nn.Module, include_model: bool) -> dict[str, torch.Tensor]:
    """Float tensors of every core (or of the whole model), under their names in ``model``."""
    config = linearize_config(model)
    if include_model:
        state = model.state_dict()
    else:
        state = {}
        for name in config.layers:
            core = model.get_submodule(f"{name}.{CORE_NAME}")
            state.update(core.state_dict(prefix=f"{name}.{CORE_NAME}."))
    return {k: v for k, v in state.items() if v.is_floating_point()}


def save_linearized(
    model: nn.Module, path: str | os.PathLike[str], *, include_model: bool = False
) -> Path:
    """Write a linearized model's conversion into folder ``path`` (JSON + safetensors).

    By default only the attention cores are saved (learned feature maps, random draws): load
    them into the same pretrained model with :func:`load_linearized`. ``include_model=True``
    saves every float tensor of the model too (after fine-tuning the converted model).
    Both files are written atomically; nothing is pickled.
    """
    config = linearize_config(model)
    folder = check_folder_path(path)
    record = {
        "linearize": config.to_dict(),
        "model_class": type(model).__name__,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "include_model": bool(include_model),
    }
    tensors = _core_tensors(model, include_model)
    return write_folder(folder, CONFIG_NAME, WEIGHTS_NAME, record, tensors, _FORMAT, _VERSION)


def _check_record(saved: dict, config_file: Path) -> dict:
    lin = saved.get("linearize")
    if not isinstance(lin, dict):
        raise ValueError(f"{config_file}: 'linearize' must be an object; save again")

    def count(v, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    checks = {
        "method": lambda v: v in CONVERT_METHODS,
        "num_features": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "window": lambda v: (
            v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
        ),
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "layers": lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v),
        "attention_kwargs": lambda v: isinstance(v, dict),
    }
    for key, check in checks.items():
        if key not in lin or not check(lin[key]):
            raise ValueError(f"{config_file}: linearize[{key!r}] is missing or invalid")
    if not isinstance(saved.get("include_model"), bool):
        raise ValueError(f"{config_file}: 'include_model' must be true or false")
    return lin


def load_linearized(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Convert ``model`` as the folder says and load the saved tensors; returns ``model``.

    ``model`` is the pretrained model the conversion was made from (loaded again), not yet
    linearized. The folder is checked (JSON keys and values, checksum, tensor names, dtypes,
    finite values, shapes against the model) and a failure leaves the model as it was.
    The outputs then equal those of the saved converted model bit for bit.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    folder = check_folder_path(path)
    saved, tensors = read_folder(folder, CONFIG_NAME, WEIGHTS_NAME, _FORMAT, _VERSION)
    lin = _check_record(saved, folder / CONFIG_NAME)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if saved.get("model_type") != model_type:
        raise ValueError(
            f"{folder}: saved from a model with model_type={saved.get('model_type')!r}, this "
            f"model has {model_type!r}"
        )
    names = [s.name for s in find_sites(model)]
    missing = [n for n in lin["layers"] if n not in names]
    if missing:
        raise ValueError(f"{folder}: this model has no attention modules {missing[:3]}")
    layers = [names.index(n) for n in lin["layers"]]
    linearize(
        model,
        lin["method"],
        num_features=lin["num_features"],
        window=lin["window"],
        layers=layers,
        seed=lin["seed"],
        **lin["attention_kwargs"],
    )
    try:
        own = _core_tensors(model, saved["include_model"])
        copy_into(own, tensors, folder)
    except BaseException:
        unlinearize(model)
        raise
    return model
